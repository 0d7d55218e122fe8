"""Aggregators for group reads (nine.group.aggregate): leaf/merge/render, tree shapes,
wire form, folding, errors, registry."""
import random

import pytest

from nine.group import aggregate as A
from nine.group import Aggregator, AggregatorError, UnknownAggregator, get, names, register


# -- helpers ---------------------------------------------------------------

def tree_merge(agg, partials, shape, rng=None, wire=True):
    """Merge partials in a given tree shape, passing each level through encode/decode."""
    def up(p):
        return agg.decode(agg.encode(p)) if wire else p
    ps = [up(p) for p in partials]
    if shape == "flat":
        return agg.merge(ps)
    if shape == "pairs":
        while len(ps) > 1:
            ps = [up(agg.merge(ps[i:i + 2])) for i in range(0, len(ps), 2)]
        return ps[0]
    if shape == "random":
        ps = list(ps)
        rng.shuffle(ps)
        while len(ps) > 1:
            out, i = [], 0
            while i < len(ps):
                k = rng.randint(1, 5)
                out.append(up(agg.merge(ps[i:i + k])))
                i += k
            ps = out
        return ps[0]
    raise ValueError(shape)


def all_shapes(agg, partials, seeds=(1, 2, 3)):
    renders = {agg.render(tree_merge(agg, partials, "flat", wire=False))}
    renders.add(agg.render(tree_merge(agg, partials, "flat")))
    renders.add(agg.render(tree_merge(agg, partials, "pairs")))
    for s in seeds:
        renders.add(agg.render(tree_merge(agg, partials, "random", random.Random(s))))
    assert len(renders) == 1, renders
    return renders.pop()


def load_data(i):
    # exact binary fractions so any summation order gives the same floats
    return b"load1 %s %d\nload5 %s\nname node%d\n" % (
        str(i * 0.25).encode(), i, str(i % 4 * 0.5).encode(), i)


MEMBERS = ["node%d" % i for i in range(1, 21)]


def leaves(agg, datafn=load_data, members=MEMBERS, failed=()):
    ps = [agg.leaf(m, datafn(int(m[4:]))) for m in members]
    ps += [agg.fail(m, r) for m, r in failed]
    return ps


# -- natural sort and folding ------------------------------------------------

def test_natural_sort_and_fold():
    assert sorted(["node10", "node2", "node1"], key=A.natural_key) == ["node1", "node2", "node10"]
    assert A.fold({"host1", "host2", "host3", "host4", "host7"}) == "host[1-4,7]"
    # names NodeSet cannot fold survive as a list on the wire
    odd = {"a,b", "c[d"}
    assert A._unfold_wire(A._fold_wire(odd)) == odd


# -- concat ------------------------------------------------------------------

def test_concat_labels_natural_order():
    agg = get("concat")
    ps = [agg.leaf("node10", b"a\nb\n"), agg.leaf("node2", b"c"), agg.leaf("node1", b"")]
    assert agg.render(agg.merge(ps)) == b"node2: c\nnode10: a\nnode10: b\n"
    agg = get("concat", header=True)
    ps = [agg.leaf("node10", b"a\n"), agg.leaf("node2", b"c")]
    assert agg.render(agg.merge(ps)) == b"== node2 ==\nc\n== node10 ==\na\n"


def test_concat_shapes_and_binary():
    agg = get("concat")
    ps = leaves(agg) + [agg.leaf("node99", b"\xff\xfe raw\n")]
    out = all_shapes(agg, ps)
    assert out.startswith(b"node1: load1 0.25 1\n")
    assert b"node99: \xff\xfe raw\n" in out
    p = agg.merge(ps)
    assert agg.decode(agg.encode(p)).value == p.value


# -- equiv and diff ------------------------------------------------------------

def test_equiv_render():
    agg = get("equiv")
    data = {"host1": b"a\n", "host2": b"a\n", "host3": b"a\n", "host4": b"a\n",
            "host7": b"a\n", "host5": b"b\n", "host6": b"c"}
    p = agg.merge([agg.leaf(m, d) for m, d in data.items()])
    assert agg.render(p) == (
        b"---------------\nhost[1-4,7] (5)\n---------------\na\n"
        b"---------------\nhost5 (1)\n---------------\nb\n"
        b"---------------\nhost6 (1)\n---------------\nc\n")
    assert set(p.value) == {b"a\n", b"b\n", b"c"}


def classes3(i):
    return [b"version 1\n", b"version 2\n", b"version 3\nextra\n"][0 if i % 10 else (1 if i % 20 else 2)]


def test_equiv_256_members_three_classes_and_wire_size():
    agg = get("equiv")
    members = ["node%d" % i for i in range(1, 257)]
    ps = leaves(agg, classes3, members)
    out = all_shapes(agg, ps)
    blocks = out.split(b"---------------\n")[1:]
    heads = blocks[0::2]
    assert len(heads) == 3
    assert heads[0].startswith(b"node[1-9,11-19,21-29,") and heads[0].endswith(b"(231)\n")
    assert heads[1] == b"node[10,30,50,70,90,110,130,150,170,190,210,230,250] (13)\n"
    assert heads[2] == b"node[20,40,60,80,100,120,140,160,180,200,220,240] (12)\n"

    # size follows classes, not members: 8 -> 256 members (32x) grows far less
    small = agg.encode(agg.merge(leaves(agg, lambda i: classes3(i * 10 if i > 6 else i),
                                        members[:8])))
    big = agg.encode(agg.merge(ps))
    assert len(agg.decode(small).value) == 3
    assert len(big) < 4 * len(small), (len(small), len(big))
    # contiguous members fold to a constant size
    one = agg.encode(agg.merge(leaves(agg, lambda i: b"same\n", members)))
    assert b"node[1-256]" in one and len(one) < 80


def test_diff_against_majority():
    agg = get("diff")
    data = {"n%d" % i: b"a\nb\nc\n" for i in range(1, 6)}
    data["n6"] = b"a\nB\nc\n"
    data["n7"] = b"a\nB\nc\n"
    data["n8"] = b"a\nb\n"
    ps = [agg.leaf(m, d) for m, d in data.items()] + [agg.fail("n9", "Host is down")]
    out = all_shapes(agg, ps)
    assert out == (
        b"---------------\nn[1-5] (5)\n---------------\na\nb\nc\n"
        b"---------------\nn[6-7] (2)\n---------------\n"
        b"--- n[1-5]\n+++ n[6-7]\n@@ -1,3 +1,3 @@\n a\n-b\n+B\n c\n"
        b"---------------\nn8 (1)\n---------------\n"
        b"--- n[1-5]\n+++ n8\n@@ -1,3 +1,2 @@\n a\n b\n-c\n"
        b"errors: n9: Host is down\n")


# -- numeric -------------------------------------------------------------------

@pytest.mark.parametrize("name,expect", [
    ("sum", b"load1 52.5 210\nload5 15\n"),
    ("min", b"load1 0.25 1\nload5 0\n"),
    ("max", b"load1 5 20\nload5 1.5\n"),
    ("mean", b"load1 2.625 10.5\nload5 0.75\n"),
])
def test_numeric(name, expect):
    agg = get(name)
    assert all_shapes(agg, leaves(agg)) == expect     # "name nodeN" lines are ignored


def test_numeric_ragged_and_non_numeric():
    agg = get("sum")
    ps = [agg.leaf("a", b"k 1 x 3\nk 1\nnan nan\n"), agg.leaf("b", b"k 1\n\nj 2 2\n")]
    assert agg.render(agg.merge(ps)) == b"j 2 2\nk 3 - 3\n"
    mean = get("mean")
    p = mean.merge([mean.leaf("a", b"t 1\n"), mean.leaf("b", b"t 2\n")])
    assert mean.render(mean.decode(mean.encode(p))) == b"t 1.5\n"


# -- count -----------------------------------------------------------------------

def test_count():
    agg = get("count")
    ps = leaves(agg) + [agg.fail("node30", "Host is down"), agg.fail("node31", "Host is down")]
    assert all_shapes(agg, ps) == b"20\nerrors: node[30-31]: Host is down\n"
    assert agg.render(agg.merge([])) == b""


# -- histogram --------------------------------------------------------------------

def test_histogram_range():
    agg = get("histogram", bins=4, range=(0, 2))
    out = all_shapes(agg, leaves(agg))
    lines = out.decode().splitlines()
    assert lines[0] == "load1"
    assert [l.split()[2] for l in lines[1:5]] == ["1", "2", "2", "3"]   # 0.25..2.0 in 4 bins
    assert lines[5].split()[:3] == [">", "2", "12"]
    assert lines[6] == "load5"
    assert [l.split()[2] for l in lines[7:11]] == ["5", "5", "5", "5"]


def test_histogram_auto():
    agg = get("histogram", bins=2)
    out = all_shapes(agg, leaves(agg))
    assert out.decode().splitlines()[:3] == [
        "load1",
        "  [0.25, 2.625) 10 " + "#" * 40,
        "  [2.625, 5]    10 " + "#" * 40,
    ]
    # distinct values only: 20 members with 4 distinct load5 values
    p = agg.merge(leaves(agg))
    assert len(p.value["load5"]) == 4
    # one distinct value: one bin
    agg = get("histogram")
    p = agg.merge([agg.leaf("a", b"k 3\n"), agg.leaf("b", b"k 3\n")])
    assert agg.render(p) == b"k\n  [3, 3] 2 " + b"#" * 40 + b"\n"


def test_histogram_bad_params():
    with pytest.raises(AggregatorError):
        get("histogram", bins=0)
    with pytest.raises(AggregatorError):
        get("histogram", range=(1, 1))
    a, b = get("histogram", bins=3, range=(0, 1)), get("histogram", bins=4, range=(0, 1))
    with pytest.raises(AggregatorError):
        b.decode(a.encode(a.leaf("x", b"k 0.5\n")))


# -- every aggregator: wire round trip, errors ------------------------------------

@pytest.mark.parametrize("name", ["concat", "equiv", "diff", "sum", "min", "max", "mean",
                                  "count", "histogram"])
def test_roundtrip_and_errors(name):
    agg = get(name)
    failed = [("node%d" % i, "Host is down") for i in (23, 25)] + [("node30", "Permission\ndenied")]
    ps = leaves(agg, failed=failed)
    p = agg.merge(ps)
    q = agg.decode(agg.encode(p))
    assert q.value == p.value and q.errors == p.errors
    out = all_shapes(agg, ps)
    assert out.endswith(b"errors: node[23,25]: Host is down\nerrors: node30: Permission denied\n")
    # only failures: errors alone
    only = agg.merge([agg.fail("node3", "Host is down"), agg.fail("node5", "Host is down")])
    assert agg.render(agg.decode(agg.encode(only))) == b"errors: node[3,5]: Host is down\n"
    with pytest.raises(AggregatorError):
        agg.decode(b"not json")
    with pytest.raises(AggregatorError):
        agg.decode(agg.encode(p).replace(b'"a":"%s"' % name.encode(), b'"a":"other"'))


# -- registry ----------------------------------------------------------------------

def test_registry():
    assert {"concat", "equiv", "diff", "sum", "min", "max", "mean", "count",
            "histogram"} <= set(names())
    with pytest.raises(UnknownAggregator, match="unknown aggregator 'nope'"):
        get("nope")
    with pytest.raises(TypeError):
        get("equiv", bogus=1)
    with pytest.raises(TypeError):
        register(object)

    class Other(Aggregator):
        name = "concat"
    with pytest.raises(ValueError):
        register(Other)


def test_custom_aggregator():
    @register
    class Longest(Aggregator):
        """The longest first line and who has it (ties: all of them)."""
        name = "test-longest"

        def __init__(self, strip=True):
            self.strip = strip
            self.params = {"strip": strip}

        def map(self, member, data):
            line = data.split(b"\n", 1)[0].decode()
            return [len(line), line, [member]]

        def combine(self, values):
            best = max(v[0] for v in values)
            win = [v for v in values if v[0] == best]
            line = min(v[1] for v in win)
            return [best, line, sorted({m for v in win if v[1] == line for m in v[2]})]

        def show(self, value):
            return ("%s: %s\n" % (A.fold(value[2]), value[1])).encode()

    assert "test-longest" in names()
    register(Longest)                    # registering the same class again is fine
    agg = get("test-longest", strip=False)
    assert isinstance(agg, Longest) and agg.params == {"strip": False}
    ps = [agg.leaf("n%d" % i, b"x" * (i % 5) + b"\nrest") for i in range(1, 21)]
    assert all_shapes(agg, ps) == b"n[4,9,14,19]: xxxx\n"
