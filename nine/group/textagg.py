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
           context), ``file`` (the file's name in messages and with -l),
           ``with_name`` (prefix lines with it, as grep does with several files),
           ``recursive`` (-r: a directory member's files, walked at the leaf),
           ``include``/``exclude`` (-r: base-name globs, one per line) and ``limit``
           (the output bytes a member may send up, OUTPUT_MAX by default) and
           ``quiet`` (-q: the status only, the scan stops at the first selected line)
           and ``no_name`` (-h: -r does not name the files on its lines).
``tail``   the last ``n`` lines of each member (``start=K``: from line K on, as
           ``tail -n +K``), read at the leaf from the file's end backwards (any size;
           ``limit``: the bytes a member may send up, OUTPUT_MAX by default); merge:
           equivalence classes, shown as ``equiv`` shows them.
``topk``   the ``k`` lines whose field ``column`` (0-based, blank-separated) holds the
           largest numbers (``smallest=true``: the smallest), each labelled with its
           member; merge keeps k lines at every level, so a level sends at most k rows
           up whatever its number of members.

Text parameters (``pattern``, ``file``) travel in ctl lines split at blanks and typed
by value (``123`` is a number): a value that is more than a plain word is written
``~`` + base64url of its UTF-8 bytes (``text_param``); plain words are taken as they
are.

``grep`` reads its members itself (``reads_files``): the group service gives
``leaf_file`` the open member (nine.group.member.MemberFile), and the file is searched
whole in blocks of WINDOW bytes of whole lines (_Scan carries the line count, the -B
lines and the -A context owed across blocks), in memory bounded by a block, the longest
line (MAX_LINE) and the output kept (``limit``: beyond, the member is named with CUT).
With ``recursive``, a directory member is walked through its own node as the reader
(MemberFile.walk: symbolic links not followed, as grep -r) and each regular file
searched, named as grep -r names it.  Where the map gets bytes (``sync nowait``
streams, ``count N``, the client's own groups), ``tail`` and ``grep`` get at most the
first 1 MiB of each member (``count all``): a member that long is named in the result's
errors (``only its first 1 MiB was searched``) besides its (partial) result, never
silently cut.
"""

import base64
import binascii
import collections
import errno
import fnmatch
import heapq
import itertools
import os
import re

from .aggregate import (Aggregator, AggregatorError, Equiv, Partial, _b2s, _fold_wire,
                        _s2b, _unfold_wire, fold, natural_key, register)

__all__ = ["Grep", "Tail", "TopK", "text_param", "posix_regex", "clush_order",
           "clush_header", "TRUNCATED", "CUT", "LONG_LINE", "TAIL_BLOCK", "TAIL_CUT"]

TRUNCATED = "1 MiB or longer: only its first 1 MiB was searched"
#: a leaf-side grep reads its file this much at a time (a block of whole lines)
WINDOW = 1 << 20
#: a NUL in this many first bytes makes a file binary from its start (GNU grep's first
#: buffer); a later NUL makes it binary from the block that holds it
BINARY_PEEK = 32768
#: a line longer than this stops a file's scan (named in the errors)
MAX_LINE = 32 << 20
LONG_LINE = "a line longer than %d MiB: searched up to it" % (MAX_LINE >> 20)
#: the output a member's grep may send up (the ``limit`` parameter); beyond, the scan
#: stops and the member is named with CUT
OUTPUT_MAX = 8 << 20
CUT = "grep output cut at"
#: a leaf-side tail reads its member backwards from its end this much at a time
TAIL_BLOCK = 64 << 10
#: a tail result longer than its ``limit`` (OUTPUT_MAX) is cut to whole lines, named
TAIL_CUT = "tail output cut at"


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
                add_anchor({"<": r"\b(?=\w)", ">": r"\b(?<=\w)", "`": "^", "'": "$"}[d])
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

def _strerror(e):
    return e.strerror or os.strerror(e.errno or errno.EIO)


def _last_lines(data, k):
    """The last k lines of a block of whole lines (without their newlines)."""
    end = len(data) - 1 if data.endswith(b"\n") else len(data)
    out = []
    while k > 0 and end >= 0:
        start = data.rfind(b"\n", 0, end) + 1
        out.append(data[start:end])
        end = start - 1
        k -= 1
    out.reverse()
    return out


class _Scan:
    """GNU grep over one file fed in blocks of whole lines (the last block may lack
    its newline): what crosses the blocks' boundaries is kept here (the line count,
    the last `before` lines for -B, the after-context promised, whether a group was
    shown for the `--` separator), so that a file of any size is searched in memory
    bounded by a block and the output kept (at most `budget` bytes: beyond, `cut`)."""

    def __init__(self, g, name, pre, shown, budget):
        self.g = g
        self.name = name               # the file's name in -l, -c and messages
        self.pre = pre                 # output lines' prefix (with_name), or None
        self.base = 0                  # the index of the next block's first line
        self.selected = 0
        self.out = []
        self.size = 0
        self.budget = budget
        self.last = -1                 # the last line shown, or promised (after context)
        self.shown = shown             # a line was shown (a -- before the next group)
        self.tail = collections.deque(maxlen=g.before) if g.before else None
        self.binary = False
        self.note = b""
        self.done = False              # nothing more to read (-l, binary, output cut)
        self.cut = False
        self.long = False              # a line longer than MAX_LINE stopped the scan

    def put(self, piece):
        if self.size + len(piece) > self.budget:
            self.cut = self.done = True
            return False
        self.out.append(piece)
        self.size += len(piece)
        self.shown = True
        return True

    def feed(self, data):
        g = self.g
        spans = g.matching(data)
        nlines = data.count(b"\n") + (1 if data and data[-1] != 10 else 0)
        nsel = nlines - len(spans) if g.invert else len(spans)
        self.selected += nsel
        if g.quiet:
            self.done = self.selected > 0
        elif g.files:
            self.done = self.selected > 0
        elif g.count:
            pass
        elif self.binary:
            if nsel:
                self.note = b"grep: " + self.name + b": binary file matches\n"
                self.done = True
        elif g.invert or g.before or g.after:
            if nsel or self.last >= self.base:
                self._context(data, spans)
            if self.tail is not None:
                self.tail.extend(_last_lines(data, g.before))
        elif nsel:
            self._plain(data, spans)
        self.base += nlines

    def _plain(self, data, spans):
        pre = self.pre + b":" if self.pre is not None else b""
        if not self.g.number:
            for ls, le in spans:
                if not self.put(pre + data[ls:le] + b"\n"):
                    return
            return
        k, at = self.base + 1, 0
        for ls, le in spans:
            k += data.count(b"\n", at, ls)
            at = ls
            if not self.put(b"%s%d:%s\n" % (pre, k, data[ls:le])):
                return

    def _context(self, data, spans):
        """Selected lines with before/after context across blocks; with context, --
        between groups that do not touch."""
        g = self.g
        lines = data.split(b"\n")
        if not data or data.endswith(b"\n"):
            lines.pop()
        hit = []
        k, at = 0, 0
        for ls, _ in spans:
            k += data.count(b"\n", at, ls)
            at = ls
            hit.append(k)
        if g.invert:
            hs = set(hit)
            sel = [i for i in range(len(lines)) if i not in hs]
        else:
            sel = hit
        selset = set(sel)
        base, tail = self.base, self.tail
        wend = base + len(lines) - 1
        context = g.before or g.after
        pre = self.pre

        def show(i):
            if i >= base:
                line = lines[i - base]
                sep = b":" if i - base in selset else b"-"
            else:                         # -B context from the blocks before
                line = tail[len(tail) - (base - i)]
                sep = b"-"
            head = pre + sep if pre is not None else b""
            if g.number:
                head += b"%d%s" % (i + 1, sep)
            return self.put(head + line + b"\n")

        for i in range(base, min(self.last, wend) + 1):    # after-context promised
            if not show(i):
                return
        for r in sel:
            i = base + r
            hi = i + g.after
            if hi <= self.last:
                continue
            lo = max(i - g.before, self.last + 1)
            if context and self.shown and (lo > self.last + 1 or self.last < 0):
                if not self.put(b"--\n"):
                    return
            for j in range(lo, min(hi, wend) + 1):
                if not show(j):
                    return
            self.last = hi

    def result(self):
        """(status, output, notes) as GNU grep gives them for the file."""
        g = self.g
        status = 0 if self.selected else 1
        if g.quiet:
            return status, b"", b""
        if g.files:
            return status, (self.name + b"\n" if self.selected else b""), b""
        if g.count:
            pre = self.pre + b":" if self.pre is not None else b""
            return status, b"%s%d\n" % (pre, self.selected), b""
        return status, b"".join(self.out), self.note


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
                 file=None, with_name=False, recursive=False, include=None,
                 exclude=None, limit=OUTPUT_MAX, quiet=False, no_name=False):
        if syntax not in _SYNTAX:
            raise AggregatorError("grep: syntax is one of %s" % ", ".join(_SYNTAX))
        self.invert, self.number = _flag(invert), _flag(number)
        self.count, self.files = _flag(count), _flag(files)
        self.before, self.after = _count(before, "before"), _count(after, "after")
        self.file = _text(file)
        self.with_name = _flag(with_name)
        self.recursive = _flag(recursive)
        self.include = [x for x in (_text(include) or b"").split(b"\n") if x]
        self.exclude = [x for x in (_text(exclude) or b"").split(b"\n") if x]
        self.limit = _count(limit, "limit")
        self.quiet = _flag(quiet)
        self.no_name = _flag(no_name)
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
        self.pre_rx = None     # -w: the lines worth checking (see matching)
        try:
            if word:
                self.pre_rx = re.compile(body, re.M | (re.I if icase else 0))
            if line:
                body = b"^(?:%s)$" % body
            elif word:
                body = b"(?<!%s)(?:%s)(?!%s)" % (_WORD, body, _WORD)
            self.rx = re.compile(body, re.M | (re.I if icase else 0))
        except (re.error, OverflowError, RecursionError) as e:
            raise AggregatorError("grep: bad pattern: %s" % e)
        self.params = {k: v for k, v in (
            ("pattern", text_param(_text(pattern))), ("syntax", syntax), ("icase", icase),
            ("invert", self.invert), ("word", word), ("line", line),
            ("number", self.number), ("count", self.count), ("files", self.files),
            ("before", self.before), ("after", self.after),
            ("file", None if self.file is None else text_param(self.file)),
            ("with_name", self.with_name), ("recursive", self.recursive),
            ("include", text_param(b"\n".join(self.include)) if self.include else None),
            ("exclude", text_param(b"\n".join(self.exclude)) if self.exclude else None),
            ("limit", self.limit if self.limit != OUTPUT_MAX else None),
            ("quiet", self.quiet), ("no_name", self.no_name)) if v}

    # -- the map: GNU grep on one file's bytes -------------------------------------
    def matching(self, data):
        """[(start, end)] of the lines that match, in order (end: the offset of the
        line's newline, or of the end of data)."""
        if self.pre_rx is not None:
            return self._word_matching(data)
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

    def _word_matching(self, data):
        """matching() for -w: a line matches when the word pattern matches within it,
        and it can only where the bare pattern does; Python's re finds the bare
        pattern by its literal prefix, not the word pattern (its look-behind comes
        first), so the bare one picks the lines to check."""
        pre, rx, n = self.pre_rx, self.rx, len(data)
        out = []
        pos = 0
        while pos <= n:
            m = pre.search(data, pos)
            if m is None:
                break
            s = m.start()
            if s == n and (n == 0 or data[n - 1] == 10):
                break
            ls = data.rfind(b"\n", 0, s) + 1
            le = data.find(b"\n", s)
            le = n if le < 0 else le
            if rx.search(data, ls, le) is not None:
                out.append((ls, le))
            pos = le + 1
        return out

    def grep(self, data, window=None):
        """(status, output, notes) of grep on data (fed to the scan in pieces of
        `window` bytes when given: the tests' check of a leaf's chunked reads)."""
        if self.everything and self.invert:
            return 1, b"", b""         # GNU grep skips the file: nothing to select
        chunks = [data] if not window else \
            [data[i:i + window] for i in range(0, len(data), window)]
        return self._scan(chunks, self._name(), self._pre()).result()

    def _name(self):
        return self.file if self.file is not None else b"(standard input)"

    def _pre(self, name=None):
        """The prefix of output lines (the file's name with with_name), or None."""
        if not self.with_name:
            return None
        return name if name is not None else self._name()

    def _scan(self, chunks, name, pre, shown=False, budget=None):
        """A _Scan of the file whose bytes come in chunks (of any size): they are cut
        into blocks of whole lines, carrying a partial line over (at most MAX_LINE).
        A NUL in the first BINARY_PEEK bytes makes the whole file binary (as GNU
        grep's first buffer); a later NUL makes it binary from that chunk on."""
        sc = _Scan(self, name, pre, shown, self.limit if budget is None else budget)
        it = iter(chunks)
        head = []
        n = 0
        for c in it:
            head.append(c)
            n += len(c)
            if n >= BINARY_PEEK:
                break
        sc.binary = any(b"\0" in c for c in head)
        carry = []                     # the pieces of a partial line
        held = 0
        for c in itertools.chain(head, it):
            if not sc.binary and b"\0" in c:
                sc.binary = True
            if sc.binary:
                c = c.replace(b"\0", b"\n")     # NULs end lines in a binary file (GNU)
            cut = c.rfind(b"\n") + 1
            if not cut:
                carry.append(c)
                held += len(c)
                if held > MAX_LINE:
                    sc.long = True
                    break
                continue
            if carry:
                carry.append(c[:cut])
                block = b"".join(carry)
            else:
                block = c if cut == len(c) else c[:cut]
            carry = [c[cut:]] if cut < len(c) else []
            held = len(c) - cut
            sc.feed(block)
            if sc.done:
                break
        else:
            if carry:
                sc.feed(b"".join(carry))
        return sc

    def _wanted(self, name):
        """-r: whether a file of this base name is read (--include, --exclude)."""
        if any(fnmatch.fnmatchcase(name, g) for g in self.exclude):
            return False
        return not self.include or any(fnmatch.fnmatchcase(name, g)
                                       for g in self.include)

    def _tree(self, member, f):
        """grep -r below a directory member: each regular file in the walk's order,
        named as grep -r names it (PATH/sub/file; the bare relative path without a
        PATH), on its lines too unless no_name (-h); a file or directory that cannot be
        read is named in the errors (grep's message) and the walk goes on."""
        top = self.file or b""
        if top and not top.endswith(b"/"):
            top += b"/"
        errors = {}
        outs, notes = [], []
        selected, shown, budget = False, False, self.limit
        want = self._wanted if (self.include or self.exclude) else None
        for path, item in f.walk(want):
            name = top + path if path else (self.file or b".")
            if isinstance(item, str):          # a directory loop: grep's warning
                notes.append(b"grep: %s: warning: %s\n" % (name, item.encode()))
                continue
            if isinstance(item, OSError):
                errors.setdefault("grep: %s: %s" % (_b2s(name), _strerror(item)),
                                  set()).add(member)
                continue
            try:
                sc = self._scan(item.chunks(WINDOW), name,
                                None if self.no_name else name, shown, budget)
            except OSError as e:
                if f.healable(e):
                    raise
                errors.setdefault("grep: %s: %s" % (_b2s(name), _strerror(e)),
                                  set()).add(member)
                continue
            status, out, note = sc.result()
            selected |= status == 0
            shown = sc.shown
            outs.append(out)
            notes.append(note)
            budget -= len(out)
            if sc.long:
                errors.setdefault("grep: %s: %s" % (_b2s(name), LONG_LINE),
                                  set()).add(member)
            if self.quiet and selected:
                break                          # grep -q: the first selected line ends it
            if sc.cut or budget <= 0:
                errors.setdefault(self._cut_reason(), set()).add(member)
                break
        value = {(0 if selected else 1, b"".join(outs), b"".join(notes)): {member}}
        return Partial(value, errors)

    def _cut_reason(self):
        return "%s %d bytes (narrow the pattern, or use -c or -l)" % (CUT, self.limit)

    # -- the aggregator -------------------------------------------------------
    reads_files = True

    def leaf(self, member, data):
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError("leaf data must be bytes, not %s" % type(data).__name__)
        if self.everything and self.invert:
            return Partial({(1, b"", b""): {member}})
        return self._partial(member, self._scan([bytes(data)], self._name(), self._pre()),
                             truncated=_truncated(data))

    def leaf_file(self, member, f):
        """The member read by chunks (any size: a block of lines at a time), or with
        `recursive` the files below a directory member (MemberFile.walk)."""
        if self.everything and self.invert:
            return Partial({(1, b"", b""): {member}})      # GNU grep reads nothing
        if f.is_dir:
            if not self.recursive:
                raise OSError(errno.EISDIR, os.strerror(errno.EISDIR))
            return self._tree(member, f)
        return self._partial(member, self._scan(f.chunks(WINDOW), self._name(),
                                                self._pre()))

    def _partial(self, member, sc, truncated=False):
        p = Partial({sc.result(): {member}})
        if truncated:
            p.errors[TRUNCATED] = {member}
        if sc.long:
            p.errors[LONG_LINE] = {member}
        if sc.cut:
            p.errors[self._cut_reason()] = {member}
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
    """The last n lines of each member (start=K: from line K on); value as equiv's.

    It reads its members itself (reads_files): leaf_file() takes the member's size
    (getattr) and reads it backwards from that end in TAIL_BLOCK pieces until n lines
    are found, so the cost follows the bytes of those lines, not the file's size; the
    file is seen as it was at that size (lines appended meanwhile are not read, and no
    line is torn or repeated).  A file that reports no size (a synthetic file) or
    shrinks while read is read forward instead, keeping only its last n lines.  start=K
    reads forward, from line K on.  The result is at most ``limit`` bytes (OUTPUT_MAX
    by default) of whole lines: beyond, the member is named (TAIL_CUT)."""
    name = "tail"

    def __init__(self, n=10, start=None, limit=OUTPUT_MAX):
        super().__init__()
        self.n = _count(n, "n")
        self.start = None if start is None else _count(start, "start")
        if self.start == 0:
            raise AggregatorError("tail: start counts lines from 1")
        self.limit = _count(limit, "limit")
        self.params = {"n": self.n} if start is None else {"start": self.start}
        if self.limit != OUTPUT_MAX:
            self.params["limit"] = self.limit

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

    # -- the member read at the leaf (any size) -------------------------------
    reads_files = True

    def leaf_file(self, member, f):
        if f.is_dir:
            raise OSError(errno.EISDIR, os.strerror(errno.EISDIR))
        lo = f.offset
        if self.start is not None:
            text, cut = self._from_line(f, lo)
        elif self.n == 0:
            text, cut = b"", False
        else:
            size = f.node.getattr(f.ctx).size
            got = self._from_end(f, lo, size) if size > 0 else None
            text, cut = got if got is not None else self._last_forward(f, lo)
        p = Partial({text: {member}})
        if cut:
            p.errors[self._cut_reason()] = {member}
        return p

    def _cut_reason(self):
        return "%s %d bytes: only the %s lines that fit were kept" % (
            TAIL_CUT, self.limit, "first" if self.start is not None else "last")

    def _fit_end(self, data):
        """The last whole lines of data that fit in limit bytes."""
        if len(data) <= self.limit:
            return data
        keep = data[len(data) - self.limit:] if self.limit else b""
        if keep and data[len(data) - self.limit - 1] != 10:
            keep = keep[keep.find(b"\n") + 1:] if b"\n" in keep else b""
        return keep

    def _from_end(self, f, lo, size):
        """(the last n lines of the member's bytes [lo, size), cut) read backwards in
        TAIL_BLOCK pieces; None when the file got shorter meanwhile."""
        n, limit = self.n, self.limit
        blocks = []
        held = found = 0
        pos = size
        while pos > lo:
            k = min(TAIL_BLOCK, pos - lo)
            pos -= k
            data = f.read(pos, k)
            if len(data) < k:
                return None                    # truncated meanwhile: read it forward
            if len(data) > k:
                data = data[:k]
            i = k - 1 if pos + k == size and data[-1] == 10 else k   # its own newline
            got, i = _newlines_back(data, i, n - found)
            found += got
            if found == n:
                blocks.append(data[i + 1:])
                held += k - i - 1
                break
            blocks.append(data)
            held += k
            if held > limit:
                break                          # more would not fit anyway
        text = b"".join(reversed(blocks))
        return self._fit_end(text), len(text) > limit

    def _last_forward(self, f, lo):
        """(the last n lines, cut) of a member read forward to its end, keeping at
        most about limit bytes of lines (a file without a size, or one that shrank)."""
        n, limit = self.n, self.limit
        buf = b""
        capped = False
        for c in f.chunks(WINDOW):
            buf += c
            i = len(buf) - 1 if buf[-1] == 10 else len(buf)
            found, i = _newlines_back(buf, i, n)
            if found == n:
                buf = buf[i + 1:]
                capped = False                 # n whole lines are held
            if len(buf) > limit:
                buf = self._fit_end(buf)
                capped = True
        return buf, capped

    def _from_line(self, f, lo):
        """(lines start.. of the member, read forward, at most limit bytes; cut)."""
        skip = self.start - 1
        out = []
        held = 0
        for c in f.chunks(WINDOW):
            j = -1
            while skip:
                j = c.find(b"\n", j + 1)
                if j < 0:
                    break
                skip -= 1
            if skip:
                continue
            if j >= 0:
                c = c[j + 1:]
            out.append(c)
            held += len(c)
            if held > self.limit:
                text = b"".join(out)[:self.limit]
                return text[:text.rfind(b"\n") + 1], True
        return b"".join(out), False


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


def _newlines_back(data, i, want):
    """(how many, where the last found is) of up to `want` newlines of data before
    index i, counted backwards; where is -1 when fewer were found."""
    found = 0
    while found < want:
        i = data.rfind(b"\n", 0, i)
        if i < 0:
            break
        found += 1
    return found, i
