"""nine psync (issue 16): rsync to real leaf servers under a tree of three levels of
muxes (6 leaves, fanout 2): three older versions and two hosts without the file get one
delta per version and the whole file, classes folded in --stats and --dry-run; the
bytes checked on disk in each leaf's export; -c, -W, -a --delete on a directory, a full
disk; the signature aggregator against librsync's own signature."""

import io
import os
import random
import stat
import subprocess

import pytest

from nine.group import aggregate as A
from nine.group.fileagg import signature_header
from test_pcp import NAMES, make_tree, nine, tmpfiles

pytest.importorskip("pyrsync")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    yield from make_tree(tmp_path_factory, "psync")


def psync(t, *args):
    return nine(t, "psync", "--addr", t.addr, *args)


def mutate(data, seed, frac=0.01):
    """data with about frac of it rewritten, in 10 places."""
    r = random.Random(seed)
    b = bytearray(data)
    for _ in range(10):
        n = int(len(b) * frac / 10)
        off = r.randrange(len(b) - n)
        b[off:off + n] = r.randbytes(n)
    return bytes(b)


def test_one_delta_per_version(tree, tmp_path):
    base = random.Random(7).randbytes(6 * 1024 * 1024 + 333)
    new = mutate(base, 100)
    src = tmp_path / "app.bin"
    src.write_bytes(new)
    olds = {"node1": mutate(base, 1), "node2": mutate(base, 2), "node3": base,
            "node4": mutate(base, 1)}
    for n, data in olds.items():
        (tree.exp / n / "app.bin").write_bytes(data)
    rc, out, err = psync(tree, "-n", "--stats", str(src), "app.bin")
    assert rc == 0 and err == "", err
    lines = out.splitlines()
    assert "whole file: node[5-6] (2)" in lines
    deltas = sorted(l for l in lines if l.startswith("delta "))
    assert len(deltas) == 3, out
    assert [l.split(": ")[1] for l in deltas if l.endswith("(2)")] == ["node[1,4] (2)"]
    for n, data in olds.items():                          # a dry run changes nothing
        assert (tree.exp / n / "app.bin").read_bytes() == data
    assert sent_kib(out) < 1024                           # the 3 deltas, no whole file
    rc, out, err = psync(tree, "--stats", str(src), "app.bin")
    assert rc == 0 and err == "", err
    assert out.splitlines()[-1] == "ok node[1-6] (6)"
    # node5 and node6 got the file from the patched hosts, inside the tree: only the
    # deltas left this machine
    assert sent_kib(out) < 1024, out
    assert "copied inside the tree from hosts that have it: 6 MiB to node[5-6] (2)" in \
        out.splitlines(), out
    for n in NAMES:
        assert (tree.exp / n / "app.bin").read_bytes() == new, n
        assert tmpfiles(tree.exp / n) == [], n
    rc, out, err = psync(tree, "--stats", str(src), "app.bin")
    assert out.splitlines()[0] == "up to date: node[1-6] (6)"
    # --no-relay: the whole file is sent from here
    for n in ("node5", "node6"):
        (tree.exp / n / "app.bin").unlink()
    rc, out, err = psync(tree, "--stats", "--no-relay", str(src), "app.bin")
    assert rc == 0 and err == "", err
    assert sent_kib(out) >= 6 * 1024 and "copied inside" not in out, out
    for n in NAMES:
        assert (tree.exp / n / "app.bin").read_bytes() == new, n


def sent_kib(out):
    """The KiB of psync --stats' `sent to the root` line."""
    words = [l for l in out.splitlines() if l.startswith("sent to the root: ")][0].split()
    return float(words[4]) * {"B": 1 / 1024, "KiB": 1, "MiB": 1024, "GiB": 1 << 20}[words[5]]


def test_a_copy_from_a_host_is_checked_before_it_is_renamed(tree, tmp_path):
    """A host found up to date by size and time (rsync's quick check) may hold other
    bytes: a copy made from it inside the tree fails the sha256 check, and the host
    that lacked the file is sent it from here instead; nothing else changes."""
    new = random.Random(21).randbytes(300_000)
    src = tmp_path / "q.bin"
    src.write_bytes(new)
    st = src.stat()
    wrong = bytearray(new)
    wrong[1000:1010] = b"X" * 10                  # the same size and time, other bytes
    for n in NAMES:
        p = tree.exp / n / "q.bin"
        if n == "node2":
            continue                              # node2 lacks it
        p.write_bytes(new if n != "node1" else bytes(wrong))
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    # node1 is the only source in node2's subtree: its copy is refused by the check
    rc, out, err = psync(tree, "--stats", str(src), "q.bin")
    assert rc == 0 and err == "", err
    assert (tree.exp / "node2" / "q.bin").read_bytes() == new
    assert "copied inside" not in out and sent_kib(out) >= len(new) / 1024, out
    assert (tree.exp / "node1" / "q.bin").read_bytes() == bytes(wrong)  # quick check
    assert tmpfiles(tree.exp / "node2") == []


def test_checksum_whole_file_and_times(tree, tmp_path):
    """Same size and time but other bytes: up to date by the quick check, a delta with
    -c; -W sends whole files; -t gives the source's time."""
    src = tmp_path / "c.bin"
    src.write_bytes(b"A" * 100_000)
    rc, out, err = psync(tree, "-t", str(src), "c.bin")
    assert rc == 0, err
    f = tree.exp / "node2" / "c.bin"
    st = f.stat()
    f.write_bytes(b"B" + b"A" * 99_999)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    rc, out, err = psync(tree, "-n", "--stats", str(src), "c.bin")
    assert out.splitlines()[0] == "up to date: node[1-6] (6)"
    rc, out, err = psync(tree, "-c", "-t", "--stats", str(src), "c.bin")
    assert out.splitlines()[:2] == ["up to date: node[1,3-6] (5)"] + \
        [l for l in out.splitlines() if l.startswith("delta ")], out
    assert f.read_bytes() == src.read_bytes() and f.stat().st_mtime_ns == \
        src.stat().st_mtime_ns
    rc, out, err = psync(tree, "-W", "-c", "-n", "--stats", str(src), "c.bin")
    assert out.splitlines()[0] == "up to date: node[1-6] (6)"
    src.write_bytes(b"C" * 100_000)
    rc, out, err = psync(tree, "-W", "--stats", str(src), "c.bin")
    assert out.splitlines()[0] == "whole file: node[1-6] (6)", out
    for n in NAMES:
        assert (tree.exp / n / "c.bin").read_bytes() == b"C" * 100_000


def test_archive_delete_directory(tree, tmp_path):
    top = tmp_path / "site"
    (top / "img").mkdir(parents=True)
    (top / "index.html").write_bytes(b"<html>v2</html>\n")
    (top / "img" / "logo.png").write_bytes(random.Random(3).randbytes(200_000))
    os.chmod(top / "index.html", 0o604)
    for n in NAMES[:3]:
        d = tree.exp / n / "www"
        (d / "old" / "deep").mkdir(parents=True)
        (d / "old" / "deep" / "x").write_bytes(b"x")
        (d / "stale.txt").write_bytes(b"stale")
        (d / "index.html").write_bytes(b"<html>v1</html>\n")
    rc, out, err = psync(tree, "-a", "--delete", str(top) + "/", "www/")
    assert (rc, out, err) == (0, "ok node[1-6] (6)\n", "")
    for n in NAMES:
        d = tree.exp / n / "www"
        assert sorted(os.listdir(d)) == ["img", "index.html"], n
        assert (d / "index.html").read_bytes() == b"<html>v2</html>\n"
        assert stat.S_IMODE((d / "index.html").stat().st_mode) == 0o604
        assert (d / "index.html").stat().st_mtime_ns == (top / "index.html").stat().st_mtime_ns
        assert (d / "img" / "logo.png").read_bytes() == (top / "img" / "logo.png").read_bytes()


def test_full_disk_keeps_the_old_file(tree, tmp_path):
    full = tree.exp / "node4" / "small"
    for n in NAMES:
        (tree.exp / n / "small").mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(full)], check=True)
    tree.mounts.append(str(full))
    old = random.Random(4).randbytes(600_000)
    for n in NAMES:
        (tree.exp / n / "small" / "f").write_bytes(old)
    new = mutate(old, 5, frac=0.5)
    src = tmp_path / "f"
    src.write_bytes(new)
    rc, out, err = psync(tree, str(src), "small/f")
    assert rc == 1 and out == "ok node[1-3,5-6] (5)\n"
    assert err == "failed node4 (1): /small/f: No space left on device\n"
    assert (full / "f").read_bytes() == old and tmpfiles(full) == []
    for n in NAMES:
        if n != "node4":
            assert (tree.exp / n / "small" / "f").read_bytes() == new


def test_signature_windows_concatenate_to_librsync():
    import pyrsync
    data = random.Random(9).randbytes(3 * (1 << 20) + 5000)
    agg = A.get("signature", block=4096, strong=16)
    body = b"".join(next(iter(agg.map("h", data[k:k + (1 << 20)])))
                    for k in range(0, len(data), 1 << 20))
    out = io.BytesIO()
    pyrsync.signature(io.BytesIO(data), out, 16, pyrsync.RS_RK_BLAKE2_SIG_MAGIC, 4096)
    assert signature_header(4096, 16) + body == out.getvalue()
    p = agg.merge([agg.leaf("a", data[:1 << 20]), agg.leaf("b", data[:1 << 20]),
                   agg.leaf("c", b"x")])
    q = agg.decode(agg.encode(p))
    assert sorted(map(sorted, q.value.values())) == [["a", "b"], ["c"]]
