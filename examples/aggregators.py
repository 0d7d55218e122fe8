"""Custom group aggregators: an example to load with `--aggregators examples/aggregators.py`
(nine serve, nine mux, nine tree: every server and mux of the tree loads the file, so
the aggregation runs at every level).

    longest     the longest line any member has, with the members that have it
                (params: strip=true to ignore surrounding blanks)

An aggregator is a class registered by name with four parts (nine.group.aggregate):
map (one member's bytes -> value), combine (values -> value, associative, run at every
mux), show (value -> the bytes the client reads), and to_wire/from_wire when the value
is not plain JSON.  Members and errors are carried for you.
"""

from nine.group.aggregate import Aggregator, register, fold, _fold_wire, _unfold_wire


@register
class Longest(Aggregator):
    """value: [length, line text, set of members]"""
    name = "longest"

    def __init__(self, strip=False):
        self.strip = bool(strip)
        self.params = {"strip": True} if strip else {}

    def map(self, member, data):
        lines = data.decode("utf-8", "replace").splitlines() or [""]
        if self.strip:
            lines = [l.strip() for l in lines]
        best = max(lines, key=len)
        return [len(best), best, {member}]

    def combine(self, values):
        top = max(v[0] for v in values)
        texts = sorted({v[1] for v in values if v[0] == top})
        members = set().union(*(v[2] for v in values if v[0] == top and v[1] == texts[0]))
        return [top, texts[0], members]

    def show(self, value):
        return ("%d %s: %s\n" % (value[0], fold(value[2]), value[1])).encode()

    def to_wire(self, value):
        return [value[0], value[1], _fold_wire(value[2])]

    def from_wire(self, w):
        return [int(w[0]), str(w[1]), _unfold_wire(w[2])]
