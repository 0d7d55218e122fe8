"""Aggregators for group reads: map at the leaves, merge at every level, render at the root.

This is the MRNet filter model for a tree of multiplexers.  A group read of one file on
many members is turned into one result:

* ``agg.leaf(member, data)`` maps one member's bytes to a *partial* result;
  ``agg.fail(member, reason)`` records a member that failed instead; an aggregator with
  ``reads_files`` (grep) is given the open member instead, ``agg.leaf_file(member, f)``,
  and reads it itself (any size; a directory walked: nine.group.member);
* ``agg.merge([p1, p2, ...])`` combines partials from children.  It is associative and
  commutative, so any tree shape gives the same result, and where the aggregation allows
  the partial's size follows the number of distinct results, not of members;
* ``agg.render(p)`` is the text a client reads at the root;
* ``agg.encode(p)`` / ``agg.decode(b)`` are a compact JSON wire form to pass partials up
  the tree.  Member sets are folded with ClusterShell's NodeSet (``node[1-256]``).

Every partial is a :class:`Partial`: the aggregator's own ``value`` (``None`` when no
member answered) and ``errors``, a map reason -> set of members.  Errors are carried
through merge by every aggregator and rendered last, one line per reason, largest set
first::

    errors: node[3,5]: Host is down

Aggregators are registered by name (``register``, ``get``, ``names``); params are
constructor keyword arguments (``get("histogram", bins=5, range=(0, 1))``).

Built in:

``concat``     each member's lines prefixed by ``member: `` (like pdsh/dshbak input),
               members in natural order (node2 < node10); ``header=True`` puts a
               ``== member ==`` line before each member's data instead.
``equiv``      equivalence classes, as ``dshbak -c`` / ``clush -b``: each distinct
               content once under its folded member set, largest class first.
``diff``       the majority content once, then for each minority class its folded
               member set and a unified diff against the majority.
``sum`` ``min`` ``max`` ``mean``
               per key per column over lines ``key value [value ...]`` (``load1 0.73``);
               renders ``key value ...`` lines.  Tokens that are not finite numbers are
               ignored (their column shows ``-`` when no member had a number there), as
               are lines with no number at all.  A key repeated within one member's data is
               combined with the same operation.
``count``      the number of members that answered (failed members are in ``errors``).
``histogram``  per key, a histogram of one column's values (``column=0``, the first
               value).  With ``range=(lo, hi)`` values are binned at the leaves into
               ``bins`` bins (out-of-range counts shown as ``< lo`` / ``> hi``);
               without, distinct values are counted exactly and binned over
               [min, max] at render.
"""

import difflib
import json
import math
import re

__all__ = [
    "Aggregator", "Partial", "AggregatorError", "UnknownAggregator",
    "register", "get", "names", "load", "fold", "natural_key",
]


class AggregatorError(ValueError):
    """A bad partial, wire form or parameter."""


class UnknownAggregator(LookupError):
    """No aggregator is registered under that name."""


# ---------------------------------------------------------------------------
# helpers

_DIGITS = re.compile(r"(\d+)")


def natural_key(s):
    """Sort key putting node2 before node10."""
    parts = _DIGITS.split(s)
    # re.split with a group alternates text, digits, text, ...: types align by position.
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), s


def _nsorted(members):
    return sorted(members, key=natural_key)


_FOLDED = {}       # frozenset of members -> wire form (the same sets recur on every read)
_UNFOLDED = {}     # wire string -> frozenset
_CACHE_MAX = 4096


def _fold_wire(members):
    """A member set on the wire: a folded NodeSet string, or a plain list when the
    names do not survive folding (odd characters)."""
    key = members if isinstance(members, frozenset) else frozenset(members)
    w = _FOLDED.get(key)
    if w is not None:
        return w
    if not key:
        return []
    w = None
    # ClusterShell is loaded by the first set to fold (a one-shot `nine gread` whose
    # members all answer needs none)
    from ClusterShell.NodeSet import NodeSet
    try:
        folded = str(NodeSet.fromlist(key))
        if set(NodeSet(folded)) == key:
            w = folded
    except Exception:
        pass
    if w is None:
        w = _nsorted(key)
    if len(_FOLDED) >= _CACHE_MAX:
        _FOLDED.clear()
    _FOLDED[key] = w
    if isinstance(w, str):
        if len(_UNFOLDED) >= _CACHE_MAX:
            _UNFOLDED.clear()
        _UNFOLDED[w] = key
    return w


def _unfold_wire(w):
    if isinstance(w, str):
        got = _UNFOLDED.get(w)
        if got is not None:
            return set(got)
        from ClusterShell.NodeSet import NodeSet
        try:
            got = frozenset(NodeSet(w))
        except Exception as e:
            raise AggregatorError("bad member set %r: %s" % (w, e))
        if len(_UNFOLDED) >= _CACHE_MAX:
            _UNFOLDED.clear()
        _UNFOLDED[w] = got
        return set(got)
    if isinstance(w, list) and all(isinstance(m, str) for m in w):
        return set(w)
    raise AggregatorError("bad member set %r" % (w,))


def fold(members):
    """Folded text for a member set: ``node[1-4,7]``."""
    w = _fold_wire(members)
    return w if isinstance(w, str) else ",".join(w)


def _b2s(b):
    return b.decode("utf-8", "surrogateescape")


def _s2b(s):
    if not isinstance(s, str):
        raise AggregatorError("expected a string, got %r" % (s,))
    return s.encode("utf-8", "surrogateescape")


def _nl(b):
    """b with a trailing newline (unless empty)."""
    return b if not b or b.endswith(b"\n") else b + b"\n"


def _fmt(v):
    if v is None:
        return "-"
    if isinstance(v, int) or (float(v).is_integer() and abs(v) < 1e15):
        return str(int(v))
    return "%.12g" % v


def _number(tok):
    """A finite int or float, or None."""
    try:
        return int(tok)
    except ValueError:
        pass
    try:
        v = float(tok)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def _records(data):
    """(key, [number-or-None, ...]) for each ``key value ...`` line."""
    for line in _b2s(data).splitlines():
        toks = line.split()
        if toks:
            yield toks[0], [_number(t) for t in toks[1:]]


# ---------------------------------------------------------------------------
# partials and the base class

class Partial:
    """One aggregator's partial result: ``value`` (aggregator-specific, None when no
    member answered) and ``errors`` {reason: set of members}."""

    __slots__ = ("value", "errors")

    def __init__(self, value=None, errors=None):
        self.value = value
        self.errors = errors if errors is not None else {}

    def members_failed(self):
        return set().union(*self.errors.values()) if self.errors else set()

    def __repr__(self):
        return "Partial(%r, errors=%r)" % (self.value, self.errors)


class Aggregator:
    """Base class.  Subclasses set ``name`` and implement ``map`` (one member's data ->
    value), ``combine`` (a non-empty list of values -> value, associative), ``show``
    (value -> bytes), and, if the value is not plain JSON, ``to_wire``/``from_wire``.
    The public methods (leaf, fail, merge, render, encode, decode) carry errors."""

    name = None
    #: True: a read with ``count all`` gives leaf_file() the member itself (read by
    #: offsets, a directory walked: nine.group.member.MemberFile) instead of giving
    #: leaf() at most its first 1 MiB, so that the map reads a file of any size in
    #: bounded memory, stops where it may, or reads the files under a directory (grep
    #: -r).  Streams (``sync nowait``), ``count N`` reads and the client's own groups
    #: still call leaf() with bytes, so such an aggregator implements both.
    reads_files = False
    #: True: the map makes a member's bytes much smaller (a hash, a signature), so each
    #: member is mapped on the server that holds it: a child's single member is handed
    #: to that child's group service too, and only the mapped value crosses the link
    #: (a read of 1 MiB windows of 64 hosts' files moves signatures, not 64 MiB).
    maps_where_read = False

    def __init__(self, **params):
        if params:
            raise TypeError("%s: unknown parameters: %s" % (self.name, ", ".join(sorted(params))))
        self.params = {}

    # -- to implement -------------------------------------------------------
    def map(self, member, data):
        raise NotImplementedError

    def combine(self, values):
        raise NotImplementedError

    def show(self, value):
        raise NotImplementedError

    def to_wire(self, value):
        return value

    def from_wire(self, w):
        return w

    # -- public -------------------------------------------------------------
    def leaf(self, member, data):
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError("leaf data must be bytes, not %s" % type(data).__name__)
        return Partial(self.map(member, bytes(data)))

    def leaf_file(self, member, f):
        """The partial of a member the aggregator reads itself (reads_files): f is
        read by offsets (``f.read(offset, n)``, ``f.chunks(size)``) or, when
        ``f.is_dir``, walked (``f.walk()``); what fails raises OSError."""
        raise NotImplementedError

    def fail(self, member, reason):
        return Partial(None, {str(reason): {member}})

    def merge(self, partials):
        partials = list(partials)
        values = [p.value for p in partials if p.value is not None]
        errors = {}
        for p in partials:
            for reason, ms in p.errors.items():
                errors.setdefault(reason, set()).update(ms)
        return Partial(self.combine(values) if values else None, errors)

    def render(self, partial):
        out = _nl(self.show(partial.value)) if partial.value is not None else b""
        for reason, ms in sorted(partial.errors.items(),
                                 key=lambda rm: (-len(rm[1]), natural_key(min(rm[1], key=natural_key, default="")), rm[0])):
            reason = " ".join(reason.split())
            out += ("errors: %s: %s\n" % (fold(ms), reason)).encode("utf-8", "surrogateescape")
        return out

    def encode(self, partial):
        w = {"a": self.name,
             "v": None if partial.value is None else self.to_wire(partial.value),
             "e": [[r, _fold_wire(ms)] for r, ms in sorted(partial.errors.items())]}
        return json.dumps(w, separators=(",", ":")).encode("ascii")

    def decode(self, data):
        try:
            w = json.loads(bytes(data).decode("ascii"))
        except (ValueError, UnicodeDecodeError) as e:
            raise AggregatorError("bad encoded partial: %s" % e)
        if not isinstance(w, dict) or w.get("a") != self.name:
            raise AggregatorError("encoded partial is not for aggregator %r" % self.name)
        try:
            errors = {}
            for r, ms in w.get("e", []):
                errors.setdefault(r, set()).update(_unfold_wire(ms))
            v = w.get("v")
            return Partial(None if v is None else self.from_wire(v), errors)
        except AggregatorError:
            raise
        except (TypeError, ValueError, KeyError, IndexError, AttributeError) as e:
            raise AggregatorError("bad encoded partial for %r: %s" % (self.name, e))

    def aggregate(self, results, errors=()):
        """Convenience: one flat merge of {member: data} and [(member, reason)], rendered."""
        ps = [self.leaf(m, d) for m, d in dict(results).items()]
        ps += [self.fail(m, r) for m, r in errors]
        return self.render(self.merge(ps))


# ---------------------------------------------------------------------------
# registry

_registry = {}


def register(cls):
    """Register an Aggregator subclass under ``cls.name``; usable as a decorator."""
    if not (isinstance(cls, type) and issubclass(cls, Aggregator)):
        raise TypeError("register() needs an Aggregator subclass, not %r" % (cls,))
    name = cls.name
    if not isinstance(name, str) or not name:
        raise ValueError("aggregator %s has no name" % cls.__name__)
    old = _registry.get(name)
    if old is not None and old is not cls:
        raise ValueError("aggregator name %r is already registered (%s)" % (name, old.__name__))
    _registry[name] = cls
    return cls


def get(name, **params):
    """A new aggregator instance for ``name`` with params."""
    try:
        cls = _registry[name]
    except (KeyError, TypeError):
        raise UnknownAggregator("unknown aggregator %r (known: %s)" % (name, ", ".join(names())))
    return cls(**params)


def names():
    return sorted(_registry)


def load(spec):
    """Load custom aggregators: `spec` is a comma-separated list of Python files
    (path/to/aggs.py) or module names, each registering its classes with
    ``@register``.  Every server and mux of a tree is given the same list (``nine tree
    --aggregators``), so the aggregators are known at every level.  Returns the names
    registered."""
    import importlib
    import importlib.util
    import os
    before = set(_registry)
    for item in [x.strip() for x in (spec or "").split(",") if x.strip()]:
        try:
            if item.endswith(".py") or os.sep in item:
                path = os.path.abspath(item)
                modname = "nine_aggregators_" + re.sub(r"\W", "_", path)
                import sys
                if modname in sys.modules:
                    continue            # loaded already (the same file named twice)
                spec_ = importlib.util.spec_from_file_location(modname, path)
                if spec_ is None:
                    raise ImportError("not a Python file")
                mod = importlib.util.module_from_spec(spec_)
                sys.modules[modname] = mod
                try:
                    spec_.loader.exec_module(mod)
                except BaseException:
                    del sys.modules[modname]
                    raise
            else:
                importlib.import_module(item)
        except Exception as e:
            raise AggregatorError("cannot load aggregators from %r: %s" % (item, e))
    return sorted(set(_registry) - before)


# ---------------------------------------------------------------------------
# built-in aggregators

@register
class Concat(Aggregator):
    """value: {member: data bytes}."""
    name = "concat"

    def __init__(self, header=False):
        self.params = {"header": bool(header)}
        self.header = bool(header)

    def map(self, member, data):
        return {member: data}

    def combine(self, values):
        # a member may be in several values (successive pieces of a nowait stream,
        # merged in the order they came): its pieces are joined in that order
        out = {}
        for v in values:
            for m, d in v.items():
                out[m] = out[m] + d if m in out else d
        return out

    def show(self, value):
        out = []
        for m in _nsorted(value):
            data = value[m]
            mb = m.encode("utf-8", "surrogateescape")
            if self.header:
                out.append(b"== " + mb + b" ==\n" + _nl(data))
            else:
                out.extend(mb + b": " + line + b"\n" for line in data.splitlines())
        return b"".join(out)

    def to_wire(self, value):
        return {m: _b2s(d) for m, d in value.items()}

    def from_wire(self, w):
        return {m: _s2b(d) for m, d in w.items()}


def _bar_header(ms):
    text = "%s (%d)" % (fold(ms), len(ms))
    return ("---------------\n%s\n---------------\n" % text).encode("utf-8", "surrogateescape")


_FORMATS = {"i8": "b", "u8": "B", "i16": "h", "u16": "H", "i32": "i", "u32": "I",
            "i64": "q", "u64": "Q", "f32": "f", "f64": "d"}


def _show_content(content, fmt):
    """A class's content as text: as is, hex, or little-endian numbers (mem reads)."""
    if fmt == "text":
        return _nl(content)
    if fmt == "hex":
        return content.hex().encode() + b"\n"
    import struct
    code = _FORMATS[fmt]
    size = struct.calcsize(code)
    n = len(content) // size
    vals = struct.unpack("<%d%s" % (n, code), content[:n * size])
    text = " ".join(_fmt(v) if isinstance(v, float) else str(v) for v in vals)
    if len(content) % size:
        text += " +%s" % content[n * size:].hex()
    return text.encode() + b"\n"


@register
class Equiv(Aggregator):
    """value: {content bytes: set of members}.  format: how a class's content is shown
    (text; hex; i8 u8 i16 u16 i32 u32 i64 u64 f32 f64: little-endian numbers, for reads
    of process memory)."""
    name = "equiv"

    def __init__(self, format="text"):
        if format not in ("text", "hex") and format not in _FORMATS:
            raise AggregatorError("format must be text, hex or one of %s" %
                                  " ".join(_FORMATS))
        self.params = {} if format == "text" else {"format": format}
        self.format = format

    def map(self, member, data):
        return {data: {member}}

    def combine(self, values):
        out = {}
        for v in values:
            for content, ms in v.items():
                out.setdefault(content, set()).update(ms)
        return out

    @staticmethod
    def classes(value):
        """(content, members) largest class first, ties by first member.  The first
        member (a natural sort key of every member) is found only for classes whose size
        another class shares: with 100,000 members this was most of a render."""
        sizes = {}
        for ms in value.values():
            sizes[len(ms)] = sizes.get(len(ms), 0) + 1

        def key(cm):
            n = len(cm[1])
            first = natural_key(min(cm[1], key=natural_key)) if sizes[n] > 1 else ()
            return (-n, first, cm[0])
        return sorted(value.items(), key=key)

    def show(self, value):
        return b"".join(_bar_header(ms) + _show_content(content, self.format)
                        for content, ms in self.classes(value))

    def to_wire(self, value):
        return [[_b2s(c), _fold_wire(ms)] for c, ms in sorted(value.items())]

    def from_wire(self, w):
        out = {}
        for c, ms in w:
            out.setdefault(_s2b(c), set()).update(_unfold_wire(ms))
        return out


@register
class Diff(Equiv):
    """Same partial as equiv; renders the majority once and unified diffs for the rest."""
    name = "diff"

    def show(self, value):
        classes = self.classes(value)
        major, mms = classes[0]
        out = [_bar_header(mms), _nl(major)]
        a = _b2s(major).splitlines(keepends=True)
        for content, ms in classes[1:]:
            b = _b2s(content).splitlines(keepends=True)
            d = difflib.unified_diff(a, b, fromfile=fold(mms), tofile=fold(ms))
            text = "".join(l if l.endswith("\n") else l + "\n\\ No newline at end of file\n" for l in d)
            out.append(_bar_header(ms) + text.encode("utf-8", "surrogateescape"))
        return b"".join(out)


class Numeric(Aggregator):
    """value: {key: [cell or None per column]}; a cell is ``lift(number)``."""

    def lift(self, x):
        return x

    def op(self, a, b):
        raise NotImplementedError

    def out(self, cell):
        return cell

    def _cell(self, a, b):
        if a is None:
            return b
        if b is None:
            return a
        return self.op(a, b)

    def _row(self, r1, r2):
        n = max(len(r1), len(r2))
        r1 = r1 + [None] * (n - len(r1))
        r2 = r2 + [None] * (n - len(r2))
        return [self._cell(a, b) for a, b in zip(r1, r2)]

    def map(self, member, data):
        out = {}
        for key, nums in _records(data):
            if all(x is None for x in nums):
                continue
            row = [None if x is None else self.lift(x) for x in nums]
            out[key] = self._row(out[key], row) if key in out else row
        return out

    def combine(self, values):
        out = {}
        for v in values:
            for key, row in v.items():
                out[key] = self._row(out[key], row) if key in out else list(row)
        return out

    def show(self, value):
        lines = []
        for key in _nsorted(value):
            cells = [_fmt(None if c is None else self.out(c)) for c in value[key]]
            lines.append(" ".join([key] + cells) + "\n")
        return "".join(lines).encode("utf-8", "surrogateescape")

    def from_wire(self, w):
        if not isinstance(w, dict) or not all(isinstance(r, list) for r in w.values()):
            raise AggregatorError("bad %s value" % self.name)
        return w


@register
class Sum(Numeric):
    name = "sum"

    def op(self, a, b):
        return a + b


@register
class Min(Numeric):
    name = "min"

    def op(self, a, b):
        return min(a, b)


@register
class Max(Numeric):
    name = "max"

    def op(self, a, b):
        return max(a, b)


@register
class Mean(Numeric):
    """Cells are [sum, count]."""
    name = "mean"

    def lift(self, x):
        return [x, 1]

    def op(self, a, b):
        return [a[0] + b[0], a[1] + b[1]]

    def out(self, cell):
        return cell[0] / cell[1]


@register
class Count(Aggregator):
    """value: number of members that answered."""
    name = "count"

    def map(self, member, data):
        return 1

    def combine(self, values):
        return sum(values)

    def show(self, value):
        return b"%d\n" % value

    def from_wire(self, w):
        if not isinstance(w, int):
            raise AggregatorError("bad count %r" % (w,))
        return w


@register
class Histogram(Aggregator):
    """With range: value {key: [under, bin0, ..., bin(n-1), over]}.
    Without: value {key: {number: count}} (exact, binned at render)."""
    name = "histogram"

    def __init__(self, bins=10, range=None, column=0, width=40):
        bins, column, width = int(bins), int(column), int(width)
        if bins < 1 or column < 0 or width < 0:
            raise AggregatorError("histogram: bins must be >= 1, column and width >= 0")
        if range is not None:
            lo, hi = float(range[0]), float(range[1])
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise AggregatorError("histogram: range must be (lo, hi) with lo < hi")
            range = (lo, hi)
        self.bins, self.range, self.column, self.width = bins, range, column, width
        self.params = {"bins": bins, "range": range, "column": column, "width": width}

    @staticmethod
    def _index(x, lo, hi, bins):
        if hi == lo:
            return 0
        return min(int((x - lo) / (hi - lo) * bins), bins - 1)

    def map(self, member, data):
        out = {}
        for key, nums in _records(data):
            x = nums[self.column] if self.column < len(nums) else None
            if x is None:
                continue
            if self.range is None:
                c = out.setdefault(key, {})
                c[x] = c.get(x, 0) + 1
            else:
                lo, hi = self.range
                c = out.setdefault(key, [0] * (self.bins + 2))
                if x < lo:
                    c[0] += 1
                elif x > hi:
                    c[-1] += 1
                else:
                    c[1 + self._index(x, lo, hi, self.bins)] += 1
        return out

    def combine(self, values):
        out = {}
        for v in values:
            for key, c in v.items():
                if self.range is None:
                    o = out.setdefault(key, {})
                    for x, n in c.items():
                        o[x] = o.get(x, 0) + n
                else:
                    o = out.setdefault(key, [0] * (self.bins + 2))
                    for i, n in enumerate(c):
                        o[i] += n
        return out

    def _table(self, c):
        """[(label, count)] for one key."""
        if self.range is None:
            lo, hi = min(c), max(c)
            counts = [0] * (self.bins if hi > lo else 1)
            for x, n in c.items():
                counts[self._index(x, lo, hi, len(counts))] += n
            under = over = 0
        else:
            lo, hi = self.range
            under, counts, over = c[0], c[1:-1], c[-1]
        rows = []
        if under:
            rows.append(("< %s" % _fmt(lo), under))
        step = (hi - lo) / len(counts)
        for i, n in enumerate(counts):
            a, b = lo + i * step, (hi if i == len(counts) - 1 else lo + (i + 1) * step)
            rows.append(("[%s, %s%s" % (_fmt(a), _fmt(b), "]" if i == len(counts) - 1 else ")"), n))
        if over:
            rows.append(("> %s" % _fmt(hi), over))
        return rows

    def show(self, value):
        lines = []
        for key in _nsorted(value):
            rows = self._table(value[key])
            top = max(n for _, n in rows) or 1
            lw = max(len(l) for l, _ in rows)
            nw = max(len(str(n)) for _, n in rows)
            lines.append(key + "\n")
            for label, n in rows:
                bar = "#" * (round(n * self.width / top) if n else 0)
                lines.append(("  %-*s %*d %s" % (lw, label, nw, n, bar)).rstrip() + "\n")
        return "".join(lines).encode("utf-8", "surrogateescape")

    def to_wire(self, value):
        if self.range is None:
            return {k: [[x, n] for x, n in sorted(c.items())] for k, c in value.items()}
        return value

    def from_wire(self, w):
        if self.range is None:
            return {k: {x: n for x, n in pairs} for k, pairs in w.items()}
        if not all(isinstance(c, list) and len(c) == self.bins + 2 for c in w.values()):
            raise AggregatorError("histogram partial does not match bins=%d" % self.bins)
        return w


from . import textagg  # noqa: E402,F401  (grep, tail, topk: registered on import)
from . import fileagg  # noqa: E402,F401  (hash, signature: registered on import)
