"""nine pcp (issue 16): files copied to real leaf servers under a tree of three levels of
muxes (6 leaves, fanout 2), the bytes checked on disk in each leaf's export directory;
faults named per host in the folded status (a destination that is a directory, a full
disk: a 1 MiB tmpfs, permissions the user lacks, a host killed in the middle of the
copy, a source that changes during it), never a partly written file under the final
name, and a re-run that finishes the job; -r -p; --reverse; the leaf's filectl; the
hash aggregator; --compress (zstd, lz4: fewer bytes out of the root, counted by the
root mux's own connections; the leaf's unpack/ and its errnos; a leaf without the
codec's package)."""

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
        t.root = root
        t.now = {}              # leaf name -> its Popen after a restart
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
    """The Popen of leaf `name` (the tree starts its leaves first, in order; restart()
    starts another)."""
    return t.now.get(name) or t.procs[NAMES.index(name)][0]


def restart(t, name, env=None):
    """Start leaf `name` again on its address (its mux reconnects)."""
    from gevent import subprocess as sp
    from nine.netwait import wait_port
    addr = dict(t.levels[0])[name]
    p = sp.Popen([sys.executable, "-m", "nine", "serve", "-q", "--proc", "--host",
                  "--exec", "--export", str(t.exp / name), "--listen", addr],
                 env=env or ENV_ROOT)
    t.extra.append(p)
    t.now[name] = p
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


# --- compression ----------------------------------------------------------------------

def logs(n, seed):
    """n bytes of text logs (compressible, as logs are: 3.9 to 1 with zstd)."""
    import random
    r = random.Random(seed)
    paths = ["/api/v1/items", "/api/v1/users", "/static/app.js", "/healthz", "/login"]
    out, size = [], 0
    while size < n:
        line = ("2026-12-07T20:%02d:%02d.%03d node%d app[%d]: %s %s%s status=%d "
                "bytes=%d ms=%d\n" % (r.randrange(60), r.randrange(60), r.randrange(1000),
                                      r.randrange(64), r.randrange(30000),
                                      r.choice(["GET", "GET", "POST"]), r.choice(paths),
                                      "/%d" % r.randrange(10 ** 6) if r.random() < .5 else "",
                                      r.choice([200, 200, 200, 304, 404]), r.randrange(99999),
                                      r.randrange(500))).encode()
        out.append(line)
        size += len(line)
    return b"".join(out)[:n]


def root_out(t):
    """Bytes the root mux has sent to its children (its own connection counters)."""
    return sum(c._link.conn.bytes_out for c in t.root.children.values()
               if c._link is not None)


def no_module(tmp_path, name):
    """An environment in which `import name` fails (a module of that name that raises
    ImportError first on the path): a host without that package."""
    d = tmp_path / ("no-" + name)
    d.mkdir(exist_ok=True)
    (d / (name + ".py")).write_text("raise ImportError('%s is not installed')\n" % name)
    return dict(ENV_ROOT, PYTHONPATH=str(d) + os.pathsep + ENV_ROOT["PYTHONPATH"])


def test_compress_fewer_bytes_through_the_root(tree, tmp_path):
    """A 6 MiB text log to every host with --compress zstd, then lz4, then none: the
    same bytes on every host each time (--verify too), and the root sends its children
    well under half the bytes packed that it sends unpacked (unpacked, every one of its
    2 children gets the whole file)."""
    src = tmp_path / "app.log"
    src.write_bytes(logs(6 * 1024 * 1024 + 999, 7))
    size = src.stat().st_size
    sent = {}
    for codec in ("zstd", "lz4", "none"):
        for n in NAMES:
            (tree.exp / n / "srv" / "app.log").unlink(missing_ok=True)
        before = root_out(tree)
        rc, out, err = nine(tree, "pcp", "-a", tree.addr, "-b", "512K", "-k", "3",
                            "--compress", codec, "--verify", str(src), "srv/app.log")
        sent[codec] = root_out(tree) - before
        assert (rc, out, err) == (0, "ok node[1-6] (6)\n", ""), codec
        for n in NAMES:
            assert (tree.exp / n / "srv" / "app.log").read_bytes() == src.read_bytes(), \
                (codec, n)
            assert tmpfiles(tree.exp / n / "srv") == [], (codec, n)
    assert len(tree.root.children) == 2
    assert sent["none"] > 2 * size, sent
    assert sent["zstd"] < 0.3 * sent["none"], sent
    assert sent["lz4"] < 0.5 * sent["none"], sent


def test_compress_usage_errors(tree, tmp_path):
    src = tmp_path / "x"
    src.write_bytes(b"x")
    rc, out, err = nine(tree, "pcp", "-a", tree.addr, "--compress", "brotli", str(src),
                        "srv/auto")
    assert rc == 2 and "--compress: brotli is not a codec (zstd, lz4, auto or none)" in err
    rc, out, err = nine(tree, "pcp", "-a", tree.addr, "--compress", "zstd", str(src),
                        "srv/auto", env=no_module(tmp_path, "zstandard"))
    assert (rc, out) == (2, "")
    assert err == "nine pcp: --compress zstd: the Python package zstandard is not " \
                  "installed here (pip install 'nine[compress]')\n", err
    # auto takes what there is
    rc, out, err = nine(tree, "pcp", "-a", tree.addr, "--compress", "auto", str(src),
                        "srv/auto", env=no_module(tmp_path, "zstandard"))
    assert (rc, out, err) == (0, "ok node[1-6] (6)\n", "")
    for n in NAMES:
        assert (tree.exp / n / "srv" / "auto").read_bytes() == b"x"


def _frame_file(c, names, rel):
    """rel made empty on each host by filectl (a temporary file as pcp's)."""
    for n in names:
        f = c.open("nodes/%s/filectl" % n, "r+")
        f.write(b"remove %s\ncreate %s 600\n" % (rel.encode(), rel.encode()))
        f.seek(0)
        assert f.read() == b"ok\nok\n"
        f.close()


def test_unpack_frames_and_their_errors(tree):
    """unpack/ through the tree: frames (split across writes, several in one write)
    land at their offsets; a corrupt frame is EBADMSG and ends the stream; an unknown
    codec is EPROTONOSUPPORT; a write where the stream is not is EINVAL; unpack/ opens
    for writing only and lists nothing; nothing is renamed."""
    import errno
    from nine.client import Client
    from nine.synth import filectl as F
    rel = "srv/.u.bin.nine-tmp.test"
    data = logs(300_000, 9)
    z, l4 = F.FrameEncoder("zstd"), F.FrameEncoder("lz4")
    c = Client(tree.addr)
    try:
        _frame_file(c, ["node1"], rel)
        stream = z.frame(0, data[:200_000]) + l4.frame(200_000, data[200_000:])
        assert len(stream) < len(data) // 3
        fid = c.walk("nodes/node1/unpack/" + rel)
        fid.lopen(os.O_WRONLY)
        at = 0
        for at in range(0, len(stream), 7777):          # pieces of frames
            assert fid.write(at, stream[at:at + 7777]) == len(stream[at:at + 7777])
        fid.clunk()
        dst = tree.exp / "node1" / rel
        assert dst.read_bytes() == data
        raw = F.frame_header(F.RAW, 10, 3, 3) + b"abc"
        bad = bytearray(z.frame(0, data[:50_000]))
        bad[-3] ^= 0xFF
        cases = [(bytes(bad), errno.EBADMSG),                          # its checksum
                 (raw[:-5] + b"x" + raw[-4:], errno.EBADMSG),          # the header's
                 (F.frame_header(9, 0, 3, 3) + b"abc", errno.EPROTONOSUPPORT),
                 (b"hello, this is not a frame", errno.EBADMSG),
                 (F.frame_header(F.RAW, 0, 17 << 20, 17 << 20), errno.EMSGSIZE)]
        for payload, eno in cases:
            fid = c.walk("nodes/node1/unpack/" + rel)
            fid.lopen(os.O_WRONLY)
            with pytest.raises(OSError) as ei:
                fid.write(0, payload)
            assert ei.value.errno == eno, payload[:30]
            with pytest.raises(OSError) as ei:                 # the stream has ended
                fid.write(len(payload), raw)
            assert ei.value.errno == eno
            fid.clunk()
        assert dst.read_bytes() == data                       # nothing written by them
        # the stream's own offsets: a write past a gap waits for it, one before fails
        fid = c.walk("nodes/node1/unpack/" + rel)
        fid.lopen(os.O_WRONLY)
        assert fid.write(len(raw), raw) == len(raw)           # ahead: kept
        assert fid.write(0, raw) == len(raw)                  # the gap filled: both run
        with pytest.raises(OSError) as ei:
            fid.write(0, raw)
        assert ei.value.errno == errno.EINVAL
        fid.clunk()
        assert dst.read_bytes()[:13] == data[:10] + b"abc"
        with pytest.raises(OSError) as ei:
            c.open("nodes/node1/unpack/" + rel, "r")
        assert ei.value.errno == errno.EACCES
        assert c.listdir("nodes/node1/unpack/srv") == []
        assert not (tree.exp / "node1" / "srv" / "u.bin").exists()
    finally:
        c.close()
        (tree.exp / "node1" / rel).unlink(missing_ok=True)


CORRUPT = """import sys
from nine.synth import filectl as F
frame = F.FrameEncoder.frame
def corrupt(self, offset, data):
    out = bytearray(frame(self, offset, data))
    out[-3] ^= 0x55                     # the payload's last bytes: its checksum
    return bytes(out)
F.FrameEncoder.frame = corrupt
from nine.tools import pcp
sys.exit(pcp.main(sys.argv[1:]))
"""


def test_corrupt_frames_fail_every_host_and_nothing_is_renamed(tree, tmp_path):
    """A client whose frames arrive corrupt: every host refuses them (EBADMSG, named
    in the status), no destination is replaced, no temporary file stays."""
    src = tmp_path / "c.log"
    src.write_bytes(logs(1 << 20, 11))
    for n in NAMES:
        (tree.exp / n / "srv" / "c.log").write_bytes(b"old")
    from gevent import subprocess as sp
    r = sp.run([sys.executable, "-c", CORRUPT, "-a", tree.addr, "-b", "256K",
                "--compress", "zstd", str(src), "srv/c.log"], env=ENV_ROOT,
               capture_output=True, timeout=120)
    err = r.stderr.decode()
    assert (r.returncode, r.stdout) == (1, b""), err
    assert err == "failed node[1-6] (6): /srv/c.log: Bad message (a corrupt zstd " \
                  "frame)\n", err
    for n in NAMES:
        assert (tree.exp / n / "srv" / "c.log").read_bytes() == b"old"
        assert tmpfiles(tree.exp / n / "srv") == [], n


def test_leaf_without_the_codec_gets_the_bytes_unpacked(tree, tmp_path):
    """node5 runs without zstandard: its unpack/ answers ENOPKG to a zstd frame, and
    pcp --compress zstd sends it the bytes as they are (named on stderr) while the others
    get frames; every copy is the source's bytes."""
    import errno
    from nine.client import Client
    from nine.synth import filectl as F
    leaf(tree, "node5").kill()
    leaf(tree, "node5").wait()
    restart(tree, "node5", env=no_module(tmp_path, "zstandard"))
    try:
        wait_for(lambda: _serves(tree, "node5"))
        c = Client(tree.addr)
        try:
            rel = "srv/.z.nine-tmp.test"
            _frame_file(c, ["node5"], rel)
            f = c.open("nodes/node5/filectl", "r+")
            f.write(b"codecs\n")
            f.seek(0)
            assert f.read() == b"ok lz4\n"
            f.close()
            fid = c.walk("nodes/node5/unpack/" + rel)
            fid.lopen(os.O_WRONLY)
            with pytest.raises(OSError) as ei:
                fid.write(0, F.FrameEncoder("zstd").frame(0, b"x" * 1000))
            assert ei.value.errno == errno.ENOPKG
            fid.clunk()
        finally:
            c.close()
            (tree.exp / "node5" / rel).unlink(missing_ok=True)
        src = tmp_path / "m.log"
        src.write_bytes(logs(2 * 1024 * 1024, 12))
        rc, out, err = nine(tree, "pcp", "-a", tree.addr, "--compress", "zstd",
                            "--verify", str(src), "srv/m.log")
        assert (rc, out, err) == (0, "ok node[1-6] (6)\n",
                                  "uncompressed node5 (1): no zstd there\n")
        for n in NAMES:
            assert (tree.exp / n / "srv" / "m.log").read_bytes() == src.read_bytes(), n
    finally:
        leaf(tree, "node5").kill()
        leaf(tree, "node5").wait()
        restart(tree, "node5")
        wait_for(lambda: _serves(tree, "node5"))


def test_a_host_failing_inside_a_large_block_costs_the_others_nothing(tree, tmp_path):
    """Blocks of 4 MiB (many messages each) while node3's disk fills (a 1 MiB tmpfs)
    inside the first one: a group write cut short by one member's failure is sent again
    to the others, so every other host gets every byte, packed or not."""
    full = tree.exp / "node3" / "big"
    for n in NAMES:
        (tree.exp / n / "big").mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=1777", "tmpfs", str(full)],
                   check=True)
    tree.mounts.append(str(full))
    src = tmp_path / "big.log"
    src.write_bytes(blob(3 << 20, 21) + logs(7 << 20, 22))
    for codec in ("none", "zstd"):
        rc, out, err = nine(tree, "pcp", "-a", tree.addr, "-b", "4M", "-k", "2",
                            "--compress", codec, str(src), "big/big.log")
        assert (rc, out) == (1, "ok node[1-2,4-6] (5)\n"), (codec, err)
        assert err == "failed node3 (1): /big/big.log: No space left on device\n", err
        for n in NAMES:
            if n != "node3":
                assert (tree.exp / n / "big" / "big.log").read_bytes() == \
                    src.read_bytes(), (codec, n)
                (tree.exp / n / "big" / "big.log").unlink()
            assert tmpfiles(tree.exp / n / "big") == [], (codec, n)
