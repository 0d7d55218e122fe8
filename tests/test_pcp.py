"""nine pcp (issue 16): files copied to real leaf servers under a tree of three levels of
muxes (6 leaves, fanout 2), the bytes checked on disk in each leaf's export directory;
faults named per host in the folded status (a destination that is a directory, a full
disk: a 1 MiB tmpfs, permissions the user lacks, a host killed in the middle of the
copy, a source that changes during it), never a partly written file under the final
name, and a re-run that finishes the job; -r -p; --reverse; the leaf's filectl; the
hash aggregator."""

import os
import signal
import stat
import subprocess
import sys

import pytest

from conftest import ENV_ROOT, ROOT
from nine.group import aggregate as A

NAMES = ["node%d" % i for i in range(1, 7)]


# --- the tree -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    yield from make_tree(tmp_path_factory, "pcp")


def make_tree(tmp_path_factory, name):
    """A local tree: 6 leaves exporting EXP/nodeN (with filectl), fanout 2, the root
    in this process (so the tests wait with gevent)."""
    from nine.launch import Topology, Tree
    exp = tmp_path_factory.mktemp(name) / "exp"
    topo = Topology([(n, "local") for n in NAMES], fanout=2, listen="127.0.0.1:0",
                    leaf_export=str(exp))
    t = Tree(topo)
    mounts = []
    try:
        root = t.start()
        srv = root.server.listen("127.0.0.1:0")
        t.addr = "127.0.0.1:%d" % srv.address[1]
        t.exp = exp
        t.mounts = mounts
        t.extra = []
        yield t
    finally:
        for m in reversed(mounts):
            subprocess.run(["umount", "-l", m])
        for p in t.extra:
            p.kill()
            p.wait()
        t.stop()


def nine(t, *args, env=None):
    """Run `nine ARGS` against the tree: (status, stdout, stderr)."""
    from gevent import subprocess as sp     # the root mux runs in this process's hub
    r = sp.run([sys.executable, "-m", "nine"] + list(args), env=env or ENV_ROOT,
               capture_output=True, timeout=180)
    return r.returncode, r.stdout.decode(), r.stderr.decode()


def start(t, *args):
    """`nine ARGS` in the background (a gevent Popen)."""
    from gevent import subprocess as sp
    return sp.Popen([sys.executable, "-m", "nine"] + list(args), env=ENV_ROOT,
                    stdout=sp.PIPE, stderr=sp.PIPE)


def wait_for(cond, timeout=60):
    import gevent
    for _ in range(int(timeout / 0.02)):
        if cond():
            return
        gevent.sleep(0.02)
    raise AssertionError("timed out waiting")


def leaf(t, name):
    """The Popen of leaf `name` (the tree starts its leaves first, in order)."""
    return t.procs[NAMES.index(name)][0]


def restart(t, name):
    """Start leaf `name` again on its address (its mux reconnects)."""
    from gevent import subprocess as sp
    from nine.netwait import wait_port
    addr = dict(t.levels[0])[name]
    p = sp.Popen([sys.executable, "-m", "nine", "serve", "-q", "--proc", "--host",
                  "--exec", "--export", str(t.exp / name), "--listen", addr], env=ENV_ROOT)
    t.extra.append(p)
    import gevent
    wait_port(addr, 20, sleep=gevent.sleep)


def _serves(t, name):
    """The root reaches leaf `name` again (its mux has reconnected)."""
    from nine.client import Client
    try:
        c = Client(t.addr)
    except OSError:
        return False
    try:
        c.stat("/nodes/%s/files" % name)
        return True
    except OSError:
        return False
    finally:
        c.close()


def tmpfiles(d):
    return sorted(n for n in os.listdir(d) if ".nine-" in n) if os.path.isdir(d) else []


def blob(n, seed):
    import random
    return random.Random(seed).randbytes(n)


# --- copies ------------------------------------------------------------------------------

def test_copy_verify_preserve(tree, tmp_path):
    """A file to every host (blocks of 256 KiB, 3 in flight, not a multiple of the
    block): the same bytes in every export, mode and time kept (-p), no temporary file
    left, and --verify's hash windows all agree."""
    src = tmp_path / "app.tar"
    src.write_bytes(blob(3 * 1024 * 1024 + 12345, 1))
    os.chmod(src, 0o640)
    os.utime(src, ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    rc, out, err = nine(tree, "pcp", "-a", tree.addr, "-p", "-b", "256K", "-k", "3",
                        "--verify", str(src), "srv/app.tar")
    assert (rc, out, err) == (0, "ok node[1-6] (6)\n", "")
    for n in NAMES:
        dst = tree.exp / n / "srv" / "app.tar"
        assert dst.read_bytes() == src.read_bytes(), n
        st = dst.stat()
        assert stat.S_IMODE(st.st_mode) == 0o640 and st.st_mtime_ns == 1_600_000_000_123_456_789
        assert tmpfiles(tree.exp / n / "srv") == []


@pytest.fixture(autouse=True)
def _srv_dirs(tree):
    for n in NAMES:
        (tree.exp / n / "srv").mkdir(exist_ok=True)


def test_without_p_new_files_take_the_umask_and_old_ones_keep_their_mode(tree, tmp_path):
    src = tmp_path / "conf"
    src.write_bytes(b"listen 80\n")
    os.chmod(src, 0o777)
    old = tree.exp / "node2" / "srv" / "conf"
    old.write_bytes(b"old\n")
    os.chmod(old, 0o600)
    rc, out, err = nine(tree, "pcp", "-a", tree.addr, "-q", str(src), "/srv/conf")
    # an absolute path is mapped through each host's exports file: /srv is not exported
    assert rc == 1 and out == "" and "(not exported)" in err
    rc, out, err = nine(tree, "pcp", "-a", tree.addr, str(src), "srv/conf")
    assert rc == 0, err
    umask = os.umask(0)
    os.umask(umask)
    for n in NAMES:
        f = tree.exp / n / "srv" / "conf"
        assert f.read_bytes() == b"listen 80\n"
        want = 0o600 if n == "node2" else 0o777 & ~umask
        assert stat.S_IMODE(f.stat().st_mode) == want, n


def test_faults_are_named_per_host_and_a_rerun_finishes(tree, tmp_path):
    """A directory at the destination (node2), a full disk (node3: 1 MiB tmpfs), a
    directory the user may not write (node4: the copy runs as nobody), an old file the
    user may not write without -f (node5); the others get the file; nothing partly
    written under the name, no temporary file left; after the faults are mended a re-run
    gives everyone the file."""
    src = tmp_path / "big.bin"
    src.write_bytes(blob(2 * 1024 * 1024 + 7, 2))
    for n in NAMES:
        d = tree.exp / n / "drop"
        d.mkdir()
        os.chmod(d, 0o777)
    (tree.exp / "node2" / "drop" / "big.bin").mkdir()
    full = tree.exp / "node3" / "drop"
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=1777", "tmpfs", str(full)],
                   check=True)
    tree.mounts.append(str(full))
    os.chmod(tree.exp / "node4" / "drop", 0o755)
    (tree.exp / "node5" / "drop" / "big.bin").write_bytes(b"old")
    os.chmod(tree.exp / "node5" / "drop" / "big.bin", 0o444)
    as_nobody = dict(ENV_ROOT, USER="nobody", LOGNAME="nobody")
    rc, out, err = nine(tree, "pcp", "-a", tree.addr, "-b", "512K", str(src),
                        "drop/big.bin", env=as_nobody)
    assert rc == 1
    assert out == "ok node[1,6] (2)\n"
    assert sorted(err.splitlines()) == sorted([
        "failed node2 (1): /drop/big.bin: Is a directory",
        "failed node3 (1): /drop/big.bin: No space left on device",
        "failed node4 (1): /drop/big.bin: Permission denied",
        "failed node5 (1): /drop/big.bin: Permission denied (-f replaces it)"]), err
    for n in ("node1", "node6"):
        assert (tree.exp / n / "drop" / "big.bin").read_bytes() == src.read_bytes()
        assert (tree.exp / n / "drop" / "big.bin").stat().st_uid == 65534
    assert (tree.exp / "node2" / "drop" / "big.bin").is_dir()
    assert not (tree.exp / "node3" / "drop" / "big.bin").exists()
    assert not (tree.exp / "node4" / "drop" / "big.bin").exists()
    assert (tree.exp / "node5" / "drop" / "big.bin").read_bytes() == b"old"
    for n in NAMES:
        assert tmpfiles(tree.exp / n / "drop") == [], n
    # mended: the directory removed, the disk larger, the permission given; -f for node5
    (tree.exp / "node2" / "drop" / "big.bin").rmdir()
    subprocess.run(["mount", "-o", "remount,size=8m", str(full)], check=True)
    os.chmod(tree.exp / "node4" / "drop", 0o777)
    rc, out, err = nine(tree, "pcp", "-a", tree.addr, "-f", "-w", "node[2-5]", str(src),
                        "drop/big.bin", env=as_nobody)
    assert (rc, out, err) == (0, "ok node[2-5] (4)\n", "")
    for n in NAMES:
        assert (tree.exp / n / "drop" / "big.bin").read_bytes() == src.read_bytes(), n


def test_source_that_changes_is_refused_everywhere(tree, tmp_path):
    src = tmp_path / "growing.log"
    src.write_bytes(blob(24 * 1024 * 1024, 3))
    p = start(tree, "pcp", "-a", tree.addr, "-b", "64K", "-k", "1", str(src), "srv/g.log")
    d = tree.exp / "node1" / "srv"
    wait_for(lambda: any(os.path.getsize(d / f) > 0 for f in tmpfiles(d)))
    with open(src, "ab") as f:
        f.write(b"one more line\n")
    out, err = p.communicate(timeout=120)
    assert p.returncode == 1
    assert err.decode() == "failed node[1-6] (6): /srv/g.log: the source changed during " \
                           "the copy\n"
    for n in NAMES:
        assert not (tree.exp / n / "srv" / "g.log").exists()
        assert tmpfiles(tree.exp / n / "srv") == [], n


def test_host_killed_mid_copy(tree, tmp_path):
    """node6's leaf is killed while the bytes flow: the others get the file, node6 is
    named, its old file stays; back on its address, a re-run for it (-w node6) sweeps
    the temporary file the dead copy left and finishes the job."""
    src = tmp_path / "image.bin"
    src.write_bytes(blob(32 * 1024 * 1024, 4))
    old = tree.exp / "node6" / "srv" / "image.bin"
    old.write_bytes(b"previous image")
    p = start(tree, "pcp", "-a", tree.addr, "-b", "128K", "-k", "2", str(src),
              "srv/image.bin")
    d = tree.exp / "node6" / "srv"
    wait_for(lambda: any(os.path.getsize(d / f) > 1 << 20 for f in tmpfiles(d)))
    leaf(tree, "node6").send_signal(signal.SIGKILL)
    try:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 1, err
        assert out.decode() == "ok node[1-5] (5)\n", err
        lines = err.decode().splitlines()
        assert len(lines) == 1 and lines[0].startswith("failed node6 (1): "), err
        for n in NAMES[:5]:
            assert (tree.exp / n / "srv" / "image.bin").read_bytes() == src.read_bytes(), n
            assert tmpfiles(tree.exp / n / "srv") == [], n
        assert old.read_bytes() == b"previous image"
        left = tmpfiles(d)
        assert len(left) == 1 and left[0].startswith(".image.bin.nine-tmp.")
    finally:
        restart(tree, "node6")      # the module's tree stays whole for the next tests
        wait_for(lambda: _serves(tree, "node6"))
    os.utime(d / left[0], (1, 1))                        # older than a copy in progress
    rc, out, err = nine(tree, "pcp", "-a", tree.addr, "-w", "node6", "--retry", "3",
                        str(src), "srv/image.bin")
    assert (rc, out, err) == (0, "ok node6 (1)\n", "")
    assert old.read_bytes() == src.read_bytes()
    assert tmpfiles(d) == []


def test_recursive_dest_dir_and_reverse(tree, tmp_path):
    """-r -p of a directory into --dest; then --reverse gathers one file from every
    host as DIR/NAME.HOST (each host's own bytes)."""
    top = tmp_path / "conf.d"
    (top / "sub" / "deeper").mkdir(parents=True)
    (top / "a.conf").write_bytes(b"a\n")
    (top / "sub" / "b.conf").write_bytes(blob(100_000, 5))
    (top / "sub" / "deeper" / "c").write_bytes(b"")
    os.chmod(top / "sub", 0o750)
    rc, out, err = nine(tree, "pcp", "-a", tree.addr, "-r", "-p", "--dest", "srv",
                        str(top))
    assert (rc, out, err) == (0, "ok node[1-6] (6)\n", "")
    for n in NAMES:
        base = tree.exp / n / "srv" / "conf.d"
        for rel in ("a.conf", "sub/b.conf", "sub/deeper/c"):
            assert (base / rel).read_bytes() == (top / rel).read_bytes(), (n, rel)
        assert stat.S_IMODE((base / "sub").stat().st_mode) == 0o750
    for i, n in enumerate(NAMES):
        (tree.exp / n / "srv" / "host.log").write_bytes(b"log of %s\n" % n.encode() * i)
    got = tmp_path / "gathered"
    rc, out, err = nine(tree, "pcp", "-a", tree.addr, "--reverse", "-x", "node3",
                        "srv/host.log", str(got))
    assert (rc, out, err) == (0, "ok node[1-2,4-6] (5)\n", "")
    assert sorted(os.listdir(got)) == ["host.log.%s" % n for n in NAMES if n != "node3"]
    for n in NAMES:
        if n != "node3":
            assert (got / ("host.log." + n)).read_bytes() == \
                (tree.exp / n / "srv" / "host.log").read_bytes()


def test_usage_errors(tree, tmp_path):
    rc, out, err = nine(tree, "pcp", "-a", tree.addr, str(tmp_path))
    assert rc == 2 and "give SRC... DEST" in err
    rc, out, err = nine(tree, "pcp", "-a", tree.addr, str(tmp_path), "srv/")
    assert rc == 2 and "is a directory (-r copies directories)" in err
    rc, out, err = nine(tree, "pcp", "-a", tree.addr, "-w", "nosuch", str(__file__),
                        "srv/x")
    assert rc == 1 and err == "failed nosuch (1): no such host\n"


# --- the leaf side ----------------------------------------------------------------------

def test_filectl_transactions(tree):
    """filectl through the tree: steps stop at their first failure, replies fold."""
    from nine.client import Client
    c = Client(tree.addr)
    try:
        for n in NAMES[:2]:
            (tree.exp / n / "srv" / "f").write_bytes(b"12345")
        f = c.open("nodes/node1/filectl", "r+")
        f.write(b"stat srv/f\nstat srv/none\n--\nmkdir srv/x/y 750\nrename srv/f srv/x\n"
                b"stat srv/f\n--\nbogus\n--\nsweep srv/f 0\nlist srv/x\n")
        f.seek(0)
        reply = f.read().decode().splitlines()
        f.close()
        assert reply[0].startswith("ok 5 ") and reply[0].endswith(" 100644 w")
        assert reply[1:] == ["ok absent", "--", "ok", "error EISDIR Is a directory: srv/x",
                             "--", "error EINVAL unknown command 'bogus'", "--", "ok 0",
                             "ok d:y"]
        for n in NAMES[:2]:
            (tree.exp / n / "srv" / "d2").mkdir(exist_ok=True)
            (tree.exp / n / "srv" / "d2" / "z").write_bytes(b"")
        g = c.gopen(None, "rw", aggregator="equiv",
                    members=[(n, "/nodes/%s/filectl" % n) for n in NAMES[:3]])
        g.write(b"list srv/d2\n")
        g.lseek(0)
        assert g.classes() == {b"ok f:z\n": {"node1", "node2"},
                               b"error ENOENT No such file or directory: srv/d2\n": {"node3"}}
        g.close()
    finally:
        c.close()


def test_hash_aggregator_folds_through_any_tree_shape():
    agg = A.get("hash")
    data = {"n%d" % i: b"same" if i % 3 else b"other" for i in range(1, 10)}

    def up(p):
        return agg.decode(agg.encode(p))
    flat = agg.merge([agg.leaf(m, d) for m, d in data.items()])
    ps = [up(agg.leaf(m, d)) for m, d in data.items()]
    while len(ps) > 1:
        ps = [up(agg.merge(ps[i:i + 2])) for i in range(0, len(ps), 2)]
    assert agg.render(flat) == agg.render(ps[0])
    import hashlib
    assert agg.render(flat).decode().splitlines() == [
        "4 %s: n[1-2,4-5,7-8] (6)" % hashlib.sha256(b"same").hexdigest(),
        "5 %s: n[3,6,9] (3)" % hashlib.sha256(b"other").hexdigest()]


def test_cmd_script_runs(tree, tmp_path):
    src = tmp_path / "s"
    src.write_bytes(b"x")
    from gevent import subprocess as sp
    r = sp.run([sys.executable, os.path.join(ROOT, "cmd", "nine-pcp"), "-a", tree.addr,
                "-w", "node1", str(src), "srv/s"], env=ENV_ROOT, capture_output=True,
               timeout=60)
    assert (r.returncode, r.stdout) == (0, b"ok node1 (1)\n")
