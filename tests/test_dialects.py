"""9P2000 and 9P2000.u over the wire (nine.server.dialect): directory reads of any sizes
list every entry exactly once, and .u hard links (Tcreate DMLINK with the target's fid
number, as the Linux client sends it) with the link count in the stat extension."""

import errno
import os
import random

import pytest

import nine.protocol as P
from conftest import RawConn, ThreadServer
from nine.server.realfs import RealFS

LEGACY = (P.V9P2000, P.V9P2000U)
N = 2000


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A directory of 2,000 entries whose stat records range from about 70 to 300
    bytes, and in .u a few symlinks with long targets (records of about 4 KiB)."""
    d = tmp_path_factory.mktemp("export")
    big = d / "big"
    big.mkdir()
    names = set()
    for i in range(N - 3):
        name = "%04d-%s" % (i, "x" * (i % 220))
        (big / name).write_bytes(b"")
        names.add(name)
    for i in range(3):
        name = "link-%d" % i
        os.symlink("t" * (4000 + i), big / name)
        names.add(name)
    (d / "a").write_bytes(b"shared\n")
    s = ThreadServer({None: RealFS(str(d)).attach})
    s.export = d
    s.names = names
    yield s
    s.stop()


def open_dir(srv, dialect, msize, name="big"):
    c = RawConn(srv.port, dialect=dialect)
    r = c.version(msize=msize)
    assert r.msize == msize
    c.rpc(P.Tattach(fid=1, afid=P.NOFID, uname="root", aname="", n_uname=0, tag=1))
    assert isinstance(c.rpc(P.Twalk(fid=1, newfid=2, wnames=[name], tag=1)), P.Rwalk)
    assert isinstance(c.rpc(P.Topen(fid=2, mode=P.OREAD, tag=1)), P.Ropen)
    return c


def read(c, offset, count):
    r = c.rpc(P.Tread(fid=2, offset=offset, count=count, tag=1))
    assert isinstance(r, P.Rread), r
    assert len(r.data) <= count
    return [s.name for s in P.unpack_stats(r.data, c.dialect)], len(r.data)


def list_with(c, counts, big=8192):
    """Read the whole directory with successive counts; an empty reply is the end only
    when a read with room for any record (big) says so too."""
    names, off = [], 0
    for count in counts:
        got, n = read(c, off, count)
        if not n:
            got, n = read(c, off, big)
            if not n:
                return names
        names += got
        off += n
    raise AssertionError("no end of directory")


def list_like_linux(c, buflen):
    """What the Linux client's v9fs_dir_readdir + p9_client_read do: fill a buffer of
    buflen bytes with Treads of the room left, stop at the first empty reply; the
    directory ends when a buffer gets nothing."""
    names, off = [], 0
    while True:
        filled = 0
        while filled < buflen:
            got, n = read(c, off + filled, buflen - filled)
            if not n:
                break
            names += got
            filled += n
        if not filled:
            return names
        off += filled


def forever(*values):
    while True:
        yield from values


@pytest.mark.parametrize("dialect", LEGACY)
@pytest.mark.parametrize("count", [8192, 131072 - 24])
def test_fixed_counts(tree, dialect, count):
    c = open_dir(tree, dialect, 131072)
    names = list_with(c, forever(count))
    assert len(names) == N and set(names) == tree.names


@pytest.mark.parametrize("dialect", LEGACY)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_small_counts(tree, dialect, seed):
    """Counts of 100 to 300 bytes: many records do not fit, each comes whole in a later
    read, none is lost or repeated."""
    rnd = random.Random(seed)
    c = open_dir(tree, dialect, 131072)
    names = list_with(c, iter(lambda: rnd.randint(100, 300), None))
    assert len(names) == N and set(names) == tree.names


@pytest.mark.parametrize("dialect", LEGACY)
@pytest.mark.parametrize("msize", [8192, 131072])
def test_the_linux_client_pattern(tree, dialect, msize):
    """The kernel's buffer of msize - 24 filled by several reads, the last one smaller
    than the next record: that one is answered empty, never an error."""
    c = open_dir(tree, dialect, msize)
    names = list_like_linux(c, msize - 24)
    assert len(names) == N and set(names) == tree.names


@pytest.mark.parametrize("dialect", LEGACY)
def test_offsets_after_an_empty_reply(tree, dialect):
    c = open_dir(tree, dialect, 8192)
    first, n = read(c, 0, 8192)
    assert first and n
    assert read(c, n, 10) == ([], 0)                  # too small for the next record
    r = c.rpc(P.Tread(fid=2, offset=n + 1, count=8192, tag=1))
    assert isinstance(r, P.Rerror)                    # neither 0 nor the previous end
    more, _ = read(c, n, 8192)                        # the record kept is the next one
    assert more and more[0] not in first
    again, _ = read(c, 0, 8192)                       # 0 starts over
    assert again == first


def test_record_larger_than_any_reply_is_skipped(tree):
    """In .u a symlink's record holds its target: at msize 1024 the 4 KiB ones fit no
    reply and are left out; the listing still ends with every other entry."""
    c = open_dir(tree, P.V9P2000U, 1024)
    names = list_like_linux(c, 1000)
    assert set(names) == {n for n in tree.names if not n.startswith("link-")}
    assert len(names) == N - 3


# --- hard links in .u ---------------------------------------------------------------------

def test_hard_link_by_fid_number(tree):
    """The Linux client's link(2) in .u: Tcreate(dir fid, name, DMLINK, OREAD, "%d\\n" of
    the target's fid); the stat extension then carries HARDLINKCOUNT, which the client
    makes the link count (as QEMU's server does)."""
    c = RawConn(tree.port, dialect=P.V9P2000U)
    c.version()
    c.rpc(P.Tattach(fid=1, afid=P.NOFID, uname="root", aname="", n_uname=0, tag=1))
    c.rpc(P.Twalk(fid=1, newfid=2, wnames=["a"], tag=1))
    assert c.rpc(P.Tstat(fid=2, tag=1)).stat.extension == "HARDLINKCOUNT 1"
    c.rpc(P.Twalk(fid=1, newfid=3, wnames=[], tag=1))
    r = c.rpc(P.Tcreate(fid=3, name="b", perm=P.DMLINK, mode=P.OREAD, extension="2\n", tag=1))
    assert isinstance(r, P.Rcreate), r
    assert os.path.samefile(tree.export / "a", tree.export / "b")
    assert c.rpc(P.Tstat(fid=2, tag=1)).stat.extension == "HARDLINKCOUNT 2"
    assert c.rpc(P.Tstat(fid=1, tag=1)).stat.extension.startswith("HARDLINKCOUNT ")
    # a directory read carries it too
    c.rpc(P.Twalk(fid=1, newfid=4, wnames=[], tag=1))
    c.rpc(P.Topen(fid=4, mode=P.OREAD, tag=1))
    data = c.rpc(P.Tread(fid=4, offset=0, count=8192, tag=1)).data
    ext = {s.name: s.extension for s in P.unpack_stats(data, P.V9P2000U)}
    assert ext["a"] == ext["b"] == "HARDLINKCOUNT 2"
    assert ext["big"].startswith("HARDLINKCOUNT ")
    # the fid named must exist
    c.rpc(P.Twalk(fid=1, newfid=5, wnames=[], tag=1))
    r = c.rpc(P.Tcreate(fid=5, name="c", perm=P.DMLINK, mode=P.OREAD, extension="99\n", tag=1))
    assert isinstance(r, P.Rerror) and r.errno == errno.EBADF
    os.unlink(tree.export / "b")


def test_plain_9p2000_has_no_extension(tree):
    c = RawConn(tree.port, dialect=P.V9P2000)
    c.version()
    c.rpc(P.Tattach(fid=1, afid=P.NOFID, uname="root", aname="", tag=1))
    c.rpc(P.Twalk(fid=1, newfid=2, wnames=["a"], tag=1))
    r = c.rpc(P.Tstat(fid=2, tag=1))
    assert isinstance(r, P.Rstat) and r.stat.name == "a"
