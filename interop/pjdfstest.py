"""pjdfstest through the Linux kernel 9P client (v9fs in a QEMU/TCG guest).

The guest is the one of interop/vm.py (Debian kernel, busybox initramfs) with
this machine's root filesystem added read-only through QEMU's own virtio-9p
export (``-virtfs local,path=/,mount_tag=hostroot,readonly=on``): the guest
mounts it on /host, mounts proc, sys, dev and tmpfs /run and /tmp in it,
bind-mounts the pjdfstest build to /run/pjd and the server under test (the
9P mount on /mnt, made by the initramfs) to /run/mnt, then chroots to /host
and runs ``prove -r -f`` of pjdfstest's tests from /run/mnt, as root.  So perl
and prove come from this machine, and nothing is downloaded into the guest.

pjdfstest (https://github.com/pjd/pjdfstest) is not in this repository: give
its source (a checkout, or a bare git directory) once with ``--source``; it is
built (autoreconf, configure, make; needs autoconf, automake, gcc) into the
cache directory (default ``~/.cache/nine-vm/pjdfstest``, or ``--build DIR``)
and reused after.

    python3 -m interop.pjdfstest --source ~/src/pjdfstest            # build + run nine
    python3 -m interop.pjdfstest --server nine --server diod          # both, reuse build
    python3 -m interop.pjdfstest --tests chmod,open --log /tmp/pjd.txt
    python3 -m interop.pjdfstest --tests quick                        # QUICK below
    python3 -m interop.pjdfstest --tests chown --serve-opt=--trust-client-groups

``--tests`` takes directories of pjdfstest's tests/ (``chmod``), single files
(``chmod/00.t``), ``all`` (default), or ``quick``.  Each server gets one boot
and a fresh export directory; the server under test runs as the invoking user
(root, for the chown/mknod tests) with the options of interop/servers.py
(nine: ``--no-auth --allow-devices``, and each ``--serve-opt``; diod: ``-n``,
aname = the export).
It prints each failed test (file, number, pjdfstest's message) and a summary
per directory and per server.  Under TCG the whole suite takes a long time
(about a second per test file plus ~0.1 s per test on an idle machine):
start with one directory.  This is a benchmark-like script, not a CI test.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from interop import servers, vm  # noqa: E402

#: --tests quick: every directory but the ones that test nothing on Linux
#: (chflags, granular: FreeBSD file flags and ACLs, all skipped on Linux)
QUICK = ["chmod", "chown", "ftruncate", "link", "mkdir", "mkfifo", "mknod", "open",
         "posix_fallocate", "rename", "rmdir", "symlink", "truncate", "unlink", "utimensat"]


def default_build() -> Path:
    return vm.cache_dir() / "pjdfstest"


def ensure_build(build: Path, source: Path | None) -> Path:
    """The build directory holding ``pjdfstest`` and ``tests/``, built from
    ``source`` when it has none yet (or when ``source`` is given again)."""
    if (build / "pjdfstest").exists() and (build / "tests" / "misc.sh").exists() and source is None:
        return build
    if source is None:
        raise SystemExit(f"no pjdfstest build in {build}: give its source with --source DIR "
                         "(a checkout of github.com/pjd/pjdfstest, or its bare git directory)")
    source = source.resolve()
    with vm._Lock(vm.cache_dir() / "pjdfstest.lock"):
        tmp = Path(tempfile.mkdtemp(dir=build.parent, prefix="tmp-pjdfstest-"))
        try:
            if (source / "configure.ac").exists():
                shutil.copytree(source, tmp / "src", symlinks=True)
            elif (source / "HEAD").exists():  # a bare git directory
                (tmp / "src").mkdir()
                arch = subprocess.run(["git", f"--git-dir={source}", "archive", "HEAD"],
                                      capture_output=True, check=True).stdout
                subprocess.run(["tar", "-x", "-C", str(tmp / "src")], input=arch, check=True)
            else:
                raise SystemExit(f"{source}: neither a pjdfstest checkout nor a git directory")
            src = tmp / "src"
            for cmd in (["autoreconf", "-ifs"], ["./configure"], ["make", "pjdfstest"]):
                p = subprocess.run(cmd, cwd=src, capture_output=True, text=True)
                if p.returncode:
                    raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stdout}{p.stderr}")
            if build.exists():
                shutil.rmtree(build)
            src.rename(build)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return build


def select_tests(build: Path, spec: str) -> list[str]:
    """Paths relative to tests/ (directories or .t files)."""
    tests = build / "tests"
    if spec == "all":
        return sorted(p.name for p in tests.iterdir() if p.is_dir())
    if spec == "quick":
        return QUICK
    out = []
    for item in spec.split(","):
        item = item.strip().strip("/")
        if not re.fullmatch(r"[A-Za-z0-9_]+(/[0-9A-Za-z_]+\.t)?", item) or not (tests / item).exists():
            raise SystemExit(f"--tests: no tests/{item} in {build}")
        out.append(item)
    return out


GUEST_SCRIPT = r"""
H=/host
mkdir -p $H
if ! mount -t 9p -o trans=virtio,version=9p2000.L,cache=loose,ro hostroot $H; then
    echo "@@PJD HOSTROOT-FAIL"
    exit 1
fi
mount -t proc proc $H/proc
mount -t sysfs sys $H/sys
mount --bind /dev $H/dev
mount -t tmpfs -o mode=755 run $H/run
mount -t tmpfs -o mode=1777 tmp $H/tmp
mkdir -p $H/run/pjd $H/run/mnt
mount --bind /run/pjd-src $H/run/pjd 2>/dev/null || true
mount --bind /mnt $H/run/mnt
echo "@@PJD START $(cut -d' ' -f1 /proc/uptime)"
chroot $H /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C TMPDIR=/tmp \
    /bin/sh -c "cd /run/mnt && prove -r -f --timer --norc $PJD_TESTS" </dev/null 2>&1 | sed 's/^/@@P /'
echo "@@PJD END $(cut -d' ' -f1 /proc/uptime)"
cd /
umount $H/run/mnt $H/run/pjd $H/tmp $H/run $H/dev $H/sys $H/proc $H
"""


def guest_script(build: Path, tests: list[str]) -> str:
    # the build is under the host root: bind it from /host/<build> to /run/pjd
    s = GUEST_SCRIPT.replace("/run/pjd-src", "$H" + shlex.quote(str(build.resolve())))
    paths = " ".join(shlex.quote(f"/run/pjd/tests/{t}") for t in tests)
    return f"PJD_TESTS={shlex.quote(paths)}\n" + s


_FILE = re.compile(r"^(?:\[[0-9:]+\] )?/run/pjd/tests/(\S+\.t) \.*")
_NOTOK = re.compile(r"^not ok (\d+)(?: - (.*))?$")
_RESULT = re.compile(r"^Files=(\d+), Tests=(\d+)")
_FAILED = re.compile(r"^\s*Failed tests?:\s*(.*)$")
_SUMMARY_FILE = re.compile(r"^/run/pjd/tests/(\S+\.t)\s+\(Wstat: .*Tests: (\d+) Failed: (\d+)\)")


def parse(lines: list[str]) -> dict:
    """prove -f --timer output -> {files, tests, failures{file: [(n, msg)]},
    bad{file: text}, seconds{file: s}, planned{file: n}}."""
    failures: dict[str, list[tuple[int, str]]] = defaultdict(list)
    seconds: dict[str, float] = {}
    seen: list[str] = []
    bad: dict[str, list[str]] = defaultdict(list)
    res = {"files": 0, "tests": 0, "result": "", "summary_failed": {}}
    cur = None
    in_summary = False
    sfile = None
    for line in lines:
        if line.startswith("Test Summary Report"):
            in_summary = True
            continue
        m = _FILE.match(line)
        if m and not in_summary:
            cur = m.group(1)
            if cur not in seen:
                seen.append(cur)
            t = re.search(r"(\d+) ms", line)
            if t:
                seconds[cur] = int(t.group(1)) / 1000
            if re.search(r"\b(skipped|Dubious|No plan|Bad plan)\b", line):
                bad[cur].append(line.split(" ", 1)[1].strip(" ."))
            continue
        m = _NOTOK.match(line)
        if m and cur and not in_summary:
            failures[cur].append((int(m.group(1)), m.group(2) or ""))
            continue
        if in_summary:
            m = _SUMMARY_FILE.match(line)
            if m:
                sfile = m.group(1)
                res["summary_failed"][sfile] = int(m.group(3))
                continue
            if sfile and re.match(r"^\s+(Parse errors|Non-zero exit|Bad plan|No plan)", line):
                bad[sfile].append(line.strip())
        m = _RESULT.match(line)
        if m:
            res["files"], res["tests"] = int(m.group(1)), int(m.group(2))
        if line.startswith("Result:"):
            res["result"] = line.split(":", 1)[1].strip()
    res["failures"] = dict(failures)
    res["bad"] = dict(bad)
    res["seconds"] = seconds
    res["seen"] = seen
    return res


def _nine_from(root: Path, serve_opts: list[str] = ()):
    """Make kind "custom" run ``nine serve`` (the options of kind "nine", and
    serve_opts) with the nine package of ``root``, e.g. a snapshot made with
    ``git archive HEAD nine | tar -x -C DIR`` while the work tree is in flux."""
    argv, _ = servers._command("nine", 0, Path("/x"))
    i = argv.index("--listen")
    j = argv.index("--export")
    argv[i + 1] = "127.0.0.1:{port}"
    argv[j + 1] = "{export}"
    os.environ["NINE_VM_SERVER_CMD"] = ("sh -c " + shlex.quote(
        f"cd {shlex.quote(str(root.resolve()))} && exec " + " ".join(argv[:1] + ["-m", "nine"] + argv[3:]
                                                      + [shlex.quote(o) for o in serve_opts])
        + " \"$@\"") + " sh")
    os.environ["NINE_VM_SERVER_ANAME"] = ""


def run_server(kind: str, build: Path, tests: list[str], work: Path, timeout: float,
               memory_mb: int, opts: str, nine_root: Path | None = None,
               serve_opts: list[str] = ()) -> tuple[dict, str, float]:
    export = work / f"export-{kind}"
    export.mkdir(mode=0o755)
    if kind == "nine" and (nine_root or serve_opts):
        _nine_from(nine_root or Path(__file__).resolve().parent.parent, serve_opts)
        kind_run = "custom"
    else:
        kind_run = kind
    srv = servers.start_server(export, work / f"server-{kind}.log", kind=kind_run)
    try:
        mount_opts = f"version=9p2000.L,{opts}" if opts else "version=9p2000.L"
        if srv.aname:
            mount_opts += f",aname={srv.aname}"
        t0 = time.monotonic()
        r = vm.run_guest(srv.port, mount_opts, guest_script(build, tests), timeout=timeout,
                         memory_mb=memory_mb, log_path=work / f"console-{kind}.txt",
                         qemu_args=["-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,"
                                    "readonly=on,multidevs=remap,id=hostroot"])
        wall = time.monotonic() - t0
    finally:
        srv.stop()
    lines = [ln.split("@@P ", 1)[1] for ln in r.console.splitlines() if "@@P " in ln]
    res = parse(lines)
    res["mounted"] = r.mounted
    res["timed_out"] = r.timed_out
    res["hostroot_failed"] = "@@PJD HOSTROOT-FAIL" in r.console
    res["errors"] = [(e.check, e.request, e.errname, e.count) for e in r.errors]
    return res, "\n".join(lines), wall


def report(kind: str, res: dict, wall: float) -> str:
    out = [f"== {kind}: mounted={res['mounted']} timed_out={res['timed_out']} wall={wall:.0f}s"]
    if res["hostroot_failed"]:
        out.append("   the guest could not mount the host root (virtio-9p)")
    per_dir: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])  # files, failed tests, seconds
    for f in res["seen"]:
        per_dir[f.split("/")[0]][0] += 1
        per_dir[f.split("/")[0]][2] += res["seconds"].get(f, 0)
    for f, fl in sorted(res["failures"].items()):
        per_dir[f.split("/")[0]][1] += len(fl)
        for n, msg in fl:
            msg = re.sub(r"[0-9a-f]{40,}(/[0-9a-f]{40,})*", lambda m: f"<{len(m.group())}-byte path>", msg)
            out.append(f"   FAIL {f} #{n}: {msg}")
    for f, why in sorted(res["bad"].items()):
        out.append(f"   FILE {f}: {'; '.join(why)}")
    out.append("   per directory: " + ", ".join(f"{d} {v[1]} failed/{v[0]} files"
                                              for d, v in sorted(per_dir.items())))
    nfail = sum(len(v) for v in res["failures"].values())
    out.append(f"   {kind}: {nfail} failed of {res['tests']} tests in {res['files']} files "
               f"(prove: {res['result'] or 'no result'})")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", type=Path, help="pjdfstest source (checkout or bare git dir) to build from")
    ap.add_argument("--build", type=Path, default=None, help="build directory (default: the VM cache)")
    ap.add_argument("--server", action="append", choices=["nine", "diod", "tree"],
                    help="server(s) under test (repeat; default nine)")
    ap.add_argument("--tests", default="all", help="all, quick, or DIR[,DIR/NN.t,...] of tests/")
    ap.add_argument("--opts", default="", help="more mount options (e.g. cache=loose)")
    ap.add_argument("--timeout", type=float, default=7200, help="seconds per boot on an idle host")
    ap.add_argument("--memory", type=int, default=1024, help="guest memory (MiB)")
    ap.add_argument("--log", type=Path, help="write the prove output and the report here too")
    ap.add_argument("--nine-root", type=Path,
                    help="run nine from the nine package under this directory (default: this repo)")
    ap.add_argument("--serve-opt", action="append", default=[], metavar="OPT",
                    help="one more `nine serve` option for server nine (repeat; "
                         "e.g. --serve-opt=--trust-client-groups)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (exports, consoles, logs)")
    a = ap.parse_args(argv)
    build = ensure_build(a.build or default_build(), a.source)
    tests = select_tests(build, a.tests)
    work = Path(tempfile.mkdtemp(prefix="nine-pjd-"))
    os.chmod(work, 0o755)
    logs, reports = [], []
    try:
        for kind in a.server or ["nine"]:
            print(f"running {len(tests)} test paths against {kind} ...", flush=True)
            res, text, wall = run_server(kind, build, tests, work, a.timeout, a.memory, a.opts,
                                          a.nine_root, a.serve_opt)
            rep = report(kind, res, wall)
            print(rep, flush=True)
            logs.append(f"######## {kind} (prove output)\n{text}\n")
            reports.append(rep)
    finally:
        if a.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(f"load: {os.getloadavg()[0]:.2f} (machine shared)")
    if a.log:
        a.log.write_text("".join(logs) + "\n".join(reports) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
