"""Group relays (nine.group.execute GroupOpen.relay, the `relay` file): every member
gets bytes of a source file that another host holds, copied as low in the tree as a
source lies, so that the bytes do not pass through the root (nine psync fills hosts
that lack a file from hosts of their subtree that have it).

Real 9P servers and muxes on loopback sockets (tests/test_group.py's build_tree), with
synthetic leaf files that record what is written to them.
"""

import errno

import pytest

from nine.client import Client, NineError

from test_group import File, build_tree, world  # noqa: F401  (world: a fixture)

BLOB = bytes((i * 7 + i // 251) & 0xFF for i in range(300 * 1024))


def relay_files(i, have, store):
    """Leaf i: `src` (BLOB where i is in have), `short` (the first KiB of BLOB),
    `dst` (written into store[i])."""
    store[i] = bytearray()

    def w(ctx, off, data, i=i):
        b = store[i]
        if len(b) < off:
            b.extend(bytes(off - len(b)))
        b[off:off + len(data)] = bytes(data)
        return len(data)
    fs = [File("dst", write=w, read=lambda ctx, i=i: bytes(store[i])),
          File("short", read=lambda ctx: BLOB[:1024])]
    if i in have:
        fs.append(File("src", read=lambda ctx: BLOB))
    return fs


def relay_all(g, size, window=64 * 1024):
    for off in range(0, size, window):
        g.lseek(off)
        g.relay(min(window, size - off))


def edge_bytes(t):
    """Bytes the root exchanged with its child muxes (both ways)."""
    return sum(c.link().conn.bytes_in + c.link().conn.bytes_out
               for c in t["root"].children.values())


def test_relay_is_done_below_the_root_where_a_source_is_near(world):
    store = {}
    # muxes of 4: mux0 = n0..n3, mux1 = n4..n7; sources n0 and n5
    t = world(lambda: build_tree({"n%d" % i: relay_files(i, {0, 5}, store)
                                  for i in range(8)}))
    c = Client(t["addr"])
    dests = [1, 2, 6, 7]
    g = c.gopen(None, "w", members=[("n%d" % i, "/nodes/n%d/dst" % i) for i in dests],
                sources=["/nodes/n0/src", "/nodes/n5/src"])
    assert g.served
    b0 = edge_bytes(t)
    relay_all(g, len(BLOB))
    moved = edge_bytes(t) - b0
    for i in dests:
        assert bytes(store[i]) == BLOB, i
    assert g.failed == {}
    # the root passed requests and replies only: not one copy of the bytes
    assert moved < len(BLOB) // 10, moved
    # the bytes crossed mux0's edge to its source leaf once per window read
    g.close()
    c.close()


def test_relay_goes_through_the_root_when_no_source_is_below(world):
    store = {}
    t = world(lambda: build_tree({"n%d" % i: relay_files(i, {5}, store)
                                  for i in range(8)}))
    c = Client(t["addr"])
    g = c.gopen(None, "w", members=[("n1", "/nodes/n1/dst"), ("n2", "/nodes/n2/dst")],
                sources=["/nodes/n5/src"])
    b0 = edge_bytes(t)
    relay_all(g, len(BLOB))
    moved = edge_bytes(t) - b0
    assert bytes(store[1]) == BLOB and bytes(store[2]) == BLOB
    # read once from mux1's subtree, written once into mux0's: two copies, not four
    assert 2 * len(BLOB) <= moved < 2.3 * len(BLOB), moved
    g.close()
    c.close()


def test_a_failing_source_is_passed_over_and_no_source_is_named(world):
    store = {}
    t = world(lambda: build_tree({"n%d" % i: relay_files(i, {3}, store)
                                  for i in range(8)}))
    c = Client(t["addr"])
    # the first source does not exist, the second is too short, the third has the bytes
    g = c.gopen(None, "w", members=[("n1", "/nodes/n1/dst"), ("n6", "/nodes/n6/dst")],
                sources=["/nodes/n0/src", "/nodes/n2/short", "/nodes/n3/src"])
    relay_all(g, len(BLOB))
    assert g.failed == {}
    assert bytes(store[1]) == BLOB and bytes(store[6]) == BLOB
    g.close()
    # no source holds the bytes: every member is named, with the reason
    g = c.gopen(None, "w", members=[("n1", "/nodes/n1/dst"), ("n6", "/nodes/n6/dst")],
                sources=["/nodes/n0/src", "/nodes/n2/short"])
    g.lseek(0)
    with pytest.raises(OSError) as ei:
        g.relay(4096)
    assert ei.value.errno == errno.EIO
    assert set(g.failed) == {"n1", "n6"}
    assert all("relay source" in r for r in g.failed.values()), g.failed
    # a relay without sources is refused before anything is sent
    h = c.gopen(None, "w", members=[("n1", "/nodes/n1/dst")])
    with pytest.raises(ValueError):
        h.relay(10)
    h.close()
    g.close()
    c.close()


def test_relay_file_refuses_bad_requests_and_readers(world):
    store = {}
    t = world(lambda: build_tree({"n%d" % i: relay_files(i, {0}, store)
                                  for i in range(4)}))
    c = Client(t["addr"])
    c.mkdir("/groups/r")
    c.symlink("../../nodes/n1/dst", "/groups/r/n1")
    c.write_file("/groups/r/ctl", b"source /nodes/n0/src\n")
    assert b"sources 1" in c.read_file("/groups/r/ctl")
    assert "relay" in c.listdir("/groups/r")
    for bad in (b"x y\n", b"1\n", b"-1 10\n", b"0 %d\n" % (1 << 30)):
        with pytest.raises(NineError) as ei:
            c.write_file("/groups/r/relay", bad)
        assert ei.value.errno == errno.EINVAL, bad
    with pytest.raises(NineError) as ei:
        c.read_file("/groups/r/relay")
    assert ei.value.errno == errno.EACCES
    # the shell's way: one write of OFFSET COUNT
    c.write_file("/groups/r/relay", b"0 1000\n")
    assert bytes(store[1]) == BLOB[:1000]
    assert "relay 1000 bytes at 0" in c.read_file("/groups/r/status").decode()
    c.write_file("/groups/r/ctl", b"source\n")
    assert b"sources" not in c.read_file("/groups/r/ctl")
    c.remove("/groups/r")
    c.close()


def test_relay_without_a_group_service_is_done_by_the_client(world):
    store = {}
    t = world(lambda: build_tree({"n%d" % i: relay_files(i, {0}, store)
                                  for i in range(4)}))
    c = Client(t["addr"])
    g = c.gopen(None, "w", members=[("n1", "/nodes/n1/dst"), ("n2", "/nodes/n2/dst")],
                sources=["/nodes/n3/nosuch", "/nodes/n0/src"], use_server=False)
    assert not g.served
    relay_all(g, len(BLOB))
    assert bytes(store[1]) == BLOB and bytes(store[2]) == BLOB
    g.close()
    c.close()
