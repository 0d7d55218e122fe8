"""FiNAL, the File Namespace Aggregation Language: lexer, parser and checker.

A program is one statement a line; `#` starts a comment (at the start of a line or after
white space).  The grammar (EBNF) and the meaning of each operator are in docs/final.md:

    insert    SOURCES at PATH        union SOURCES into PATH (SOURCES are searched first)
    replace   PATH with SOURCES      PATH becomes SOURCES (what was there is gone)
    remove    PATTERN                hide every path the pattern matches
    move      PATH to PATH           relocate a subtree of the name space built so far
    simple    SOURCES at PATH        directory per server:  PATH/serverA/...
    merge     SOURCES at PATH        PATH/name/serverA  (one level)
    deepmerge SOURCES at PATH        PATH/dir/.../leaf/serverA  (merge starts at the leaves)

    SOURCES = SOURCE { "," SOURCE },  SOURCE = CHILDREN ":" PATH  (CHILDREN: a child name or
    a glob over child names, e.g. `*`, `server[A-C]`, `node?`).

parse() checks the syntax; check() resolves child names against the children of a
composition and rejects conflicting targets.  Both raise FinalError (a ValueError) naming
the line number and the reason, so a bad program is refused before anything is served.
"""

import re

OPS = ("insert", "replace", "remove", "move", "simple", "merge", "deepmerge")
VIEWS = ("simple", "merge", "deepmerge")
#: statements that define their target afresh (what was there before is discarded)
DEFINERS = ("simple", "merge", "deepmerge", "replace", "move")

_GLOB_CHARS = frozenset("*?[")


class FinalError(ValueError):
    """A FiNAL program is wrong.  .lineno (0 when not tied to a line), .reason, .line."""

    def __init__(self, lineno, reason, line=None):
        self.lineno = lineno
        self.reason = reason
        self.line = line
        super().__init__(("line %d: %s" % (lineno, reason)) if lineno else reason)


class Source:
    """CHILDREN:PATH.  .sel: the child name or glob as written; .path: tuple of names;
    .children: the child names it selects (filled in by check(), in children order)."""
    __slots__ = ("sel", "path", "children")

    def __init__(self, sel, path, children=None):
        self.sel = sel
        self.path = path
        self.children = children

    def __repr__(self):
        return "Source(%r, %r)" % (self.sel, fmt_path(self.path))

    def __str__(self):
        return "%s:%s" % (self.sel, fmt_path(self.path))


class Statement:
    """One statement.  .op (one of OPS), .lineno, .text (the line as written),
    .target (tuple: where it puts something; for remove: the pattern), .sources (list of
    Source; insert, replace and the views), .frm (move: the path moved)."""
    __slots__ = ("op", "lineno", "text", "target", "sources", "frm", "matchers")

    def __init__(self, op, lineno, text, target, sources=(), frm=None):
        self.op = op
        self.lineno = lineno
        self.text = text
        self.target = target
        self.sources = list(sources)
        self.frm = frm
        self.matchers = None

    def __repr__(self):
        return "Statement(%s, line %d: %r)" % (self.op, self.lineno, self.text)


class Program:
    """A parsed (and, once check() ran, checked) program."""

    def __init__(self, statements, text=""):
        self.statements = statements
        self.text = text
        self.checked_for = None     # the tuple of child names check() ran against

    def __iter__(self):
        return iter(self.statements)

    def __len__(self):
        return len(self.statements)

    def __repr__(self):
        return "Program(%r)" % (self.statements,)


def fmt_path(path):
    return "/" + "/".join(path)


# --- globs -------------------------------------------------------------------------------
_glob_cache = {}


def is_glob(s):
    return any(c in _GLOB_CHARS for c in s)


def compile_glob(pat):
    """A matcher (callable name -> bool) for one path component or child name.
    `*` any run of characters, `?` one character, `[abc]` `[a-z]` `[!abc]` a set.
    Raises ValueError (with the reason) for a bad pattern."""
    m = _glob_cache.get(pat)
    if m is not None:
        return m
    if not is_glob(pat):
        m = pat.__eq__
        _glob_cache[pat] = m
        return m
    if "**" in pat:
        raise ValueError("'**' is not supported (patterns match one name each)")
    out = []
    i, n = 0, len(pat)
    while i < n:
        c = pat[i]
        if c == "*":
            out.append(".*")
            i += 1
        elif c == "?":
            out.append(".")
            i += 1
        elif c == "[":
            j = i + 1
            neg = False
            if j < n and pat[j] == "!":
                neg = True
                j += 1
            start = j
            if j < n and pat[j] == "]":     # a leading ] is a member
                j += 1
            while j < n and pat[j] != "]":
                j += 1
            if j >= n:
                raise ValueError("unclosed '[' in %r" % pat)
            body = pat[start:j]
            if not body:
                raise ValueError("empty '[]' in %r" % pat)
            k = 0
            parts = []
            while k < len(body):
                if k + 2 < len(body) and body[k + 1] == "-":
                    lo, hi = body[k], body[k + 2]
                    if lo > hi:
                        raise ValueError("bad range %s-%s in %r" % (lo, hi, pat))
                    parts.append(re.escape(lo) + "-" + re.escape(hi))
                    k += 3
                else:
                    parts.append(re.escape(body[k]))
                    k += 1
            out.append("[" + ("^" if neg else "") + "".join(parts) + "]")
            i = j + 1
        else:
            out.append(re.escape(c))
            i += 1
    rx = re.compile("(?s:" + "".join(out) + r")\Z")
    m = lambda name, _m=rx.match: _m(name) is not None  # noqa: E731
    _glob_cache[pat] = m
    return m


# --- lexing and parsing ----------------------------------------------------------------
_TOKEN = re.compile(r",|[^\s,]+")


def _strip_comment(line):
    for i, c in enumerate(line):
        if c == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def _path(tok, lineno, text, what="path", pattern=False):
    if not tok.startswith("/"):
        raise FinalError(lineno, "%s %r must start with '/'" % (what, tok), text)
    parts = tuple(p for p in tok.split("/") if p)
    for p in parts:
        if p in (".", ".."):
            raise FinalError(lineno, "%r may not appear in %s %r" % (p, what, tok), text)
        if "\0" in p:
            raise FinalError(lineno, "NUL in %s %r" % (what, tok), text)
        if is_glob(p):
            if not pattern:
                raise FinalError(lineno, "%s %r cannot hold a pattern (only remove and the "
                                 "child part of a source take patterns)" % (what, tok), text)
            try:
                compile_glob(p)
            except ValueError as ex:
                raise FinalError(lineno, "bad pattern %r: %s" % (tok, ex), text) from None
    return parts


def _source(tok, lineno, text):
    sel, colon, path = tok.partition(":")
    if not colon or not sel:
        raise FinalError(lineno, "bad source %r: expected CHILD:/PATH (e.g. serverA:/proc "
                         "or *:/proc)" % tok, text)
    try:
        compile_glob(sel)
    except ValueError as ex:
        raise FinalError(lineno, "bad child pattern %r: %s" % (sel, ex), text) from None
    return Source(sel, _path(path, lineno, text, "source path"))


def _sources(toks, lineno, text, op):
    if not toks:
        raise FinalError(lineno, "%s needs at least one source (CHILD:/PATH)" % op, text)
    out = []
    expect_src = True
    for t in toks:
        if t == ",":
            if expect_src:
                raise FinalError(lineno, "unexpected ',' in the sources", text)
            expect_src = True
        else:
            if not expect_src:
                raise FinalError(lineno, "sources must be separated by ',' (at %r)" % t, text)
            out.append(_source(t, lineno, text))
            expect_src = False
    if expect_src:
        raise FinalError(lineno, "a source is missing after ','", text)
    return out


def _split_at(toks, kw, lineno, text, op, form):
    try:
        i = toks.index(kw)
    except ValueError:
        raise FinalError(lineno, "expected '%s' in %s (form: %s)" % (kw, op, form),
                         text) from None
    return toks[:i], toks[i + 1:]


def _one(toks, lineno, text, what):
    if not toks:
        raise FinalError(lineno, "missing %s" % what, text)
    if len(toks) > 1:
        raise FinalError(lineno, "unexpected %r after the %s" % (" ".join(toks[1:]), what),
                         text)
    return toks[0]


_FORMS = {
    "insert": "insert SOURCES at PATH",
    "replace": "replace PATH with SOURCES",
    "remove": "remove PATTERN",
    "move": "move PATH to PATH",
    "simple": "simple SOURCES at PATH",
    "merge": "merge SOURCES at PATH",
    "deepmerge": "deepmerge SOURCES at PATH",
}


def parse_statement(text, lineno=1):
    """Parse one line; None for an empty or comment-only line."""
    toks = _TOKEN.findall(_strip_comment(text))
    if not toks:
        return None
    op, rest = toks[0], toks[1:]
    if op not in OPS:
        raise FinalError(lineno, "unknown operator %r (expected one of: %s)"
                         % (op, ", ".join(OPS)), text)
    form = _FORMS[op]
    if op in ("insert",) + VIEWS:
        srcs, tgt = _split_at(rest, "at", lineno, text, op, form)
        target = _path(_one(tgt, lineno, text, "target path"), lineno, text, "target path")
        return Statement(op, lineno, text.strip(), target, _sources(srcs, lineno, text, op))
    if op == "replace":
        tgt, srcs = _split_at(rest, "with", lineno, text, op, form)
        target = _path(_one(tgt, lineno, text, "path to replace"), lineno, text,
                       "path to replace")
        return Statement(op, lineno, text.strip(), target, _sources(srcs, lineno, text, op))
    if op == "remove":
        pat = _path(_one(rest, lineno, text, "pattern"), lineno, text, "pattern", pattern=True)
        if not pat:
            raise FinalError(lineno, "cannot remove the root", text)
        st = Statement(op, lineno, text.strip(), pat)
        st.matchers = tuple(compile_glob(p) for p in pat)
        return st
    # move
    frm, to = _split_at(rest, "to", lineno, text, op, form)
    a = _path(_one(frm, lineno, text, "path to move"), lineno, text, "path to move")
    b = _path(_one(to, lineno, text, "destination path"), lineno, text, "destination path")
    if not a or not b:
        raise FinalError(lineno, "cannot move the root or move onto the root", text)
    if a == b[:len(a)] or b == a[:len(b)]:
        raise FinalError(lineno, "cannot move %s to %s: one lies inside the other"
                         % (fmt_path(a), fmt_path(b)), text)
    return Statement(op, lineno, text.strip(), b, frm=a)


def parse(text):
    """Parse a program (a string, or an iterable of lines).  Raises FinalError."""
    if isinstance(text, str):
        lines = text.splitlines()
        src = text
    else:
        lines = list(text)
        src = "\n".join(lines)
    stmts = []
    for i, line in enumerate(lines, 1):
        st = parse_statement(line, i)
        if st is not None:
            stmts.append(st)
    return Program(stmts, src)


def _valid_child_name(name):
    return bool(name) and name not in (".", "..") and "/" not in name and "\0" not in name \
        and ":" not in name and "," not in name and not any(c.isspace() for c in name)


def check(program, child_names):
    """Resolve the child part of every source against `child_names` (ordered) and check
    the program as a whole.  Returns the program (checked).  Raises FinalError for an
    unknown child, a pattern that selects no child, a child twice in one view, or
    conflicting targets."""
    if isinstance(program, str):
        program = parse(program)
    names = list(child_names)
    seen = set()
    for c in names:
        if not _valid_child_name(c):
            raise FinalError(0, "bad child name %r (a child name becomes a file name: no '/',"
                             " ':', ',', white space, '.' or '..')" % (c,))
        if c in seen:
            raise FinalError(0, "child %r given twice" % c)
        seen.add(c)
    # (target, lineno, op) of every statement that puts something somewhere
    placed = []
    for st in program.statements:
        ln, text = st.lineno, st.text
        for s in st.sources:
            if is_glob(s.sel):
                m = compile_glob(s.sel)
                s.children = tuple(c for c in names if m(c))
                if not s.children:
                    raise FinalError(ln, "no child matches %r (children: %s)"
                                     % (s.sel, _some(names)), text)
            else:
                if s.sel not in seen:
                    raise FinalError(ln, "unknown child %r (children: %s)"
                                     % (s.sel, _some(names)), text)
                s.children = (s.sel,)
        if st.op in VIEWS:
            got = {}
            for s in st.sources:
                for c in s.children:
                    if c in got:
                        raise FinalError(ln, "child %r appears twice in %s (in %s and %s): "
                                         "its per-server entries would collide"
                                         % (c, st.op, got[c], s), text)
                    got[c] = s
        if st.op == "remove":
            continue
        tgt = st.target
        if st.op in DEFINERS:
            for t, l2, op2 in placed:
                if t[:len(tgt)] == tgt:
                    if t == tgt:
                        why = "%s is already the target of line %d (%s)" % (fmt_path(tgt), l2,
                                                                             op2)
                    else:
                        why = "%s would discard what line %d (%s) put at %s" % (
                            fmt_path(tgt), l2, op2, fmt_path(t))
                    raise FinalError(ln, "conflicting targets: " + why, text)
        placed.append((tgt, ln, st.op))
    program.checked_for = tuple(names)
    return program


def _some(names, k=6):
    if len(names) <= k:
        return ", ".join(names) or "(none)"
    return ", ".join(names[:k]) + ", ... (%d in all)" % len(names)
