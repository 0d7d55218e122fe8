"""The interop battery: guest checks (battery.sh), host-side setup and
verification of the exported directory, per-dialect combinations, and the
message audit.

A check NAME is the shell function ``check_NAME`` in ``battery.sh``; the host
may pre-create its inputs in ``EXPORT/NAME`` (``HOST_SETUP``) and inspect what
the guest left there after the boot (``HOST_VERIFY``).
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import socket
import stat
from pathlib import Path

from . import vm

HERE = Path(__file__).resolve().parent
BATTERY_SH = HERE / "battery.sh"

#: cache modes booted for each dialect (one boot per pair)
DIALECTS: dict[str, list[str]] = {
    "9p2000.L": ["none", "loose", "mmap"],
    "9p2000.u": ["none", "loose"],
    "9p2000": ["none", "loose"],
}

#: extra mount options per dialect.  The guest's root is to act as root on
#: the server in every dialect: .L and .u attach with n_uname=0, but plain
#: 9P2000 has only a user name, "nobody" unless uname= says otherwise.
#: NINE_VM_MOUNT_OPTS (comma-separated) is appended to every mount.
DIALECT_MOUNT_OPTS: dict[str, str] = {"9p2000": "uname=root"}

BIG_SIZE = 64 << 20
DD_SIZE = 8 << 20  # bytes dd copies at each msize


def check_names() -> list[str]:
    return re.findall(r"^check_([A-Za-z0-9_]+)\s*\(\)", BATTERY_SH.read_text(), re.M)


def combos() -> list[tuple[str, str]]:
    return [(d, c) for d, caches in DIALECTS.items() for c in caches]


# --------------------------------------------------------------------------
# message audit: an EOPNOTSUPP/ENOSYS reply to a request the kernel sent
# while running the battery means a POSIX operation is missing, except for:
#: Txattrwalk: the kernel probes security.capability on writes (ENODATA or
#: EOPNOTSUPP are both fine answers); Trenameat/Tunlinkat: tried first, the
#: kernel falls back to Trename/Tremove on EOPNOTSUPP.
TOLERATED_REQUESTS = {"Txattrwalk", "Trenameat", "Tunlinkat"}
AUDIT_ERRNOS = {errno.EOPNOTSUPP, errno.ENOSYS}


def audit(results) -> tuple[list[str], list[str]]:
    """(failures, notes) for [("dialect/cache", GuestResult)]: each request
    type answered EOPNOTSUPP/ENOSYS is a failure unless TOLERATED_REQUESTS
    lists it (then a note)."""
    failures, notes = [], []
    for dialect_cache, res in results:
        for e in res.errors:
            if e.errno not in AUDIT_ERRNOS:
                continue
            line = f"{dialect_cache}: {e.request} -> {e.errname} x{e.count} (during check {e.check})"
            if e.request in TOLERATED_REQUESTS:
                notes.append(line + " [tolerated: kernel falls back/probes]")
            else:
                failures.append(line)
    return failures, notes


# --------------------------------------------------------------------------
# host setup

def _write(p: Path, data: bytes | str, mode: int | None = None):
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data.encode() if isinstance(data, str) else data)
    if mode is not None:
        os.chmod(p, mode)


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def make_big(path: Path) -> Path:
    """64 MiB of random data (made once per session; exports hard-link it)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            for _ in range(BIG_SIZE >> 20):
                f.write(os.urandom(1 << 20))
        tmp.rename(path)
    return path


def _setup_data(d: Path, big: Path):
    d.mkdir(parents=True, exist_ok=True)
    try:
        os.link(big, d / "big.bin")
    except OSError:
        shutil.copyfile(big, d / "big.bin")
    data = (d / "big.bin").read_bytes()
    _write(d / "big.md5", _md5(data) + "\n")
    _write(d / "big8.md5", _md5(data[:DD_SIZE]) + "\n")


def _setup_ls(d: Path):
    for n in "abc":
        _write(d / n, n * 10)
    _write(d / "sub" / "inner", "inner\n")


def _setup_stat_types(d: Path):
    _write(d / "reg", "12345", 0o640)
    (d / "dir").mkdir()
    os.chmod(d / "dir", 0o751)
    os.symlink("reg", d / "lnk")
    os.mkfifo(d / "fifo")
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(d / "sock"))
    s.close()
    try:  # needs root; without, the guest check fails on the missing files
        os.mknod(d / "chr", 0o644 | stat.S_IFCHR, os.makedev(1, 3))
        os.mknod(d / "blk", 0o644 | stat.S_IFBLK, os.makedev(7, 0))
    except PermissionError:
        pass


def _setup_cat(d: Path):
    _write(d / "hello.txt", "hello from the host\n")
    text = "".join(f"line {i:06d} of the hundred kilobyte file\n" for i in range(2500)).encode()
    _write(d / "big.txt", text)
    _write(d / "big.md5", _md5(text) + "\n")
    _write(d / "big.at50000", text[50000:50010])


def _setup_find_2000(d: Path):
    for i in range(1000):
        _write(d / "tree" / "flat" / f"file-{i:04d}-{'x' * (i % 40)}", "")
    for j in range(10):
        for i in range(100):
            _write(d / "tree" / f"d{j:02d}" / f"f{i:03d}", str(i))


def _setup_ls_2000(d: Path):
    """flat/ with 2,000 files whose stat records run from about 60 to 160 bytes (more
    than 128 KiB in all), and names.md5, the md5 of their sorted names, one a line."""
    names = [f"file-{i:04d}-{'x' * (i % 100)}" for i in range(2000)]
    for n in names:
        _write(d / "flat" / n, "")
    _write(d / "names.md5", _md5("".join(n + "\n" for n in sorted(names)).encode()) + "\n")


def _setup_tar(d: Path):
    src = d / "src"
    _write(src / "hello.txt", "hello\n")
    _write(src / "empty", "")
    _write(src / "random.bin", os.urandom(1 << 20), 0o600)
    _write(src / "exec.sh", "#!/bin/sh\necho hi\n", 0o755)
    for j in range(3):
        for i in range(20):
            _write(src / f"sub{j}" / "deeper" / f"n{i}", f"{j} {i}\n" * (i + 1))


HOST_SETUP = {
    "data": None,  # special: needs the big file, see setup_export
    "ls": _setup_ls,
    "stat_types": _setup_stat_types,
    "cat": _setup_cat,
    "find_2000": _setup_find_2000,
    "ls_2000": _setup_ls_2000,
    "ls_2000_msize_8192": _setup_ls_2000,
    "tar": _setup_tar,
}


def setup_export(export: Path, big: Path, checks: list[str] | None = None):
    """Create the export directory with every check's inputs."""
    export.mkdir(parents=True, exist_ok=True)
    _setup_data(export / "data", big)
    for name, fn in HOST_SETUP.items():
        if fn and (checks is None or name in checks):
            fn(export / name)


# --------------------------------------------------------------------------
# host verification (after the boot)

def _read(p: Path) -> bytes:
    return p.read_bytes()


def _v_mknod(d: Path, dialect: str):
    names = ["fifo", "chr", "blk", "sock"]
    if dialect == "9p2000":
        present = [n for n in names if os.path.lexists(d / n)]
        assert not present, f"special files created in 9p2000: {present}"
        return
    st = {n: os.lstat(d / n) for n in names}
    assert stat.S_ISFIFO(st["fifo"].st_mode), "fifo is not a fifo on the host"
    assert stat.S_ISCHR(st["chr"].st_mode) and st["chr"].st_rdev == os.makedev(1, 3), "chr wrong on the host"
    assert stat.S_ISBLK(st["blk"].st_mode) and st["blk"].st_rdev == os.makedev(7, 0), "blk wrong on the host"
    assert stat.S_ISSOCK(st["sock"].st_mode), "sock is not a socket on the host"


def _v_echo(d: Path, dialect: str):
    assert _read(d / "f") == b"one\ntwo\n"
    assert _read(d / "g") == b"short\nx"


def _v_big_copy(d: Path, dialect: str):
    out = d / "out.bin"
    assert out.stat().st_size == BIG_SIZE, f"out.bin has {out.stat().st_size} bytes"
    assert _md5(_read(out)) == (d.parent / "data" / "big.md5").read_text().strip(), "out.bin differs from big.bin"


def _v_mkdir_rmdir(d: Path, dialect: str):
    assert (d / "a" / "b").is_dir()
    assert not (d / "a" / "b" / "c").exists()
    assert (d / "keep" / "x").is_dir()


def _v_mv(d: Path, dialect: str):
    assert _read(d / "d1" / "f1.moved") == b"one\n"
    assert _read(d / "d2" / "sub" / "g") == b"in-sub\n"
    assert _read(d / "dst") == b"new\n"
    for gone in ["src", "f1", "f1.renamed", "d1/sub", "xdev", "d1/xdev"]:
        assert not os.path.lexists(d / gone), f"{gone} still exists"


def _v_symlink(d: Path, dialect: str):
    if dialect == "9p2000":
        assert not os.path.lexists(d / "link")
        return
    assert os.readlink(d / "link") == "target.txt"
    assert os.readlink(d / "dangling") == "/nonexistent/path"


def _v_hardlink(d: Path, dialect: str):
    if dialect == "9p2000":
        assert not os.path.lexists(d / "b")
        return
    assert os.path.samefile(d / "a", d / "b"), "a and b are not one file on the host"
    assert os.stat(d / "a").st_nlink == 2, f"nlink {os.stat(d / 'a').st_nlink}"
    assert not os.path.lexists(d / "c")


def _v_chmod(d: Path, dialect: str):
    assert stat.S_IMODE(os.stat(d / "f").st_mode) == 0o640
    assert stat.S_IMODE(os.stat(d / "d").st_mode) == 0o751


def _v_chown(d: Path, dialect: str):
    st = os.stat(d / "f")
    if dialect == "9p2000":
        assert (st.st_uid, st.st_gid) != (1234, 5678), "9p2000 cannot carry numeric ids, yet owner changed"
        return
    assert (st.st_uid, st.st_gid) == (1234, 5678), f"owner {st.st_uid}:{st.st_gid} on the host"


def _v_touch_times(d: Path, dialect: str):
    assert int(os.stat(d / "f").st_mtime) == 981173106
    assert int(os.stat(d / "g").st_mtime) == 1296705906


def _v_truncate(d: Path, dialect: str):
    assert _read(d / "f") == b"hello"


def _v_unlink_open(d: Path, dialect: str):
    assert not os.path.lexists(d / "u")


def _v_pwrite(d: Path, dialect: str):
    data = _read(d / "f")
    chunk = 262144
    assert len(data) == 8 * chunk, f"size {len(data)}"
    for i in range(8):
        part = data[i * chunk:(i + 1) * chunk]
        assert part == bytes([65 + i]) * chunk, f"chunk {i} wrong on the host"


def _v_xattr(d: Path, dialect: str):
    if dialect != "9p2000.L":
        return
    assert os.getxattr(d / "f", "user.keep") == b"kept"
    assert "user.nine" not in os.listxattr(d / "f")


def _v_tar(d: Path, dialect: str):
    src, dst = d / "src", d / "dst" / "src"
    a = sorted(str(p.relative_to(src)) for p in src.rglob("*"))
    b = sorted(str(p.relative_to(dst)) for p in dst.rglob("*"))
    assert a == b, "extracted tree differs"
    for rel in a:
        p, q = src / rel, dst / rel
        if p.is_file():
            assert _read(p) == _read(q), f"{rel} differs"
            assert stat.S_IMODE(p.stat().st_mode) == stat.S_IMODE(q.stat().st_mode), f"{rel} mode differs"


def _v_dd(n):
    def verify(d: Path, dialect: str):
        out = _read(d / "out")
        assert len(out) == DD_SIZE, f"out has {len(out)} bytes"
        assert _md5(out) == (d.parent / "data" / "big8.md5").read_text().strip()
    return verify


HOST_VERIFY = {
    "mknod": _v_mknod,
    "echo": _v_echo,
    "big_copy": _v_big_copy,
    "mkdir_rmdir": _v_mkdir_rmdir,
    "mv": _v_mv,
    "symlink": _v_symlink,
    "hardlink": _v_hardlink,
    "chmod": _v_chmod,
    "chown": _v_chown,
    "touch_times": _v_touch_times,
    "truncate": _v_truncate,
    "unlink_open": _v_unlink_open,
    "pwrite_concurrent": _v_pwrite,
    "xattr": _v_xattr,
    "tar": _v_tar,
    **{f"dd_msize_{n}": _v_dd(n) for n in (8192, 65536, 524288, 1048576)},
}


def verify_host(check: str, export: Path, dialect: str):
    fn = HOST_VERIFY.get(check)
    if fn:
        fn(export / check, dialect)


# --------------------------------------------------------------------------

def run_battery(port: int, dialect: str, cache: str, aname: str = "", checks: list[str] | None = None,
                extra_opts: str = "", timeout: float = 600, log_path: Path | None = None,
                virtfs_export: Path | None = None, raw_trace: bool = False) -> vm.GuestResult:
    """One boot: mount with version=DIALECT,cache=CACHE and run the checks."""
    checks = checks or check_names()
    opts = f"version={dialect},cache={cache}"
    for extra in (DIALECT_MOUNT_OPTS.get(dialect), os.environ.get("NINE_VM_MOUNT_OPTS")):
        if extra:
            opts += "," + extra
    if aname:
        opts += f",aname={aname}"
    if extra_opts:
        opts += "," + extra_opts
    script = "".join(f"run_check {c}\n" for c in checks)
    return vm.run_guest(port, opts, script, lib=BATTERY_SH.read_text(), timeout=timeout,
                        env={"NINE_DIALECT": dialect, "NINE_CACHE": cache}, log_path=log_path,
                        virtfs_export=virtfs_export, raw_trace=raw_trace)


def main(argv=None):
    """python -m interop.battery [--dialect D] [--cache C] [--check NAME ...]:
    run combinations against NINE_VM_SERVER and print the results."""
    import argparse
    import tempfile
    import time

    from . import servers

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--dialect", action="append")
    ap.add_argument("--cache", action="append")
    ap.add_argument("--check", action="append")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("-v", action="store_true", help="print the console log")
    ap.add_argument("--raw-trace", action="store_true", help="print the text trace of the 9p tracepoints")
    ap.add_argument("--virtfs", action="store_true",
                    help="mount QEMU's own 9P server (virtio; .u/.L) instead of NINE_VM_SERVER")
    a = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="nine-battery-"))
    os.chmod(work, 0o755)  # servers that switch to the attaching user must reach the export
    big = make_big(work / "big.bin")
    t_all = time.monotonic()
    for dialect, cache in combos():
        if (a.dialect and dialect not in a.dialect) or (a.cache and cache not in a.cache):
            continue
        if a.virtfs:
            if dialect == "9p2000":
                print(f"== {dialect}/{cache}: QEMU's server does not implement {dialect}")
                continue
        elif dialect not in servers.server_dialects():
            print(f"== {dialect}/{cache}: server does not implement {dialect}")
            continue
        export = work / f"export-{dialect}-{cache}"
        setup_export(export, big)
        t0 = time.monotonic()
        if a.virtfs:
            res = run_battery(0, dialect, cache, checks=a.check, virtfs_export=export, raw_trace=a.raw_trace,
                              log_path=work / f"console-{dialect}-{cache}.log")
        else:
            with servers.start_server(export, work / f"server-{dialect}-{cache}.log") as srv:
                res = run_battery(srv.port, dialect, cache, aname=srv.aname, checks=a.check, raw_trace=a.raw_trace,
                                  log_path=work / f"console-{dialect}-{cache}.log")
        print(f"== {dialect}/{cache}: {res.summary()} (with setup {time.monotonic() - t0:.1f}s)")
        if a.v:
            print(res.console)
        elif a.raw_trace:
            print("\n".join(res.trace_lines))
        for name in a.check or check_names():
            r = res.checks.get(name)
            host = ""
            if r and r.passed:
                try:
                    verify_host(name, export, dialect)
                except Exception as e:  # noqa: BLE001
                    host = f" HOST-FAIL {type(e).__name__}: {e}"
            status = "MISSING" if r is None else ("PASS" if r.passed else "FAIL")
            print(f"  {name:22} {status:7} {r.seconds if r else 0:6.2f}s{host}")
            if r and not r.passed:
                print("      " + r.detail.replace("\n", "\n      "))
        fails, notes = audit([(f"{dialect}/{cache}", res)])
        for f in fails:
            print("  AUDIT FAIL " + f)
        for n in notes:
            print("  audit note " + n)
        print(f"  requests: {dict(res.requests)}")
        for w in res.warnings:
            print(f"  warning: {w}")
    print(f"total {time.monotonic() - t_all:.1f}s; work dir {work}")
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
