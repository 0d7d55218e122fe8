"""Path escapes over the wire: nothing outside the export is ever read or written."""

import errno
import os

import pytest

import nine.protocol as P
from conftest import NineProc, RawConn, free_port


@pytest.fixture
def jail(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret\n")
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "ok").write_bytes(b"ok\n")
    (exp / "d").mkdir()
    os.symlink(str(outside), exp / "abs")                 # absolute, out
    os.symlink("../outside", exp / "rel")                  # relative, out
    os.symlink("../../outside/secret", exp / "d" / "deep")  # relative from a subdir
    os.symlink("ok", exp / "inside")                       # stays inside
    s = NineProc(["--export", str(exp)], free_port())
    s.exp, s.outside = exp, outside
    yield s
    s.stop()


def conn(s):
    c = RawConn(s.port)
    c.version()
    assert isinstance(c.attach(fid=0), P.Rattach)
    return c


def walk(c, names, newfid=1):
    return c.rpc(P.Twalk(fid=0, newfid=newfid, wnames=names, tag=1))


def test_dotdot_stays_at_root(jail):
    c = conn(jail)
    root = c.rpc(P.Tgetattr(fid=0, request_mask=1, tag=1)).qid
    r = walk(c, ["..", "..", ".."])
    assert isinstance(r, P.Rwalk) and r.wqids[-1] == root
    r = walk(c, ["..", "outside", "secret"], newfid=2)
    assert isinstance(r, P.Rwalk) and len(r.wqids) == 1  # stops after '..' = root


@pytest.mark.parametrize("link", ["abs", "rel"])
def test_symlinks_out_are_not_followed(jail, link):
    c = conn(jail)
    r = walk(c, [link, "secret"])
    # the walk reaches the symlink itself and no further
    assert isinstance(r, P.Rwalk) and len(r.wqids) == 1 and r.wqids[0].type & P.QTSYMLINK
    r = walk(c, [link], newfid=2)
    r = c.rpc(P.Tlopen(fid=2, flags=P.L_O_RDONLY, tag=1))
    assert isinstance(r, P.Rlerror) and r.ecode in (errno.ELOOP, errno.EXDEV, errno.EACCES)
    r = c.rpc(P.Treadlink(fid=2, tag=1))
    assert isinstance(r, P.Rreadlink)  # reading the link text is fine


def test_deep_relative_link_and_create_through_link(jail):
    c = conn(jail)
    walk(c, ["d", "deep"], newfid=1)
    r = c.rpc(P.Tlopen(fid=1, flags=P.L_O_RDONLY, tag=1))
    assert isinstance(r, P.Rlerror)
    walk(c, ["abs"], newfid=2)
    r = c.rpc(P.Tlcreate(fid=2, name="planted", flags=P.L_O_WRONLY, mode=0o644, gid=0, tag=1))
    assert isinstance(r, P.Rlerror)
    r = c.rpc(P.Tmkdir(dfid=2, name="planted_dir", mode=0o755, gid=0, tag=1))
    assert isinstance(r, P.Rlerror)
    assert sorted(os.listdir(jail.outside)) == ["secret"]


@pytest.mark.parametrize("name", ["..", ".", "a/b", "../escape", ""])
def test_bad_names_in_create_rename_unlink(jail, name):
    c = conn(jail)
    walk(c, [], newfid=1)
    r = c.rpc(P.Tlcreate(fid=1, name=name, flags=P.L_O_WRONLY, mode=0o644, gid=0, tag=1))
    assert isinstance(r, P.Rlerror)
    walk(c, [], newfid=2)
    r = c.rpc(P.Tmkdir(dfid=2, name=name, mode=0o755, gid=0, tag=1))
    assert isinstance(r, P.Rlerror)
    r = c.rpc(P.Trenameat(olddirfid=2, oldname="ok", newdirfid=2, newname=name, tag=1))
    assert isinstance(r, P.Rlerror)
    r = c.rpc(P.Tunlinkat(dirfid=2, name=name, flags=0, tag=1))
    assert isinstance(r, P.Rlerror)
    r = c.rpc(P.Tsymlink(fid=2, name=name, symtgt="/etc/passwd", gid=0, tag=1))
    assert isinstance(r, P.Rlerror)
    assert (jail.exp / "ok").read_bytes() == b"ok\n"
    assert sorted(os.listdir(jail.outside)) == ["secret"]
    assert not (jail.exp.parent / "escape").exists()


def test_walk_names_with_slash_are_refused(jail):
    c = conn(jail)
    r = walk(c, ["../outside"])
    assert isinstance(r, P.Rlerror)
    r = walk(c, ["d/../../outside"])
    assert isinstance(r, P.Rlerror)


def test_inside_symlink_is_readable_by_the_client(jail):
    c = conn(jail)
    walk(c, ["inside"], newfid=1)
    r = c.rpc(P.Treadlink(fid=1, tag=1))
    assert r.target == "ok"
