"""Independent 9P clients against nine: diod's C clients and p9fs (Python, all dialects)."""

import hashlib
import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest

from conftest import NineProc, free_port

needs_diod = pytest.mark.skipif(shutil.which("diodcat") is None,
                                reason="diod's clients are not installed (apt-get install diod)")


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, timeout=120, **kw)


@pytest.fixture
def big_export(tmp_path):
    d = tmp_path / "exp"
    d.mkdir()
    os.chmod(d, 0o755)
    data = os.urandom(3 << 20) + b"tail"
    (d / "big").write_bytes(data)
    (d / "small.txt").write_bytes(b"small file\n")
    (d / "dir").mkdir()
    for i in range(50):
        (d / "dir" / ("f%02d" % i)).write_bytes(b"%d\n" % i)
    os.symlink("small.txt", d / "link")
    return d


@pytest.fixture
def srv(big_export):
    # --no-auth: diod's clients authenticate with MUNGE only (tests/test_auth_munge.py),
    # p9fs not at all
    s = NineProc(["--no-auth", "--export", str(big_export), "--ctl"], free_port())
    yield s
    s.stop()


@needs_diod
def test_diodcat_reads_export_byte_for_byte(srv, big_export):
    for msize in ("8192", "65536", "1048576"):
        p = run(["diodcat", "-s", srv.addr, "-a", str(big_export), "-m", msize, "big"])
        assert p.returncode == 0, p.stderr
        assert hashlib.sha256(p.stdout).digest() == \
            hashlib.sha256((big_export / "big").read_bytes()).digest()
    p = run(["diodcat", "-s", srv.addr, "-a", str(big_export), "small.txt", "dir/f07"])
    assert p.stdout == b"small file\n7\n"
    p = run(["diodcat", "-s", srv.addr, "-a", str(big_export), "missing"])
    assert p.returncode != 0 and b"No such file" in p.stderr
    assert srv.alive()


@needs_diod
def test_diodls_lists_export(srv, big_export):
    p = run(["diodls", "-s", srv.addr, "-a", str(big_export), "/"])
    assert p.returncode == 0, p.stderr
    names = set(p.stdout.decode().split())
    assert {"big", "small.txt", "dir", "link"} <= names
    p = run(["diodls", "-s", srv.addr, "-a", str(big_export), "-l", "/dir"])
    assert p.returncode == 0, p.stderr
    lines = [l for l in p.stdout.decode().splitlines() if re.search(r" f\d\d$", l)]
    assert len(lines) == 50
    assert all(l.startswith("-rw") for l in lines)


@needs_diod
def test_diod_clients_on_ctl(srv):
    p = run(["diodls", "-s", srv.addr])
    assert p.returncode == 0, p.stderr
    assert {"null", "zero", "date", "version"} <= set(p.stdout.decode().split())
    p = run(["diodcat", "-s", srv.addr, "version"])
    assert p.stdout.startswith(b"nine-")
    p = run(["dioddate", "-s", srv.addr])
    assert p.returncode == 0 and re.search(r"\d\d:\d\d:\d\d \d{4}", p.stdout.decode()), p.stderr


@needs_diod
@pytest.mark.parametrize("getattr_", [False, True])
def test_diodload_runs_without_errors(srv, getattr_):
    cmd = ["diodload", "-s", srv.addr, "-r", "1", "-n", "4"] + (["-g"] if getattr_ else [])
    p = run(cmd)
    out = (p.stdout + p.stderr).decode()
    m = re.search(r"diodload: (\d+) ops/s, (\d+) rMB/s, (\d+) wMB/s", out)
    assert p.returncode == 0 and m, out
    assert "error" not in out.lower()
    assert int(m.group(1)) > 100
    if not getattr_:
        assert int(m.group(2)) > 0 and int(m.group(3)) > 0


# --- p9fs, an independent Python client, in its own virtual environment -------------
# (p9fs paths are relative to the attach root: it walks "/" as a name otherwise)

def p9fs_python():
    py = os.environ.get("NINE_P9FS_PYTHON")
    if py and os.path.exists(py):
        return py
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    py = os.path.join(here, ".venv-p9fs", "bin", "python")
    if not os.path.exists(py):
        subprocess.run([sys.executable, "-m", "venv", os.path.dirname(os.path.dirname(py))],
                       check=True)
        subprocess.run([py, "-m", "pip", "install", "-q", "p9fs"], check=True, timeout=600)
    return py


P9FS_SCRIPT = textwrap.dedent("""
    import sys, json
    from p9fs import P9FileSystem
    port, version = int(sys.argv[1]), sys.argv[2]
    fs = P9FileSystem(host="127.0.0.1", port=port, username="root", version=version)
    out = {}
    out["ls"] = sorted(e["name"].rstrip("/").rsplit("/", 1)[-1] for e in fs.ls("", detail=True))
    out["small"] = fs.cat_file("small.txt").decode()
    fs.mkdir("made_" + version)
    with fs.open("made_%s/w.txt" % version, "wb") as f:
        f.write(b"written by p9fs " + version.encode())
    out["back"] = fs.cat_file("made_%s/w.txt" % version).decode()
    out["info_size"] = fs.info("small.txt")["size"]
    out["isdir"] = fs.isdir("dir")
    fs.mv("made_%s/w.txt" % version, "made_%s/moved.txt" % version)
    out["after_mv"] = sorted(e.rsplit("/", 1)[-1] for e in fs.ls("made_" + version, detail=False))
    fs.rm("made_%s/moved.txt" % version)
    out["after_rm"] = fs.ls("made_" + version, detail=False)
    # p9fs removes a directory with Tunlinkat(flags 0) in .L, and knows a missing file
    # only by ENOENT or the words "file not found" (nine.server.realfs, conn)
    fs.mkdir("gone_" + version)
    fs.rmdir("gone_" + version)
    out["exists_missing"] = fs.exists("nope")
    try:
        fs.cat_file("nope")
        out["missing"] = "no error"
    except Exception as e:
        out["missing"] = type(e).__name__
    print(json.dumps(out))
""")


@pytest.mark.parametrize("version", ["9P2000", "9P2000.u", "9P2000.L"])
def test_p9fs_reads_and_writes(srv, big_export, version, tmp_path):
    import json
    script = tmp_path / "p9.py"
    script.write_text(P9FS_SCRIPT)
    p = subprocess.run([p9fs_python(), str(script), str(srv.port), version],
                       capture_output=True, timeout=120)
    assert p.returncode == 0, p.stderr.decode()
    out = json.loads(p.stdout)
    assert {"big", "small.txt", "dir", "link"} <= set(out["ls"])
    assert out["small"] == "small file\n"
    assert out["back"] == "written by p9fs " + version
    assert out["info_size"] == len("small file\n")
    assert out["isdir"] is True
    assert out["after_mv"] == ["moved.txt"]
    assert out["after_rm"] == []
    assert out["missing"] != "no error"
    assert out["exists_missing"] is False
    assert not (big_export / ("gone_" + version)).exists()
    # the writes landed on the host
    assert (big_export / ("made_" + version)).is_dir()
    assert not (big_export / ("made_" + version) / "moved.txt").exists()
    assert srv.alive()
