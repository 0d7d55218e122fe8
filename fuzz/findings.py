"""What a fuzz campaign found: findings grouped by signature (the kind and where it
happened), and their reproductions saved to a corpus directory.

A signature is counted every time it recurs but saved only for its first few
occurrences, so one bug hit a thousand times writes a handful of files.  Each saved
finding is NAME.bin (the frame, or the byte stream sent on one connection) and NAME.txt
(what happened: kind, dialect, detail, traceback); `python3 -m fuzz --replay NAME.bin`
plays it again.
"""

import hashlib
import os
import traceback

SAVED_PER_SIGNATURE = 3


def exception_signature(ex):
    """The exception's type and the innermost place it came from (file:line)."""
    tb = traceback.extract_tb(ex.__traceback__)
    where = "%s:%d" % (os.path.basename(tb[-1].filename), tb[-1].lineno) if tb else "?"
    return "%s at %s" % (type(ex).__name__, where)


class Findings:
    """The findings of one campaign, saved under corpus (None: not saved)."""

    def __init__(self, corpus=None):
        self.corpus = corpus
        self.counts = {}        # signature -> occurrences
        self.first = {}         # signature -> (kind, detail, saved file or None)

    def __len__(self):
        return sum(self.counts.values())

    def add(self, kind, signature, detail, data=None, dialect=None):
        """Record one finding: kind ("crash", "hang", ...), signature (what makes two
        findings the same bug), a detail text and the bytes that reproduce it."""
        sig = "%s: %s" % (kind, signature)
        n = self.counts.get(sig, 0)
        self.counts[sig] = n + 1
        path = None
        if n < SAVED_PER_SIGNATURE and self.corpus is not None and data is not None:
            path = self._save(kind, bytes(data), "kind: %s\nsignature: %s\ndialect: %s\n\n%s\n"
                              % (kind, signature, dialect, detail))
        if n == 0:
            self.first[sig] = (kind, detail, path)
        return path

    def _save(self, kind, data, text):
        os.makedirs(self.corpus, exist_ok=True)
        name = "%s-%s" % (kind, hashlib.sha1(data).hexdigest()[:12])
        path = os.path.join(self.corpus, name + ".bin")
        with open(path, "wb") as f:
            f.write(data)
        with open(os.path.join(self.corpus, name + ".txt"), "w") as f:
            f.write(text)
        return path

    def of_kind(self, kind):
        return sum(n for sig, n in self.counts.items() if sig.startswith(kind + ":"))

    def report(self):
        """One paragraph per signature: count, detail (first lines), reproduction."""
        out = []
        for sig, n in sorted(self.counts.items(), key=lambda kv: -kv[1]):
            kind, detail, path = self.first[sig]
            lines = detail.strip().splitlines()
            text = "\n".join("    " + ln for ln in lines[-12:])
            out.append("  %dx %s\n%s%s" % (n, sig, text,
                                           "\n    saved: %s" % path if path else ""))
        return "\n".join(out)
