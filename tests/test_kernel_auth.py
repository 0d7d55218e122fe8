"""Kernel mounts with authentication (issue 12): `nine mount` and its C port in the VM.

The kernel's 9P client cannot Tauth.  `nine mount` (nine/cli/mount.py) authenticates a
connection in user space (Tversion, Tauth and the method's conversation, Tattach, Tclunk
of the auth fid and the root) and hands the socket to the kernel with trans=fd; the
server trusts that connection for the kernel's attaches (nine/auth/gate.py).  The test
VM's guest has no Python, so it runs interop/nmount.c, the same handshake in C (key
method only, its own SHA-256 and HMAC): the guest checks exercise that port, while
`nine mount` itself is tested on the host up to mount(8), which the host's kernel (no
9p) cannot go past.

Every test shares one `nine serve --auth key` with this module's own key (NINE_KEY of
the server process), exporting a directory with hello.txt and shared/ (mode 1777).

Host side:
- test_nmount_hmac: nmount --hmac (compiled for the host) against Python's hmac, for
  the block-boundary lengths of SHA-256 and keys shorter and longer than a block;
- test_nmount_handshake: nmount -f against the server in each dialect;
- test_nmount_refusals: another key is refused by the server, a key file others can
  read (or none) by nmount;
- test_handshake_leaves_a_trusted_connection: nine mount's handshake in-process: the
  socket it returns holds no fid, and after a Tversion it takes Tattaches without an
  auth fid, for any user, each acting as that user, where a fresh connection is refused;
- test_nine_mount_fake / _usage / _without_kernel_9p: the command line: -f prints the
  mount(8) command, bad options are usage errors, and on a kernel without 9p (this
  host's) the verb says so before it connects.

In the guest (one boot; interop/ harness, trans="fd": /mnt itself is mounted by nmount
with the key in /etc/nine/key), checks:
- authed: /mnt is a trans=fd mount, hello.txt reads what the host wrote, a write lands;
- plain_refused: `mount -t 9p -o trans=tcp` (no Tauth) fails with EACCES;
- wrong_key: nmount with another key fails and mounts nothing;
- users: an access=user mount by nmount; users alice (4001) and bob (4002) each create a
  0600 file in shared/ and cannot read or write the other's; the host sees their uids
  (test_host_view).

    python -m pytest -q tests/test_kernel_auth.py
    NINE_VM_KEEP=1 ...   keep the work directory (console and server logs)
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import nine.protocol as P  # noqa: E402
from interop import vm  # noqa: E402
from nine.auth.key import make_key  # noqa: E402
from nine.netwait import free_port, wait_port  # noqa: E402
sys.path.insert(0, str(ROOT / "tests"))
import vmhost  # noqa: E402

NEEDS_GCC = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
NEEDS_QEMU = pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None,
                                reason="needs qemu-system-x86_64")
HELLO = "hello from the host"
ALICE, BOB = 4001, 4002
ENV = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


# --------------------------------------------------------------------------
# the server

class Server:
    """`nine serve --auth key` with a key of its own, and a second key it does not take."""

    def __init__(self, work: Path):
        self.work = work
        self.export = work / "export"
        (self.export / "shared").mkdir(parents=True)
        os.chmod(self.export / "shared", 0o1777)
        (self.export / "hello.txt").write_text(HELLO + "\n")
        self.key = work / "keys" / "key"
        self.other_key = work / "keys" / "other"
        make_key(self.key)
        make_key(self.other_key)
        self.port = free_port()
        self.addr = "127.0.0.1:%d" % self.port
        self.log_path = work / "server.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "nine", "serve", "--listen", self.addr, "-q",
                 "--export", str(self.export), "--auth", "key"],
                env=dict(ENV, NINE_KEY=str(self.key)), cwd=ROOT, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT)
        wait_port(self.port, proc=self.proc)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def server():
    work = Path(tempfile.mkdtemp(prefix="nine-kernel-auth-"))
    os.chmod(work, 0o755)        # the server, acting as a guest's user, must reach the export
    s = Server(work)
    yield s
    s.stop()
    if os.environ.get("NINE_VM_KEEP"):
        print(f"\nkernel-auth work directory kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def nmount(tmp_path_factory):
    """interop/nmount.c compiled for this host."""
    out = tmp_path_factory.mktemp("nmount") / "nmount"
    vm.build_helper("nmount", out, static=False)
    return str(out)


def _nine(*args, key=None, **kw):
    env = dict(ENV, NINE_KEY=str(key)) if key else dict(ENV)
    return subprocess.run([sys.executable, "-m", "nine", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60, **kw)


# --------------------------------------------------------------------------
# host side: the C port

@NEEDS_GCC
def test_nmount_hmac(nmount):
    """nmount's SHA-256 and HMAC agree with Python's for data around the block
    boundaries (55, 56, 64 bytes ...) and keys shorter, as long as and longer than a
    block (a long key is hashed first)."""
    for keylen in (0, 1, 32, 64, 65, 200):
        key = bytes((7 * i + 3) & 0xFF for i in range(keylen))
        for n in (0, 1, 55, 56, 57, 63, 64, 65, 119, 120, 128, 1000, 10000):
            data = bytes((i * 31 + n) & 0xFF for i in range(n))
            p = subprocess.run([nmount, "--hmac", key.hex()], input=data, capture_output=True,
                               timeout=10)
            assert p.returncode == 0, p.stderr
            want = hmac.new(key, data, hashlib.sha256).hexdigest()
            assert p.stdout.decode().strip() == want, (keylen, n)


@NEEDS_GCC
@pytest.mark.parametrize("version", ["9p2000.L", "9p2000.u", "9p2000"])
def test_nmount_handshake(nmount, server, version):
    """nmount -f: version, the key conversation (the server checks nmount's MAC, nmount
    the server's), attach, clunks; then it prints the mount command it would exec."""
    p = subprocess.run([nmount, "-f", "-v", "-k", str(server.key), "-o",
                        f"port={server.port},version={version},cache=none,access=user",
                        "127.0.0.1", "/mnt"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    assert re.fullmatch(rf"mount -t 9p -o trans=fd,rfdno=(\d+),wfdno=\1,version={version},"
                        rf"msize=131072,cache=none,access=user 127\.0\.0\.1 /mnt\n",
                        p.stdout), p.stdout
    assert "authenticated as root" in p.stderr, p.stderr


@NEEDS_GCC
def test_nmount_refusals(nmount, server, tmp_path):
    """Another key: the server refuses the response (EACCES); a key file others can read,
    or a missing one: nmount refuses before it connects."""
    p = subprocess.run([nmount, "-f", "-k", str(server.other_key), "-o",
                        f"port={server.port}", "127.0.0.1", "/mnt"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 1 and p.stdout == ""
    assert "the server refused our response: Permission denied" in p.stderr, p.stderr
    assert "does not hold this server's shared key" in server.log()
    loose = tmp_path / "key"
    loose.write_bytes(server.key.read_bytes())
    loose.chmod(0o644)
    p = subprocess.run([nmount, "-f", "-k", str(loose), "127.0.0.1", "/mnt"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 1 and "mode 0644 lets other users at the shared key" in p.stderr
    p = subprocess.run([nmount, "-f", "127.0.0.1", "/mnt"], capture_output=True, text=True,
                       timeout=30, env=dict(os.environ, NINE_KEY=str(tmp_path / "none")))
    assert p.returncode == 1 and "No such file or directory" in p.stderr, p.stderr
    p = subprocess.run([nmount, "-o", "trans=tcp", "127.0.0.1", "/mnt"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "sets trans=fd" in p.stderr


# --------------------------------------------------------------------------
# host side: nine mount

def _rpc(sock, msg):
    """Send msg (9P2000.L), return the reply."""
    sock.sendall(P.encode(msg, P.V9P2000L))
    head = _recv_exactly(sock, 4)
    return P.decode(head + _recv_exactly(sock, int.from_bytes(head, "little") - 4),
                    P.V9P2000L)


def _recv_exactly(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, "the server closed the connection"
        data += chunk
    return data


def test_handshake_leaves_a_trusted_connection(server):
    """What `nine mount` hands the kernel: a connection with no fid on it (Tclunk of
    every fid the handshake used fails), authenticated across the kernel's Tversion:
    Tattaches without an auth fid go through, for root and for other users alike, each
    acting as its user (as root: alice cannot open bob's 0600 file), where a
    connection nobody authenticated is refused."""
    from nine.cli.mount import Options, handshake
    sock, msize = handshake(server.addr, Options("aname="), "key=%s" % server.key)
    with sock:
        sock.setblocking(True)
        sock.settimeout(10)
        assert msize == 131072
        for fid in range(4):
            r = _rpc(sock, P.Tclunk(tag=1, fid=fid))
            assert isinstance(r, P.Rlerror), (fid, r)
        r = _rpc(sock, P.Tversion(tag=P.NOTAG, msize=65536, version=P.V9P2000L))
        assert isinstance(r, P.Rversion) and r.version == P.V9P2000L
        for fid, (uname, uid) in enumerate([("nobody", 0xFFFFFFFF), ("", 0), ("", ALICE)]):
            r = _rpc(sock, P.Tattach(tag=1, fid=fid, afid=P.NOFID, uname=uname, aname="",
                                     n_uname=uid))
            assert isinstance(r, P.Rattach), (uname, uid, r)
        if os.geteuid() == 0:
            # each attach acts as its user: bob's 0600 file opens for root, not for alice
            secret = server.export / "shared" / "bobs-secret.txt"
            secret.write_text("bob's\n")
            os.chown(secret, BOB, BOB)
            secret.chmod(0o600)
            for fid, want in ((1, P.Rlopen), (2, P.Rlerror)):
                r = _rpc(sock, P.Twalk(tag=1, fid=fid, newfid=10 + fid,
                                       wnames=["shared", "bobs-secret.txt"]))
                assert isinstance(r, P.Rwalk) and len(r.wqids) == 2, r
                r = _rpc(sock, P.Tlopen(tag=1, fid=10 + fid, flags=os.O_RDONLY))
                assert isinstance(r, want), (fid, r)
            assert r.ecode == 13, r                                  # EACCES for alice
            secret.unlink()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as plain:
        _rpc(plain, P.Tversion(tag=P.NOTAG, msize=65536, version=P.V9P2000L))
        r = _rpc(plain, P.Tattach(tag=1, fid=0, afid=P.NOFID, uname="", aname="", n_uname=0))
        assert isinstance(r, P.Rlerror) and r.ecode == 13, r      # EACCES


def test_nine_mount_fake(server, tmp_path):
    """nine mount -f: the handshake with the key of $NINE_KEY, then the mount(8) command
    it would run; another key, or none, is refused with the step named."""
    p = _nine("mount", "-f", "-o", "cache=none,access=user,aname=", server.addr,
              str(tmp_path), key=server.key)
    assert p.returncode == 0, p.stderr
    assert re.fullmatch(rf"mount -t 9p -o trans=fd,rfdno=(\d+),wfdno=\1,version=9p2000.L,"
                        rf"msize=131072,cache=none,access=user,aname= {server.addr} "
                        rf"{re.escape(str(tmp_path))}\n", p.stdout), p.stdout
    p = _nine("mount", "-f", "-o", f"port={server.port},msize=65536,version=9p2000.u",
              "127.0.0.1", str(tmp_path), key=server.key)
    assert p.returncode == 0, p.stderr
    assert "version=9p2000.u,msize=65536 127.0.0.1 " in p.stdout, p.stdout
    p = _nine("mount", "-f", server.addr, str(tmp_path), key=server.other_key)
    assert p.returncode == 1
    assert p.stderr == ("nine: mount: authenticate as root (key): Permission denied (the "
                        "server does not take this key)\n"), p.stderr
    p = _nine("mount", "-f", "--auth", "none", server.addr, str(tmp_path))
    assert p.returncode == 1
    assert p.stderr == "nine: mount: attach to aname '' as root: Permission denied\n", p.stderr


@pytest.mark.parametrize("args, message", [
    (["-o", "access=everyone"], "access=everyone: want user, client, any or a uid"),
    (["-o", "msize=100"], "msize=100: want a number from 4096 to 2147483647"),
    (["-o", "version=9P2000.L"], "version=9P2000.L: want one of 9p2000.L, 9p2000.u, 9p2000"),
    (["-o", "trans=tcp"], "trans= is not an option here: nine mount sets trans=fd,rfdno=,"
                          "wfdno= itself"),
    (["-o", "rfdno=0"], "rfdno= is not an option here"),
    (["-o", "port=70000"], "port=70000: want a number from 1 to 65535"),
    (["-o", "uname"], "uname wants a value (uname=...)"),
])
def test_nine_mount_usage(tmp_path, args, message):
    """Bad options: exit status 2 and what is wrong, before any connection."""
    p = _nine("mount", *args, "127.0.0.1:1", str(tmp_path))
    assert p.returncode == 2 and p.stderr.startswith("nine: mount: " + message), p.stderr
    p = _nine("mount", "127.0.0.1:1", str(tmp_path / "nowhere"))
    assert p.returncode == 2 and "nowhere: not a directory" in p.stderr, p.stderr
    p = _nine("mount", "127.0.0.1:1")
    assert p.returncode == 2 and "the following arguments are required: DIR" in p.stderr


def test_nine_mount_without_kernel_9p(server, tmp_path):
    """On a kernel without 9p (this host's, see docs: the VM has one), nine mount says
    so before it connects (the server logs no connection and no refusal)."""
    from nine.cli.mount import kernel_9p
    if kernel_9p() is None:
        pytest.skip("this host's kernel has 9p: nine mount would really mount")
    before = server.log()
    p = _nine("mount", "-o", "cache=none", server.addr, str(tmp_path), key=server.key)
    assert p.returncode == 1
    assert re.fullmatch(r"nine: mount: this kernel \(\S+\) has no 9p file system: it is not "
                        r"in /proc/filesystems and /lib/modules/\S+ has no 9p module\.  nine "
                        r"mount hands an authenticated connection to the kernel's 9P client "
                        r"\(CONFIG_9P_FS and CONFIG_NET_9P_FD\); use a host whose kernel has "
                        r"it \(the nine client verbs and library need none\)\n", p.stderr), \
        p.stderr
    assert server.log() == before


# --------------------------------------------------------------------------
# the guest

LIB = r'''
not_mounted() {
    if grep -q " $1 " /proc/mounts; then fail "$1 is mounted"; fi
}

check_authed() {
    grep ' /mnt ' /proc/mounts
    grep -q ' /mnt 9p .*trans=fd' /proc/mounts || fail "/mnt is not a trans=fd mount"
    expect_eq hello.txt "$(cat /mnt/hello.txt)" "$HELLO"
    echo "written by the guest" > from-guest.txt
    expect_eq from-guest.txt "$(cat from-guest.txt)" "written by the guest"
}

check_plain_refused() {
    mkdir -p /tmp/plain
    if out=$(mount -t 9p -o "trans=tcp,port=$NINE_PORT,version=9p2000.L" 10.0.2.2 /tmp/plain 2>&1)
    then
        umount /tmp/plain
        fail "a mount with no authentication went through"
    fi
    echo "refused: $out"
    case $out in
    *"Permission denied"*) ;;
    *) fail "want EACCES, got: $out" ;;
    esac
    not_mounted /tmp/plain
}

check_wrong_key() {
    mkdir -p /tmp/bad
    if out=$(nmount -k /run/other-key -o "port=$NINE_PORT,version=9p2000.L" 10.0.2.2 /tmp/bad 2>&1)
    then
        umount /tmp/bad
        fail "a mount with another key went through"
    fi
    echo "refused: $out"
    case $out in
    *"the server refused our response: Permission denied"*) ;;
    *) fail "want the key refused, got: $out" ;;
    esac
    not_mounted /tmp/bad
}

check_users() {
    echo "alice:x:$ALICE:$ALICE:alice:/tmp:/bin/sh" >> /etc/passwd
    echo "bob:x:$BOB:$BOB:bob:/tmp:/bin/sh" >> /etc/passwd
    mkdir -p /users
    nmount -v -o "port=$NINE_PORT,version=9p2000.L,cache=none,access=user" 10.0.2.2 /users
    grep ' /users ' /proc/mounts
    S=/users/shared
    su alice -c "echo alice > $S/alice.txt && chmod 600 $S/alice.txt" || fail "alice cannot write"
    su bob -c "echo bob > $S/bob.txt && chmod 600 $S/bob.txt" || fail "bob cannot write"
    ls -ln $S
    expect_eq "alice's file" "$(stat -c '%u %a' $S/alice.txt)" "$ALICE 600"
    expect_eq "bob's file" "$(stat -c '%u %a' $S/bob.txt)" "$BOB 600"
    expect_eq "alice reads hers" "$(su alice -c "cat $S/alice.txt")" alice
    expect_eq "bob reads his" "$(su bob -c "cat $S/bob.txt")" bob
    if su bob -c "cat $S/alice.txt"; then fail "bob read alice's 0600 file"; fi
    if su alice -c "cat $S/bob.txt"; then fail "alice read bob's 0600 file"; fi
    if su bob -c "echo bob > $S/alice.txt"; then fail "bob wrote alice's 0600 file"; fi
    cd /
    umount /users
    not_mounted /users
}
'''

CHECKS = ["authed", "plain_refused", "wrong_key", "users"]
SCRIPT = "".join(f"run_check {c}\n" for c in CHECKS) + \
    "if grep -q ' /users ' /proc/mounts; then umount /users || umount -l /users; fi\n"

#: error replies a check gets besides vmhost's: the refused plain mount's Tattach (twice:
#: busybox mount tries again read-only).  The users' refused opens of each other's files
#: never reach the server: v9fs (access=user) checks the mode it got from the server
#: itself; test_handshake_leaves_a_trusted_connection checks the server's side of that.
EXPECTED_ERRORS = {"plain_refused": {("Tattach", "EACCES")}}


class Run:
    """One boot against the module's server: /mnt mounted by nmount (trans="fd")."""

    def __init__(self, server: Server):
        self.server = server
        self.error = None
        self.result: vm.GuestResult | None = None
        self.seconds = 0.0

    def start(self):
        t0 = time.monotonic()
        s = self.server
        self.result = vm.run_guest(
            s.port, "version=9p2000.L,cache=none", SCRIPT, lib=LIB, trans="fd",
            env={"HELLO": HELLO, "ALICE": str(ALICE), "BOB": str(BOB)},
            files={"etc/nine/key": s.key.read_bytes(),
                   "run/other-key": s.other_key.read_bytes()},
            timeout=float(os.environ.get("NINE_VM_TIMEOUT", "900")),
            log_path=s.work / "console.log")
        self.seconds = time.monotonic() - t0

    def log(self) -> str:
        return self.server.log()


@pytest.fixture(scope="module")
def run(server):
    """The boot, once for the module; a setup failure is reported by every test (a VM
    that cannot boot here skips them)."""
    r = Run(server)
    try:
        r.start()
    except vm.VMError as e:
        pytest.skip(f"cannot boot the test VM here: {e}")
    except Exception as e:  # noqa: BLE001  reported by every test
        r.error = f"{type(e).__name__}: {e}"
    return r


def _get(run) -> vm.GuestResult:
    return vmhost.guest_result(run)


def _need_root(check):
    if check == "users" and os.geteuid() != 0:
        pytest.skip("the server must run as root to act as the guest's users")


@NEEDS_GCC
@NEEDS_QEMU
def test_boot(run):
    """The guest booted, mounted /mnt through nmount (trans=fd), ran every check,
    unmounted and powered off."""
    r = _get(run)
    vmhost.check_booted(r, CHECKS, run.seconds)
    assert " 9p " in r.mount_line and "trans=fd" in r.mount_line, r.mount_line


@NEEDS_GCC
@NEEDS_QEMU
@pytest.mark.parametrize("check", CHECKS)
def test_check(run, check):
    _need_root(check)
    vmhost.check_result(_get(run), check)


@NEEDS_GCC
@NEEDS_QEMU
def test_host_view(run):
    """What the guest wrote, seen on the host: the authenticated mount's file, and the
    users' files owned by their uids, mode 0600."""
    _get(run)
    export = run.server.export
    assert (export / "authed" / "from-guest.txt").read_text() == "written by the guest\n"
    _need_root("users")
    for name, uid in (("alice", ALICE), ("bob", BOB)):
        st = (export / "shared" / f"{name}.txt").stat()
        assert (st.st_uid, st.st_mode & 0o7777) == (uid, 0o600), name
        assert (export / "shared" / f"{name}.txt").read_text() == name + "\n"


@NEEDS_GCC
@NEEDS_QEMU
def test_server_refusals(run):
    """The server refused the plain mount's attach and the other key, and logged each
    with the peer; nothing else went wrong there."""
    _get(run)
    log = run.log()
    assert re.search(r"refused 127\.0\.0\.1: authentication required \(key\): attach as ", log), log
    assert "does not hold this server's shared key" in log, log
    assert "Traceback" not in log, log
    assert run.server.proc.poll() is None, log


@NEEDS_GCC
@NEEDS_QEMU
def test_error_replies(run):
    """The guest kernel got no error reply but those its checks ask for."""
    r = _get(run)
    bad = [f"{e.check}: {e.request} -> {e.errname} x{e.count}" for e in r.errors
           if (e.request, e.errname) not in
           vmhost.EXPECTED_ERRORS | EXPECTED_ERRORS.get(e.check, set())]
    assert not bad, "unexpected error replies:\n" + "\n".join(bad)
