"""Boot a Linux kernel in QEMU (TCG) that mounts a 9P server of the host.

The kernel (Debian's ``linux-image-amd64``, fetched with ``apt-get download``
and unpacked with ``dpkg-deb -x``, never installed) and a busybox initramfs
are built once and cached outside the repository, in ``~/.cache/nine-vm/``
(or ``$NINE_VM_CACHE``).  Each boot appends a small second cpio archive to the
initramfs holding the mount options and the guest script, so nothing is
rebuilt between boots.

The guest reaches the host's 127.0.0.1 as 10.0.2.2 (QEMU user networking)
and mounts with ``trans=tcp``.  It reports on the serial console, in lines
that start with ``@@`` (see ``nine.sh``), which :func:`run_guest` parses into a
:class:`GuestResult`: one result per check, the requests the guest kernel sent
(from the ``9p:9p_client_req``/``9p_client_res`` tracepoints, per check) and
the error replies it received.

Host needs: qemu-system-x86 (``qemu-system-x86_64``), busybox-static,
gcc with a static libc (libc6-dev), apt-get + dpkg-deb and network access the
first time (to download the kernel package).
"""

from __future__ import annotations

import dataclasses
import errno as errno_mod
import fcntl
import hashlib
import lzma
import os
import re
import shlex
import shutil
import struct
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

from nine.netwait import load_factor

HERE = Path(__file__).resolve().parent

#: modules the guest needs; their dependencies are added from .modinfo
ROOT_MODULES = ["virtio_pci", "virtio_net", "9pnet_fd", "9pnet_virtio", "9p"]

KERNEL_PACKAGE = os.environ.get("NINE_VM_KERNEL_PACKAGE", "linux-image-amd64")


class VMError(RuntimeError):
    pass


def cache_dir() -> Path:
    d = os.environ.get("NINE_VM_CACHE")
    p = Path(d) if d else Path.home() / ".cache" / "nine-vm"
    p.mkdir(parents=True, exist_ok=True)
    return p


class _Lock:
    """An exclusive flock on a file in the cache (parallel test runs)."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def _run(cmd, cwd=None, **kw) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, **kw)
    if p.returncode != 0:
        raise VMError(f"{' '.join(map(str, cmd))} failed ({p.returncode}):\n{p.stdout}{p.stderr}")
    return p


# --------------------------------------------------------------------------
# ELF bits: .modinfo of kernel modules, PT_INTERP of busybox


def _elf_sections(data: bytes) -> dict[str, bytes]:
    if data[:4] != b"\x7fELF" or data[4] != 2:
        raise VMError("not an ELF64 file")
    e_shoff, = struct.unpack_from("<Q", data, 0x28)
    e_shentsize, e_shnum, e_shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    heads = []
    for i in range(e_shnum):
        off = e_shoff + i * e_shentsize
        name, _type, _flags, _addr, s_off, s_size = struct.unpack_from("<IIQQQQ", data, off)
        heads.append((name, s_off, s_size))
    _, str_off, str_size = heads[e_shstrndx]
    strtab = data[str_off:str_off + str_size]
    out = {}
    for name, s_off, s_size in heads:
        n = strtab[name:strtab.index(b"\0", name)].decode()
        out[n] = data[s_off:s_off + s_size]
    return out


def _modinfo(data: bytes) -> dict[str, str]:
    info = {}
    for item in _elf_sections(data).get(".modinfo", b"").split(b"\0"):
        if b"=" in item:
            k, v = item.split(b"=", 1)
            info.setdefault(k.decode(), v.decode())
    return info


def _read_module(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        data = lzma.decompress(data)
    elif path.name.endswith(".zst"):
        raise VMError(f"zstd-compressed module {path}: not supported")
    return data


def _is_static(path: Path) -> bool:
    data = path.read_bytes()
    e_phoff, = struct.unpack_from("<Q", data, 0x20)
    e_phentsize, e_phnum = struct.unpack_from("<HH", data, 0x36)
    for i in range(e_phnum):
        p_type, = struct.unpack_from("<I", data, e_phoff + i * e_phentsize)
        if p_type == 3:  # PT_INTERP
            return False
    return True


# --------------------------------------------------------------------------
# kernel


def _extract_vmlinux(bzimage: bytes) -> bytes | None:
    """The uncompressed kernel from an xz bzImage (what scripts/extract-vmlinux
    does): QEMU boots the ELF through its PVH note, about 3 s faster under TCG
    than decompressing the bzImage in the guest."""
    i = bzimage.find(b"\xfd7zXZ\x00")
    while i >= 0:
        try:
            d = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
            out = d.decompress(bzimage[i:])
            if out[:4] == b"\x7fELF":
                return out
        except lzma.LZMAError:
            pass
        i = bzimage.find(b"\xfd7zXZ\x00", i + 1)
    return None


def ensure_kernel() -> Path:
    """Return the cached kernel directory (``kernel``, ``modules/``, ``release``),
    downloading and unpacking the Debian package the first time."""
    root = cache_dir()
    kdir = root / "kernel"
    want = " ".join(ROOT_MODULES) + "\n"

    def ok():
        return (kdir / "ok").exists() and (kdir / "roots").exists() and (kdir / "roots").read_text() == want

    if ok():
        return kdir
    with _Lock(root / "kernel.lock"):
        if ok():
            return kdir
        if not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
            raise VMError("apt-get and dpkg-deb are needed to fetch the kernel package")
        with tempfile.TemporaryDirectory(dir=root, prefix="tmp-kernel-") as tmp:
            tmp = Path(tmp)
            os.chmod(tmp, 0o755)  # lets apt's _apt user write there (else a warning)
            _run(["apt-get", "download", KERNEL_PACKAGE], cwd=tmp)
            deb = next(tmp.glob("*.deb"))
            # the meta package depends on the real one (linux-image-6.1.0-NN-amd64)
            depends = _run(["dpkg-deb", "-f", str(deb), "Depends"]).stdout
            m = re.search(r"(linux-image-[0-9][^\s,(]*)", depends)
            if m:
                _run(["apt-get", "download", m.group(1)], cwd=tmp)
                deb = next(p for p in tmp.glob("*.deb") if p.name.startswith(m.group(1) + "_"))
            x = tmp / "x"
            _run(["dpkg-deb", "-x", str(deb), str(x)])
            mods = next((x / "lib" / "modules").iterdir())
            release = mods.name
            new = tmp / "kernel"
            (new / "modules").mkdir(parents=True)
            bz = (x / "boot" / f"vmlinuz-{release}").read_bytes()
            vmlinux = _extract_vmlinux(bz)
            (new / "kernel").write_bytes(vmlinux if vmlinux else bz)
            (new / "kernel-format").write_text("vmlinux\n" if vmlinux else "bzImage\n")
            # resolve module dependencies from .modinfo (the package has no modules.dep)
            index = {}
            for p in (mods / "kernel").rglob("*.ko*"):
                index[p.name.split(".ko")[0].replace("-", "_")] = p
            order: list[str] = []

            def add(name: str, stack=()):
                name = name.replace("-", "_")
                if name in order:
                    return
                if name not in index:
                    builtin = (mods / "modules.builtin").read_text()
                    if re.search(rf"/{re.escape(name)}\.ko", builtin.replace("-", "_")):
                        return
                    raise VMError(f"module {name} not found in {deb.name}")
                data = _read_module(index[name])
                for dep in filter(None, _modinfo(data).get("depends", "").split(",")):
                    if dep not in stack:
                        add(dep, stack + (name,))
                (new / "modules" / f"{name}.ko").write_bytes(data)
                order.append(name)

            for name in ROOT_MODULES:
                add(name)
            (new / "modules" / "order").write_text("".join(f"{n}.ko\n" for n in order))
            (new / "roots").write_text(want)
            (new / "release").write_text(release + "\n")
            (new / "package").write_text(deb.name + "\n")
            (new / "ok").write_text("")
            if kdir.exists():
                shutil.rmtree(kdir)
            new.rename(kdir)
    return kdir


# --------------------------------------------------------------------------
# initramfs


class Cpio:
    """A cpio archive in the "newc" format the kernel unpacks."""

    def __init__(self):
        self.buf = bytearray()
        self.ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev=(0, 0)):
        name_b = name.lstrip("/").encode() + b"\0"
        fields = [self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name_b), 0]
        self.ino += 1
        self.buf += b"070701" + b"".join(b"%08X" % f for f in fields) + name_b
        self.buf += b"\0" * (-len(self.buf) % 4) + data
        self.buf += b"\0" * (-len(self.buf) % 4)

    def dir(self, name, mode=0o755):
        self._entry(name, 0o040000 | mode)

    def file(self, name, data: bytes, mode=0o644):
        self._entry(name, 0o100000 | mode, data)

    def symlink(self, name, target: str):
        self._entry(name, 0o120000 | 0o777, target.encode())

    def chardev(self, name, major, minor, mode=0o600):
        self._entry(name, 0o020000 | mode, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        self.buf += b"\0" * (-len(self.buf) % 512)
        return bytes(self.buf)


def _busybox() -> Path:
    for cand in ("/bin/busybox", shutil.which("busybox") or ""):
        if cand and Path(cand).exists() and _is_static(Path(cand)):
            return Path(cand)
    raise VMError("a static busybox is needed: apt-get install busybox-static")


#: the static C helpers of the guest: /bin/NAME from interop/NAME.c
HELPERS = ["t9", "nmount"]


def build_helper(name: str, out: Path, static: bool = True):
    """Compile interop/NAME.c (static for the guest; tests run it on the host too)."""
    cc = os.environ.get("CC", "gcc")
    _run([cc, *(["-static"] if static else []), "-O2", "-o", str(out), str(HERE / f"{name}.c")])


def ensure_initramfs() -> tuple[Path, Path]:
    """Return (kernel, initramfs), building the initramfs when its inputs
    (init.sh, nine.sh, the helpers' C, busybox, modules) changed."""
    kdir = ensure_kernel()
    bb = _busybox()
    inputs = [HERE / "init.sh", HERE / "nine.sh", *(HERE / f"{n}.c" for n in HELPERS), bb,
              kdir / "modules" / "order"]
    h = hashlib.sha256()
    for p in inputs:
        h.update(p.read_bytes())
    h.update((kdir / "release").read_bytes())
    key = h.hexdigest()[:16]
    out = cache_dir() / f"initramfs-{key}.cpio"
    if out.exists():
        return kdir / "kernel", out
    with _Lock(cache_dir() / "initramfs.lock"):
        if out.exists():
            return kdir / "kernel", out
        with tempfile.TemporaryDirectory(dir=cache_dir(), prefix="tmp-initramfs-") as tmp:
            c = Cpio()
            for d in ["bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp",
                      "mnt", "run", "root", "lib", "lib/modules", "etc"]:
                c.dir(d, 0o1777 if d == "tmp" else 0o755)
            c.chardev("dev/console", 5, 1)
            c.chardev("dev/null", 1, 3, 0o666)
            c.file("bin/busybox", bb.read_bytes(), 0o755)
            applets = _run([str(bb), "--list-full"]).stdout.split()
            for a in applets:
                if a not in ("bin/busybox", "linuxrc", "init", "sbin/init"):
                    c.symlink(a, "/bin/busybox")
            for name in HELPERS:
                build_helper(name, Path(tmp) / name)
                c.file(f"bin/{name}", (Path(tmp) / name).read_bytes(), 0o755)
            c.file("init", (HERE / "init.sh").read_bytes(), 0o755)
            c.file("lib/nine.sh", (HERE / "nine.sh").read_bytes(), 0o644)
            c.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
            c.file("etc/group", b"root:x:0:\n")
            for p in sorted((kdir / "modules").iterdir()):
                c.file(f"lib/modules/{p.name}", p.read_bytes())
            part = Path(tmp) / "initramfs.cpio"
            part.write_bytes(c.finish())
            part.rename(out)
        for old in cache_dir().glob("initramfs-*.cpio"):  # stale builds (other versions)
            try:
                if old != out and time.time() - old.stat().st_mtime > 86400:
                    old.unlink()
            except OSError:
                pass
    return kdir / "kernel", out


# --------------------------------------------------------------------------
# running a guest


@dataclasses.dataclass
class CheckResult:
    name: str
    passed: bool
    rc: int
    seconds: float
    output: list[str]

    @property
    def detail(self) -> str:
        return "\n".join(self.output)


@dataclasses.dataclass
class ErrorReply:
    check: str  # the check running when it happened ("mount", "umount" too)
    request: str  # request type, e.g. "Tlcreate"
    errno: int  # positive errno
    count: int

    @property
    def errname(self) -> str:
        if self.errno == errno_mod.EOPNOTSUPP:
            return "EOPNOTSUPP"  # == ENOTSUP on Linux; the name 9P specs use
        return errno_mod.errorcode.get(self.errno, str(self.errno))


@dataclasses.dataclass
class GuestResult:
    console: str
    returncode: int | None
    timed_out: bool
    wall_seconds: float
    mounted: bool = False
    mount_line: str = ""
    done: bool = False
    boot_seconds: float | None = None  # guest uptime when /init started
    checks: dict[str, CheckResult] = dataclasses.field(default_factory=dict)
    #: requests sent, per check (key "mount"/"umount" for the mount itself)
    requests_by_check: dict[str, Counter] = dataclasses.field(default_factory=dict)
    errors: list[ErrorReply] = dataclasses.field(default_factory=list)
    #: the text trace of the 9p tracepoints (run_guest(raw_trace=True) only)
    trace_lines: list[str] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)
    #: how much run_guest stretched its timeouts for the host's load (load_factor())
    timeout_scale: float = 1.0

    @property
    def requests(self) -> Counter:
        total = Counter()
        for c in self.requests_by_check.values():
            total.update(c)
        return total

    def summary(self) -> str:
        passed = sum(c.passed for c in self.checks.values())
        return (f"{passed}/{len(self.checks)} checks passed, mounted={self.mounted}, done={self.done}, "
                f"{sum(self.requests.values())} requests, {len(self.errors)} error kinds, "
                f"{self.wall_seconds:.1f}s, timeouts x{self.timeout_scale:.1f}")


#: 9P message numbers (Linux include/net/9p/9p.h)
MESSAGE_NAMES = {
    6: "Tlerror", 7: "Rlerror", 8: "Tstatfs", 9: "Rstatfs", 12: "Tlopen", 13: "Rlopen",
    14: "Tlcreate", 15: "Rlcreate", 16: "Tsymlink", 17: "Rsymlink", 18: "Tmknod", 19: "Rmknod",
    20: "Trename", 21: "Rrename", 22: "Treadlink", 23: "Rreadlink", 24: "Tgetattr", 25: "Rgetattr",
    26: "Tsetattr", 27: "Rsetattr", 30: "Txattrwalk", 31: "Rxattrwalk", 32: "Txattrcreate",
    33: "Rxattrcreate", 40: "Treaddir", 41: "Rreaddir", 50: "Tfsync", 51: "Rfsync", 52: "Tlock",
    53: "Rlock", 54: "Tgetlock", 55: "Rgetlock", 70: "Tlink", 71: "Rlink", 72: "Tmkdir", 73: "Rmkdir",
    74: "Trenameat", 75: "Rrenameat", 76: "Tunlinkat", 77: "Runlinkat", 100: "Tversion",
    101: "Rversion", 102: "Tauth", 103: "Rauth", 104: "Tattach", 105: "Rattach", 106: "Terror",
    107: "Rerror", 108: "Tflush", 109: "Rflush", 110: "Twalk", 111: "Rwalk", 112: "Topen",
    113: "Ropen", 114: "Tcreate", 115: "Rcreate", 116: "Tread", 117: "Rread", 118: "Twrite",
    119: "Rwrite", 120: "Tclunk", 121: "Rclunk", 122: "Tremove", 123: "Rremove", 124: "Tstat",
    125: "Rstat", 126: "Twstat", 127: "Rwstat",
}


def _op(num: str) -> str:
    return MESSAGE_NAMES.get(int(num), f"T{num}")


def parse_console(console: str, res: GuestResult) -> GuestResult:
    outputs: dict[str, list[str]] = {}
    # cumulative histogram snapshots, one per check, in order
    snaps: list[tuple[str, Counter, Counter]] = []

    def snap(name):
        if not snaps or snaps[-1][0] != name:
            snaps.append((name, Counter(), Counter()))
        return snaps[-1]

    for line in console.splitlines():
        i = line.find("@@")
        if i < 0:
            continue
        parts = line[i + 2:].split(" ")
        tag, args = parts[0], parts[1:]
        if tag == "OUT" and args:
            outputs.setdefault(args[0], []).append(" ".join(args[1:]))
        elif tag == "RESULT" and len(args) >= 4:
            name = args[0]
            res.checks[name] = CheckResult(name, args[1] == "PASS", int(args[2]), float(args[3]),
                                           outputs.get(name, []))
        elif tag == "MOUNT":
            res.mounted = bool(args) and args[0] == "OK"
            res.mount_line = " ".join(args[1:])
        elif tag == "BOOTED" and args:
            res.boot_seconds = float(args[0])
        elif tag == "DONE":
            res.done = True
        elif tag == "HREQ" and len(args) == 3:
            snap(args[0])[1][_op(args[1])] += int(args[2])
        elif tag == "HERR" and len(args) == 4:
            err = int(args[2])  # the histogram prints the int field as u32
            snap(args[0])[2][(_op(args[1]), -(err - (1 << 32) if err >= 1 << 31 else err))] += int(args[3])
        elif tag == "T":
            res.trace_lines.append(" ".join(args))
        elif tag in ("WARN", "DMESG"):
            res.warnings.append(" ".join(args))
    prev_req, prev_err = Counter(), Counter()
    for name, req, err in snaps:
        res.requests_by_check[name] = +(req - prev_req)
        for (op, e), n in sorted((err - prev_err).items()):
            res.errors.append(ErrorReply(name, op, e, n))
        prev_req, prev_err = req, err
    return res


def _qemu() -> str:
    q = shutil.which("qemu-system-x86_64")
    if not q:
        raise VMError("qemu-system-x86_64 not found: apt-get install qemu-system-x86")
    return q


def run_guest(server_port: int, mount_opts: str, script: str, timeout: float = 600,
              lib: str = "", env: dict[str, str] | None = None, memory_mb: int = 768,
              check_timeout: int = 120, log_path: Path | None = None,
              virtfs_export: Path | None = None, raw_trace: bool = False, trans: str = "tcp",
              files: dict[str, bytes] | None = None,
              qemu_args: list[str] | None = None) -> GuestResult:
    """Boot the VM once: mount ``10.0.2.2`` port ``server_port`` with
    ``trans=tcp,port=PORT,<mount_opts>`` on /mnt, run ``script`` (busybox sh,
    cwd /mnt, with /lib/nine.sh sourced: ``run_check NAME`` runs the function
    ``check_NAME`` defined in ``lib``), then unmount and power off.

    ``env`` becomes shell variables of the guest (e.g. NINE_DIALECT).

    ``timeout`` (the whole boot) and ``check_timeout`` (each check, in the
    guest) are seconds for an idle host: both are stretched by the host's
    load (nine.netwait.load_factor()), since the guest and the server share
    its CPUs.

    ``virtfs_export``: instead of the TCP server, mount QEMU's own 9P server
    (virtio, 9P2000.u/.L, passthrough of that directory): a second reference
    implementation to validate the battery's expectations with.

    ``trans="fd"``: the guest mounts through ``nmount`` (interop/nmount.c, the C port of
    ``nine mount``: it authenticates with the shared key in user space, then mounts
    with ``trans=fd``), for a server that requires authentication.

    ``files``: more files for the guest, {path: bytes} (e.g. ``etc/nine/key``, where
    nmount looks for the key), root's and mode 0600; their directories are made.

    ``qemu_args``: more arguments for QEMU (e.g. a second ``-virtfs``: see
    interop/pjdfstest.py, which exports the host's root to the guest)."""
    kernel, initramfs = ensure_initramfs()
    scale = load_factor()
    timeout *= scale
    check_timeout = round(check_timeout * scale)
    config = {"NINE_PORT": str(server_port), "NINE_OPTS": mount_opts,
              "NINE_TRANS": "virtio" if virtfs_export else trans,
              "NINE_CHECK_TIMEOUT": str(check_timeout), **(env or {})}
    if raw_trace:
        config["NINE_TRACE_RAW"] = "1"
    for k in config:
        if not re.fullmatch(r"[A-Z_][A-Z0-9_]*", k):
            raise ValueError(f"bad guest variable name {k!r}")
    extra = Cpio()
    extra.dir("run")
    extra.file("run/config", "".join(f"{k}={shlex.quote(v)}\n" for k, v in config.items()).encode())
    extra.file("run/lib.sh", lib.encode())
    extra.file("run/script.sh", script.encode())
    dirs = {"run"}
    for path, data in (files or {}).items():
        parts = Path(path.lstrip("/")).parts
        for i in range(1, len(parts)):
            d = "/".join(parts[:i])
            if d not in dirs:
                dirs.add(d)
                extra.dir(d)
        extra.file("/".join(parts), data, 0o600)
    with tempfile.TemporaryDirectory(prefix="nine-vm-") as tmp:
        initrd = Path(tmp) / "initrd.cpio"
        with open(initrd, "wb") as f:
            f.write(initramfs.read_bytes())
            f.write(extra.finish())
        cmd = [
            _qemu(), "-M", "pc", "-accel", "tcg", "-m", str(memory_mb), "-smp", "1",
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-chardev", "stdio,id=con,signal=off", "-serial", "chardev:con",
            "-netdev", "user,id=n0",
            "-device", "virtio-net-pci,netdev=n0,romfile=",
            "-kernel", str(kernel), "-initrd", str(initrd),
            *(["-virtfs", f"local,path={virtfs_export},mount_tag=nine,security_model=passthrough,id=fs0"]
              if virtfs_export else []),
            *(qemu_args or []),
            "-append", "console=ttyS0 quiet loglevel=4 panic=-1 rdinit=/init tsc=reliable "
                       "no_timer_check noreplace-smp",
        ]
        t0 = time.monotonic()
        # the console goes to a file as it comes (log_path: one can follow a long run)
        console_path = Path(log_path) if log_path else Path(tmp) / "console.txt"
        with open(console_path, "wb") as con:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=con, stderr=subprocess.STDOUT)
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            proc.kill()
            proc.wait()
        wall = time.monotonic() - t0
        out = console_path.read_bytes()
    console = out.decode("utf-8", "replace").replace("\r\n", "\n")
    if log_path:
        Path(log_path).write_text(console)
    res = GuestResult(console=console, returncode=proc.returncode, timed_out=timed_out, wall_seconds=wall,
                      timeout_scale=scale)
    return parse_console(console, res)


if __name__ == "__main__":  # smoke test: python -m interop.vm PORT [OPTS]
    import sys

    port = int(sys.argv[1])
    opts = sys.argv[2] if len(sys.argv) > 2 else "version=9p2000.L"
    r = run_guest(port, opts, "run_check ls\n", lib="check_ls() { ls -la /mnt; }\n", timeout=120)
    print(r.console)
    print(r.summary())
    print(dict(r.requests_by_check))
    print(r.errors)
