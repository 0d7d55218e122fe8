"""Text aggregators of the seed's tools: grep, tail and topk (registered when
nine.group.aggregate is imported).

Each one maps at the leaf, on the member's bytes, so only what the user will see
travels up the tree; each merge is associative, so every mux folds what its children
sent:

``grep``   the lines of the member that match, formatted as GNU grep prints them;
           merge: equivalence classes of the members' results, so identical results
           fold (``node[1-64] (64)``, as ``clush -b`` shows them).  Parameters:
           ``pattern`` (patterns, one per line), ``syntax`` (basic: POSIX BRE as grep;
           extended: ERE as grep -E; fixed: grep -F; perl: Python's re, close to -P),
           ``icase`` ``invert`` ``word`` ``line`` (-i -v -w -x), ``number`` (-n),
           ``count`` (-c), ``files`` (-l), ``before``/``after`` (-B/-A lines of
           context), ``file`` (the file's name in messages and with -l) and
           ``with_name`` (prefix lines with it, as grep does with several files).
``tail``   the last ``n`` lines of each member (``start=K``: from line K on, as
           ``tail -n +K``); merge: equivalence classes, shown as ``equiv`` shows them.
``topk``   the ``k`` lines whose field ``column`` (0-based, blank-separated) holds the
           largest numbers (``smallest=true``: the smallest), each labelled with its
           member; merge keeps k lines at every level, so a level sends at most k rows
           up whatever its number of members.

Text parameters (``pattern``, ``file``) travel in ctl lines split at blanks and typed
by value (``123`` is a number): a value that is more than a plain word is written
``~`` + base64url of its UTF-8 bytes (``text_param``); plain words are taken as they
are.

A group read gives the map at most the first 1 MiB of each member (``count all``): a
member that long is named in the result's errors (``only its first 1 MiB was
searched``) besides its (partial) result, never silently cut.
"""

import base64
import binascii
import heapq
import re

from .aggregate import (Aggregator, AggregatorError, Equiv, _b2s, _fold_wire, _s2b,
                        _unfold_wire, fold, natural_key, register)

__all__ = ["Grep", "Tail", "TopK", "text_param", "posix_regex", "clush_order",
           "clush_header", "TRUNCATED"]

TRUNCATED = "1 MiB or longer: only its first 1 MiB was searched"


def text_param(text):
    """A text parameter's ctl form: ``~`` + base64url (str or bytes in)."""
    if isinstance(text, str):
        text = text.encode("utf-8", "surrogateescape")
    return "~" + base64.urlsafe_b64encode(text).decode("ascii")


def _text(value):
    """A text parameter back to bytes (the ``~base64url`` form, or a plain word)."""
    if value is None:
        return None
    if isinstance(value, bytes):
        return value
    if isinstance(value, bool):
        value = "true" if value else "false"
    s = str(value)
    if s.startswith("~"):
        try:
            return base64.urlsafe_b64decode(s[1:].encode("ascii"))
        except (binascii.Error, ValueError, UnicodeEncodeError) as e:
            raise AggregatorError("bad ~base64 text %r: %s" % (s, e))
    return s.encode("utf-8", "surrogateescape")


def _flag(value):
    if isinstance(value, str):
        if value.lower() in ("true", "yes", "on", "1"):
            return True
        if value.lower() in ("false", "no", "off", "0", ""):
            return False
        raise AggregatorError("not a boolean: %r" % value)
    return bool(value)


def _count(value, what):
    """A whole number >= 0 (an int, or a float or text that holds one)."""
    try:
        n = int(value)
        whole = n == float(value)
    except (TypeError, ValueError):
        whole = False
    if not whole or n < 0:
        raise AggregatorError("%s must be a whole number >= 0, not %r" % (what, value))
    return n


def _truncated(data):
    from .handle import MAX_WHOLE      # (handle imports this package's aggregate)
    return len(data) >= MAX_WHOLE


# ---------------------------------------------------------------------------
# POSIX regular expressions in Python's syntax

_CLASSES = {
    "alpha": "a-zA-Z", "digit": "0-9", "alnum": "0-9a-zA-Z", "upper": "A-Z",
    "lower": "a-z", "space": " \\t\\n\\r\\f\\v", "blank": " \\t", "xdigit": "0-9A-Fa-f",
    "punct": "".join("\\" + c for c in "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"),
    "print": "\\x20-\\x7e", "graph": "\\x21-\\x7e", "cntrl": "\\x00-\\x1f\\x7f",
}


def _set_char(c):
    """One character inside a Python character set."""
    return "\\" + c if c in "\\]-[^&~|" else ("\\x%02x" % ord(c) if c < " " else c)


def _bracket(p, i):
    """The bracket expression of POSIX pattern p at p[i] == '[': (index after it,
    the Python set).  A negated set never matches the newline (grep's lines have
    none), so no match crosses a line."""
    j = i + 1
    neg = j < len(p) and p[j] == "^"
    if neg:
        j += 1
    items = []
    first = True
    while True:
        if j >= len(p):
            raise AggregatorError("unmatched [ in %r" % p)
        c = p[j]
        if c == "]" and not first:
            j += 1
            break
        first = False
        if c == "[" and j + 1 < len(p) and p[j + 1] in ":=.":
            kind = p[j + 1]
            end = p.find(kind + "]", j + 2)
            if end < 0:
                raise AggregatorError("unterminated [%s in %r" % (kind, p))
            name = p[j + 2:end]
            j = end + 2
            if kind == ":":
                if name not in _CLASSES:
                    raise AggregatorError("unknown character class [:%s:]" % name)
                items.append(_CLASSES[name])
            else:
                items.append("".join(_set_char(x) for x in name))
            continue
        if j + 2 < len(p) and p[j + 1] == "-" and p[j + 2] != "]":
            items.append(_set_char(c) + "-" + _set_char(p[j + 2]))
            j += 3
            continue
        items.append(_set_char(c))
        j += 1
    return j, "[" + ("^" if neg else "") + "".join(items) + ("\\n" if neg else "") + "]"


def posix_regex(p, extended=False):
    """A POSIX basic (grep) or extended (grep -E) regular expression, with GNU's
    extensions (\\< \\> \\b \\B \\w \\W \\s \\S, back references), as Python re
    syntax.  p is a str (bytes decoded as latin-1, so each byte is one character).  As
    in GNU grep, a repetition with nothing to repeat is an ordinary character, and
    repetitions may follow each other (a** is a*)."""
    out = []
    atom = None        # where in out the last atom that a repetition applies to starts
    quantified = False     # the last token was a repetition
    groups = []        # where in out each open group starts
    i, n = 0, len(p)

    def add_atom(text):
        nonlocal atom, quantified
        atom, quantified = len(out), False
        out.append(text)

    def add_anchor(text):
        nonlocal atom, quantified
        atom, quantified = None, False
        out.append(text)

    def add_repeat(text, literal):
        nonlocal quantified
        if atom is None:
            add_atom(literal)
            return
        if quantified:       # a repetition of a repetition: repeat the whole
            out[atom:] = ["(?:" + "".join(out[atom:]) + ")"]
        out.append(text)
        quantified = True

    while i < n:
        c = p[i]
        if c == "[":
            i, s = _bracket(p, i)
            add_atom(s)
            continue
        if c == "\\":
            if i + 1 >= n:
                raise AggregatorError("trailing backslash in %r" % p)
            d = p[i + 1]
            i += 2
            if not extended and d in "(){}|+?":
                c = d              # BRE's \( \) \{ \} \| \+ \? are ERE's ( ) { } | + ?
            elif d in "123456789" or d in "wWsS":
                add_atom("\\" + d)
                continue
            elif d in "bB":
                add_anchor("\\" + d)
                continue
            elif d in "<>`'":
                add_anchor({"<": r"\b(?=\w)", ">": r"\b(?<=\w)", "`": r"\A", "'": r"\Z"}[d])
                continue
            else:
                add_atom(re.escape(d))
                continue
        else:
            i += 1
            if c in "(){}|+?" and not extended:
                add_atom("\\" + c)
                continue
        if c == "(":
            groups.append(len(out))
            out.append("(")
            atom, quantified = None, False
        elif c == ")":
            if not groups:
                add_atom("\\)")      # an unmatched ) is an ordinary character (GNU)
                continue
            start = groups.pop()
            out.append(")")
            atom, quantified = start, False
        elif c == "|":
            add_anchor("|")
        elif c in "*+?":
            add_repeat(c, "\\" + c)
        elif c == "{":
            m = re.match(r"(\d*)(,?)(\d*)" + (r"\}" if extended else r"\\\}"), p[i:])
            if m is None or not (m.group(1) or m.group(3)):
                add_atom("\\{")
                continue
            i += m.end()
            text = "{%s%s%s}" % m.group(1, 2, 3)
            add_repeat(text, re.escape(text))
        elif c == "}":
            add_atom("\\}")
        elif c == "^":
            if extended or atom is None and not quantified and (
                    not out or out[-1] in ("(", "|")):
                add_anchor("^")
            else:
                add_atom("\\^")
        elif c == "$":
            end = i >= n or p.startswith(("\\)", "\\|"), i)
            if extended or end:
                add_anchor("$")
            else:
                add_atom("\\$")
        elif c == ".":
            add_atom(".")
        else:
            add_atom(re.escape(c))
    if groups and not extended:
        raise AggregatorError("unmatched \\( in %r" % p)
    return "".join(out)


# ---------------------------------------------------------------------------
# how clush -b shows classes (shared with the tools)

def clush_header(members):
    """clush -b's header of a class: the folded set, with its size when above one."""
    ms = members if isinstance(members, (set, frozenset)) else set(members)
    text = fold(ms) + (" (%d)" % len(ms) if len(ms) > 1 else "")
    return "---------------\n%s\n---------------\n" % text


def clush_order(classes):
    """[(key, members)] in clush -b's order: by exit status (key[0]), then largest set
    first, then by the name of the set's first member (as text, as clush compares)."""
    return sorted(classes, key=lambda km: (km[0][0], -len(km[1]),
                                           min(km[1], key=natural_key)))


# ---------------------------------------------------------------------------
# grep

_SYNTAX = ("basic", "extended", "fixed", "perl")
_WORD = rb"[0-9A-Za-z_]"


@register
class Grep(Aggregator):
    """value: {(status, output bytes, notes bytes): set of members}; status 0 when a
    line was selected, else 1 (grep's); notes: what grep writes on stderr (binary file
    matches)."""
    name = "grep"

    def __init__(self, pattern="", syntax="basic", icase=False, invert=False, word=False,
                 line=False, number=False, count=False, files=False, before=0, after=0,
                 file=None, with_name=False):
        if syntax not in _SYNTAX:
            raise AggregatorError("grep: syntax is one of %s" % ", ".join(_SYNTAX))
        self.invert, self.number = _flag(invert), _flag(number)
        self.count, self.files = _flag(count), _flag(files)
        self.before, self.after = _count(before, "before"), _count(after, "after")
        self.file = _text(file)
        self.with_name = _flag(with_name)
        word, line, icase = _flag(word), _flag(line), _flag(icase)
        pats = _text(pattern).split(b"\n")
        if syntax == "fixed":
            alts = [re.escape(q) for q in pats]
        elif syntax == "perl":
            alts = pats
        else:
            alts = [posix_regex(q.decode("latin-1"), syntax == "extended").encode("latin-1")
                    for q in pats]
        body = b"|".join(b"(?:%s)" % a for a in alts)
        self.everything = b"" in pats and not (line or word)
        if line:
            body = b"^(?:%s)$" % body
        elif word:
            body = b"(?<!%s)(?:%s)(?!%s)" % (_WORD, body, _WORD)
        try:
            self.rx = re.compile(body, re.M | (re.I if icase else 0))
        except (re.error, OverflowError, RecursionError) as e:
            raise AggregatorError("grep: bad pattern: %s" % e)
        self.params = {k: v for k, v in (
            ("pattern", text_param(_text(pattern))), ("syntax", syntax), ("icase", icase),
            ("invert", self.invert), ("word", word), ("line", line),
            ("number", self.number), ("count", self.count), ("files", self.files),
            ("before", self.before), ("after", self.after),
            ("file", None if self.file is None else text_param(self.file)),
            ("with_name", self.with_name)) if v}

    # -- the map: GNU grep on one file's bytes -------------------------------------
    def matching(self, data):
        """[(start, end)] of the lines that match, in order (end: the offset of the
        line's newline, or of the end of data)."""
        rx, n = self.rx, len(data)
        out = []
        pos = 0
        while pos <= n:
            m = rx.search(data, pos)
            if m is None:
                break
            s, e = m.span()
            if s == n and (n == 0 or data[n - 1] == 10):
                break                  # the empty "line" after the last newline
            ls = data.rfind(b"\n", 0, s) + 1
            le = data.find(b"\n", s)
            le = n if le < 0 else le
            if e <= le:
                out.append((ls, le))
                pos = le + 1
                continue
            # the match crosses a newline (\s, \W can): search each line it touches
            while True:
                if rx.search(data, ls, le) is not None:
                    out.append((ls, le))
                if le >= e or le + 1 >= n:
                    break
                ls = le + 1
                le = data.find(b"\n", ls)
                le = n if le < 0 else le
            pos = le + 1
        return out

    def grep(self, data):
        """(status, output, notes) of grep on data."""
        if self.everything and self.invert:
            return 1, b"", b""         # GNU grep skips the file: nothing to select
        binary = 0 in data
        if binary:
            data = data.replace(b"\0", b"\n")   # NULs end lines in a binary file (GNU)
        spans = self.matching(data)
        name = self.file if self.file is not None else b"(standard input)"
        if self.invert or self.before or self.after:
            lines = data.split(b"\n")
            if not data or data.endswith(b"\n"):
                lines.pop()
            hit = set()
            k, at = 0, 0
            for ls, _ in spans:
                k += data.count(b"\n", at, ls)
                at = ls
                hit.add(k)
            sel = [i for i in range(len(lines)) if i not in hit] if self.invert \
                else sorted(hit)
        else:
            lines = hit = None
            sel = spans
        status = 0 if sel else 1
        if self.files:
            return status, (name + b"\n" if sel else b""), b""
        if self.count:
            prefix = name + b":" if self.with_name else b""
            return status, b"%s%d\n" % (prefix, len(sel)), b""
        if sel and binary:
            return status, b"", b"grep: " + name + b": binary file matches\n"
        if lines is None:
            return status, self._plain(data, spans), b""
        return status, self._context(lines, sel, set(sel)), b""

    def _plain(self, data, spans):
        out = []
        name = self.file + b":" if self.with_name and self.file is not None else b""
        if not self.number:
            for ls, le in spans:
                out.append(name + data[ls:le] + b"\n")
            return b"".join(out)
        k, at = 1, 0
        for ls, le in spans:
            k += data.count(b"\n", at, ls)
            at = ls
            out.append(b"%s%d:%s\n" % (name, k, data[ls:le]))
        return b"".join(out)

    def _context(self, lines, sel, selset):
        """Selected lines (indices) with before/after context; with context, -- between
        groups that do not touch."""
        context = self.before or self.after
        show = []              # line indices, None for a -- separator
        last = -1              # the last index shown
        for i in sel:
            hi = min(len(lines) - 1, i + self.after)
            if hi <= last:
                continue
            lo = max(i - self.before, last + 1)
            if context and show and lo > last + 1:
                show.append(None)
            show.extend(range(lo, hi + 1))
            last = hi
        name = self.file if self.with_name and self.file is not None else None
        out = []
        for i in show:
            if i is None:
                out.append(b"--\n")
                continue
            sep = b":" if i in selset else b"-"
            pre = name + sep if name is not None else b""
            if self.number:
                pre += b"%d%s" % (i + 1, sep)
            out.append(pre + lines[i] + b"\n")
        return b"".join(out)

    # -- the aggregator -------------------------------------------------------
    def leaf(self, member, data):
        p = super().leaf(member, data)
        if _truncated(data):
            p.errors[TRUNCATED] = {member}
        return p

    def map(self, member, data):
        return {self.grep(data): {member}}

    def combine(self, values):
        out = {}
        for v in values:
            for key, ms in v.items():
                out.setdefault(key, set()).update(ms)
        return out

    def show(self, value):
        """clush -b: each non-empty output once under its members; notes after."""
        out = []
        for (status, text, notes), ms in clush_order(value.items()):
            if text:
                out.append(clush_header(ms).encode("utf-8", "surrogateescape") + text)
        for (status, text, notes), ms in clush_order(value.items()):
            for note in notes.splitlines():
                out.append(b"%s: %s\n" % (fold(ms).encode("utf-8", "surrogateescape"), note))
        return b"".join(out)

    def to_wire(self, value):
        return [[k[0], _b2s(k[1]), _b2s(k[2]), _fold_wire(ms)]
                for k, ms in sorted(value.items())]

    def from_wire(self, w):
        out = {}
        for status, text, notes, ms in w:
            if status not in (0, 1):
                raise AggregatorError("bad grep status %r" % (status,))
            out.setdefault((status, _s2b(text), _s2b(notes)), set()).update(_unfold_wire(ms))
        return out


# ---------------------------------------------------------------------------
# tail

@register
class Tail(Equiv):
    """The last n lines of each member (start=K: from line K on); value as equiv's."""
    name = "tail"

    def __init__(self, n=10, start=None):
        super().__init__()
        self.n = _count(n, "n")
        self.start = None if start is None else _count(start, "start")
        if self.start == 0:
            raise AggregatorError("tail: start counts lines from 1")
        self.params = {"n": self.n} if start is None else {"start": self.start}

    def leaf(self, member, data):
        p = super().leaf(member, data)
        if _truncated(data):
            p.errors[TRUNCATED] = {member}
        return p

    def map(self, member, data):
        lines = data.splitlines(keepends=True)
        keep = lines[self.start - 1:] if self.start is not None else \
            (lines[-self.n:] if self.n else [])
        return {b"".join(keep): {member}}


# ---------------------------------------------------------------------------
# topk

def _number(tok):
    try:
        v = float(tok)
    except ValueError:
        return None
    return v if v == v and v not in (float("inf"), float("-inf")) else None


@register
class TopK(Aggregator):
    """value: [[number, member, line], ...], at most k, best first."""
    name = "topk"

    def __init__(self, k=10, column=0, smallest=False):
        self.k = _count(k, "k")
        self.column = _count(column, "column")
        self.smallest = _flag(smallest)
        self.params = {"k": self.k, "column": self.column}
        if self.smallest:
            self.params["smallest"] = True

    def _key(self, row):
        num, member, line = row
        return (num if self.smallest else -num, natural_key(member), line)

    def _best(self, rows):
        return heapq.nsmallest(self.k, rows, key=self._key)

    def map(self, member, data):
        rows = []
        for line in _b2s(data).splitlines():
            toks = line.split()
            if self.column < len(toks):
                v = _number(toks[self.column])
                if v is not None:
                    rows.append([v, member, line])
        return self._best(rows)

    def combine(self, values):
        return self._best([r for v in values for r in v])

    def show(self, value):
        return "".join("%s: %s\n" % (m, line) for _, m, line in value).encode(
            "utf-8", "surrogateescape")

    def from_wire(self, w):
        if not isinstance(w, list) or not all(
                isinstance(r, list) and len(r) == 3 and isinstance(r[0], (int, float))
                and isinstance(r[1], str) and isinstance(r[2], str) for r in w):
            raise AggregatorError("bad topk value")
        return w
