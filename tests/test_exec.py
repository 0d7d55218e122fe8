"""nine.synth.exec: Xcpu-style sessions (clone, ctl, stdin/stdout/stderr, wait) over real
sockets, with ThreadServer and RawConn."""

import errno
import os
import time

import pytest

import nine.protocol as P
from conftest import RawConn, ThreadServer

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch users")


@pytest.fixture
def esrv():
    holder = {}

    def make():
        from nine.synth.exec import exec_tree
        from nine.synth.files import SynthFS
        tree = exec_tree()
        holder["tree"] = tree
        return {None: SynthFS(tree).attach}
    s = ThreadServer(make)
    s.tree = holder["tree"]
    yield s
    # kill whatever a failed test left running, close the test's connections and let the
    # server see them go before it stops
    c = Client(s.port)
    for n in list(s.tree.exec_tree.sessions):
        try:
            f = c.open("%d/ctl" % n, P.L_O_WRONLY)
            c.write(f, b"wipe\n")
        except OSError:
            pass
    while _clients:
        _clients.pop().close()
    deadline = time.time() + 5
    while s.server.conns and time.time() < deadline:
        time.sleep(0.01)
    s.stop()


_clients = []


class Client:
    """A tiny synchronous 9P client on RawConn; errors raise OSError(errno, text)."""

    def __init__(self, port, uid=0, dialect=P.V9P2000L, uname="root"):
        self.c = RawConn(port, dialect=dialect, timeout=60)
        _clients.append(self)
        self.dialect = dialect
        r = self.c.version()
        assert r.version == dialect
        self.check(self.c.attach(fid=0, uname=uname, n_uname=uid))
        self.fid = 1
        self.tag = 1

    def check(self, r):
        if isinstance(r, P.Rlerror):
            raise OSError(r.ecode, os.strerror(r.ecode))
        if isinstance(r, P.Rerror):
            raise OSError(getattr(r, "errno", 0) or errno.EIO, r.ename)
        return r

    def rpc(self, msg):
        self.tag = self.tag % 1000 + 1
        msg.tag = self.tag
        return self.check(self.c.rpc(msg))

    def walk(self, path):
        fid = self.fid
        self.fid += 1
        names = [n for n in path.split("/") if n]
        r = self.rpc(P.Twalk(fid=0, newfid=fid, wnames=names, tag=0))
        if len(r.wqids) != len(names):
            raise OSError(errno.ENOENT, path)
        return fid

    def open(self, path, flags=P.L_O_RDONLY):
        fid = self.walk(path)
        try:
            if self.dialect == P.V9P2000L:
                self.rpc(P.Tlopen(fid=fid, flags=flags, tag=0))
            else:
                mode = {P.L_O_RDONLY: P.OREAD, P.L_O_WRONLY: P.OWRITE,
                        P.L_O_RDWR: P.ORDWR}[flags & P.L_O_ACCMODE]
                self.rpc(P.Topen(fid=fid, mode=mode, tag=0))
        except OSError:
            self.clunk(fid)
            raise
        return fid

    def read(self, fid, offset=0, count=8192):
        return bytes(self.rpc(P.Tread(fid=fid, offset=offset, count=count, tag=0)).data)

    def readall(self, fid, offset=0):
        out = b""
        while True:
            d = self.read(fid, offset + len(out))
            if not d:
                return out
            out += d

    def write(self, fid, data, offset=0):
        return self.rpc(P.Twrite(fid=fid, offset=offset, data=data, tag=0)).count

    def clunk(self, fid):
        self.rpc(P.Tclunk(fid=fid, tag=0))

    def cat(self, path):
        fid = self.open(path)
        try:
            return self.readall(fid)
        finally:
            self.clunk(fid)

    def put(self, path, data):
        fid = self.open(path, P.L_O_WRONLY)
        try:
            return self.write(fid, data)
        finally:
            self.clunk(fid)

    def new_session(self):
        """Open clone: (its fid, the session number)."""
        fid = self.open("clone")
        n = int(self.read(fid))
        return fid, n

    def close(self):
        self.c.close()


def _readdir_names(c, path=""):
    fid = c.open(path)
    try:
        r = c.rpc(P.Treaddir(fid=fid, offset=0, count=8192, tag=0))
        return sorted(e[3] for e in P.unpack_dirents(bytes(r.data)))
    finally:
        c.clunk(fid)


def test_clone_read_session_number(esrv):
    c = Client(esrv.port)
    f1, n1 = c.new_session()
    f2, n2 = c.new_session()
    assert n2 == n1 + 1
    assert c.read(f1) == b"%d\n" % n1
    names = _readdir_names(c)
    assert "clone" in names and str(n1) in names and str(n2) in names
    assert sorted(_readdir_names(c, str(n1))) == sorted(
        ["ctl", "argv", "env", "stdin", "stdout", "stderr", "wait", "status"])
    assert c.cat("%d/ctl" % n1) == b"%d\n" % n1
    assert c.cat("%d/status" % n1) == b"new\n"
    # nothing started and nothing open: the session goes with its clone fid
    c.clunk(f1)
    with pytest.raises(OSError) as ei:
        c.walk("%d" % n1)
    assert ei.value.errno == errno.ENOENT
    assert str(n2) in _readdir_names(c)
    c.clunk(f2)
    assert str(n2) not in _readdir_names(c)


def test_stdin_stdout_wait(esrv):
    c = Client(esrv.port)
    cl, n = c.new_session()
    ctl = c.open("%d/ctl" % n, P.L_O_WRONLY)
    c.write(ctl, b"exec sh -c 'read x; echo got $x; echo err >&2; exit 3'\n")
    st = c.cat("%d/status" % n).decode()
    assert st.startswith("running ") or st.startswith("exited ")
    out = c.open("%d/stdout" % n)
    c.put("%d/stdin" % n, b"hello\n")          # the last writer's clunk closes stdin
    assert c.readall(out) == b"got hello\n"
    assert c.cat("%d/wait" % n) == b"exited 3\n"
    assert c.cat("%d/stderr" % n) == b"err\n"
    assert c.cat("%d/status" % n) == b"exited 3\n"
    assert c.cat("%d/argv" % n) == b"sh -c 'read x; echo got $x; echo err >&2; exit 3'\n"
    # exec again is refused
    with pytest.raises(OSError) as ei:
        c.write(ctl, b"exec true\n")
    assert ei.value.errno == errno.EBUSY
    # the session stays while files are open, and goes with the last clunk after the exit
    for f in (ctl, out):
        c.clunk(f)
    assert str(n) in _readdir_names(c)
    c.clunk(cl)
    assert str(n) not in _readdir_names(c)


def test_argv_env_dir_and_pending_stdin(esrv):
    c = Client(esrv.port)
    cl, n = c.new_session()
    c.put("%d/argv" % n, b"sh -c 'cat; echo $FOO $BAR; pwd'\n")
    c.put("%d/env" % n, b"FOO=one\n")
    env = c.open("%d/env" % n, P.L_O_WRONLY)
    c.write(env, b"BAR=two words\n", offset=len(b"FOO=one\n"))   # an append
    c.clunk(env)
    assert c.cat("%d/env" % n) == b"FOO=one\nBAR=two words\n"
    c.put("%d/stdin" % n, b"fed before exec\n")               # kept, fed at exec, then closed
    c.put("%d/ctl" % n, b"dir /tmp\nexec\n")
    assert c.cat("%d/stdout" % n) == b"fed before exec\none two words\n/tmp\n"
    assert c.cat("%d/wait" % n) == b"exited 0\n"
    with pytest.raises(OSError) as ei:
        c.put("%d/env" % n, b"X=1\n")
    assert ei.value.errno == errno.EBUSY
    c.clunk(cl)


def test_stdin_held_open_and_close_command(esrv):
    c = Client(esrv.port)
    cl, n = c.new_session()
    c.put("%d/ctl" % n, b"exec cat\n")
    w = c.open("%d/stdin" % n, P.L_O_WRONLY)
    out = c.open("%d/stdout" % n)
    c.write(w, b"a\n")
    assert c.read(out) == b"a\n"
    c.write(w, b"b\n")
    assert c.read(out, 2) == b"b\n"
    c.put("%d/ctl" % n, b"close\n")
    assert c.read(out, 4) == b""
    assert c.cat("%d/wait" % n) == b"exited 0\n"
    with pytest.raises(OSError) as ei:
        c.write(w, b"late\n")
    assert ei.value.errno == errno.EPIPE
    c.clunk(w)
    c.clunk(out)
    c.clunk(cl)


def test_stdout_follows_output(esrv):
    c = Client(esrv.port)
    cl, n = c.new_session()
    c.put("%d/ctl" % n, b"exec sh -c 'echo one; sleep 1.5; echo two; sleep 1.5; echo three'\n")
    out = c.open("%d/stdout" % n)
    t0 = time.time()
    first = c.read(out, 0)
    # the read returned what there was, while the program still runs
    assert first == b"one\n"
    assert c.cat("%d/status" % n).startswith(b"running ")
    got, reads = first, 1
    while True:
        d = c.read(out, len(got))               # waits for the next line
        if not d:
            break                               # EOF: exited and all read
        got += d
        reads += 1
    assert got == b"one\ntwo\nthree\n" and reads == 3
    assert time.time() - t0 > 2.0
    assert c.cat("%d/status" % n) == b"exited 0\n"
    # a reader may come later and read from any kept offset
    assert c.cat("%d/stdout" % n) == b"one\ntwo\nthree\n"
    out2 = c.open("%d/stdout" % n)
    assert c.read(out2, 4) == b"two\nthree\n"
    c.clunk(out2)
    c.clunk(out)
    c.clunk(cl)


def _expect_flush(c, fid, path_desc):
    raw = c.c
    raw.send(P.Tread(fid=fid, offset=0, count=100, tag=700))
    time.sleep(0.3)
    t0 = time.time()
    raw.send(P.Tflush(oldtag=700, tag=701))
    r = raw.recv()
    assert isinstance(r, P.Rflush) and r.tag == 701, (path_desc, r)
    assert time.time() - t0 < 3.0


def test_flush_blocked_stdout_and_wait(esrv):
    c = Client(esrv.port)
    cl, n = c.new_session()
    c.put("%d/ctl" % n, b"exec sleep 30\n")
    out = c.open("%d/stdout" % n)
    _expect_flush(c, out, "stdout")
    wt = c.open("%d/wait" % n)
    _expect_flush(c, wt, "wait")
    # the connection still works, and nothing answers the flushed tags
    assert c.cat("%d/status" % n).startswith(b"running ")
    c.put("%d/ctl" % n, b"kill\n")
    assert c.read(wt) == b"killed 9\n"
    assert c.read(out) == b""
    c.clunk(out)
    c.clunk(wt)
    c.clunk(cl)


def test_signal_and_kill(esrv):
    c = Client(esrv.port)
    cl, n = c.new_session()
    c.put("%d/ctl" % n, b"exec sh -c 'trap \"echo term; exit 7\" TERM; echo ready; "
          b"while :; do sleep 0.05; done'\n")
    out = c.open("%d/stdout" % n)
    assert c.read(out) == b"ready\n"
    c.put("%d/ctl" % n, b"signal term\n")
    assert c.cat("%d/wait" % n) == b"exited 7\n"
    assert c.readall(out) == b"ready\nterm\n"
    c.clunk(out)
    c.clunk(cl)

    cl, n = c.new_session()
    c.put("%d/ctl" % n, b"exec sleep 30\n")
    c.put("%d/ctl" % n, b"signal 15\n")
    assert c.cat("%d/wait" % n) == b"killed 15\n"
    c.clunk(cl)

    cl, n = c.new_session()
    with pytest.raises(OSError) as ei:
        c.put("%d/ctl" % n, b"kill\n")           # nothing to kill yet
    assert ei.value.errno == errno.ESRCH
    c.put("%d/ctl" % n, b"exec sh -c 'sleep 30 & sleep 30; echo never'\n")
    c.put("%d/ctl" % n, b"kill\n")              # the whole process group
    assert c.cat("%d/wait" % n) == b"killed 9\n"
    assert c.cat("%d/stdout" % n) == b""        # the pipe closed: no child holds it
    c.clunk(cl)


def test_wipe_removes_at_once(esrv):
    c = Client(esrv.port)
    cl, n = c.new_session()
    c.put("%d/ctl" % n, b"exec sleep 30\n")
    pid = int(c.cat("%d/status" % n).split()[1])
    out = c.open("%d/stdout" % n)
    wt = c.open("%d/wait" % n)
    c.put("%d/ctl" % n, b"wipe\n")
    assert str(n) not in _readdir_names(c)
    assert c.read(out) == b""
    assert c.read(wt) == b"killed 9\n"
    with pytest.raises(OSError):
        c.open("%d/ctl" % n)
    for f in (out, wt, cl):
        c.clunk(f)
    # reaped: no zombie left behind
    deadline = time.time() + 3
    while os.path.exists("/proc/%d" % pid) and time.time() < deadline:
        time.sleep(0.05)
    assert not os.path.exists("/proc/%d" % pid)


def test_running_session_outlives_its_fids(esrv):
    c = Client(esrv.port)
    cl, n = c.new_session()
    c.put("%d/ctl" % n, b"exec sh -c 'sleep 0.5; echo done'\n")
    c.clunk(cl)
    assert str(n) in _readdir_names(c)          # still running: kept
    out = c.open("%d/stdout" % n)
    assert c.readall(out) == b"done\n"
    assert c.cat("%d/wait" % n) == b"exited 0\n"
    c.clunk(out)                                # exited and nothing open: gone
    assert str(n) not in _readdir_names(c)


def test_bad_ctl_commands(esrv):
    cu = Client(esrv.port, dialect=P.V9P2000U)
    cl, n = cu.new_session()
    ctl = cu.open("%d/ctl" % n, P.L_O_WRONLY)
    for line, word in [(b"frobnicate now\n", "frobnicate"), (b"signal FOO\n", "FOO"),
                       (b"exec\n", "exec"), (b"exec 'unbalanced\n", "exec"),
                       (b"exec /nonexistent/prog x\n", "/nonexistent/prog")]:
        with pytest.raises(OSError) as ei:
            cu.write(ctl, line)
        assert word in ei.value.strerror, (line, ei.value.strerror)
    with pytest.raises(OSError) as ei:
        cu.write(ctl, b"exec /nonexistent/prog\n")
    assert ei.value.errno == errno.ENOENT
    assert cu.cat("%d/status" % n) == b"new\n"
    cu.clunk(ctl)
    cu.clunk(cl)
    c = Client(esrv.port)
    cl, n = c.new_session()
    with pytest.raises(OSError) as ei:
        c.put("%d/ctl" % n, b"frobnicate\n")
    assert ei.value.errno == errno.EINVAL
    c.clunk(cl)


@ROOT_ONLY
def test_exec_runs_as_the_attaching_user(esrv):
    c = Client(esrv.port, uid=65534, uname="nobody")
    cl, n = c.new_session()
    c.put("%d/ctl" % n, b"exec sh -c 'id -u; id -g; echo $USER $HOME'\n")
    out = c.cat("%d/stdout" % n).decode().split("\n")
    assert out[0] == "65534" and out[1] == "65534"
    assert out[2].startswith("nobody ")
    c.clunk(cl)
    # root runs as root
    r = Client(esrv.port)
    cl, n = r.new_session()
    r.put("%d/ctl" % n, b"exec id -u\n")
    assert r.cat("%d/stdout" % n) == b"0\n"
    r.clunk(cl)


def test_sessions_are_private(esrv):
    owner = Client(esrv.port, uid=1000, uname="")
    cl, n = owner.new_session()
    other = Client(esrv.port, uid=65534, uname="nobody")
    assert str(n) not in _readdir_names(other)
    for path in ("%d" % n, "%d/ctl" % n, "%d/stdout" % n):
        with pytest.raises(OSError) as ei:
            other.open(path)
        assert ei.value.errno == errno.ENOENT
    # root sees and may use it
    root = Client(esrv.port)
    assert str(n) in _readdir_names(root)
    assert root.cat("%d/status" % n) == b"new\n"
    # the owner uses it
    owner.put("%d/ctl" % n, b"exec true\n")
    assert owner.cat("%d/wait" % n) == b"exited 0\n"
    owner.clunk(cl)


GUEST_SCRIPT = r'''
cd /mnt
exec 3< clone                 # holds the session
read n <&3
d=/mnt/$n
echo "@@OUT shell session $n"
echo "exec sh -c 'read x; echo got \$x; for i in 1 2 3; do echo line\$i; sleep 0.2; done; exit 3'" > $d/ctl
echo hello > $d/stdin         # the clunk of this last writer closes stdin
cat $d/stdout | sed 's/^/@@OUT shell stdout /'
echo "@@OUT shell wait $(cat $d/wait)"
exec 3<&-                     # exited and nothing open: the session goes
echo "@@OUT shell after $(ls /mnt | tr '\n' ' ')"
mkdir -p /h
mount -t 9p -o "trans=tcp,port=$NINE_PORT,version=9p2000.L,aname=host" 10.0.2.2 /h
echo "@@OUT shell load $(grep -c '^load[0-9]* [0-9.]*$' /h/load)"
echo "@@OUT shell cpuinfo $(head -n 1 /h/proc/cpuinfo | tr -s ' \t' ' ')"
umount /h
echo "@@RESULT shell PASS 0 0"
'''


def test_shell_through_linux_kernel_client():
    """The shell idiom of the module docstring, run by busybox sh in a QEMU guest on a v9fs
    mount (the interop/ harness); skipped where that harness has no cached kernel."""
    import shutil
    if not shutil.which("qemu-system-x86_64"):
        pytest.skip("no qemu-system-x86_64")
    try:
        from interop import vm
    except Exception as ex:     # pragma: no cover
        pytest.skip("interop harness unavailable: %s" % ex)
    if not (vm.cache_dir() / "kernel" / "ok").exists():
        pytest.skip("no cached guest kernel (run tests/test_kernel_vm.py once)")

    def make():
        from nine.synth.exec import exec_tree
        from nine.synth.files import SynthFS
        from nine.synth.host import host_tree
        return {"exec": SynthFS(exec_tree()).attach, "host": SynthFS(host_tree()).attach}
    s = ThreadServer(make)
    try:
        try:
            r = vm.run_guest(s.port, "version=9p2000.L,aname=exec", GUEST_SCRIPT, timeout=180)
        except vm.VMError as ex:
            pytest.skip("VM harness: %s" % ex)
    finally:
        s.stop()
    assert r.mounted, r.console[-2000:]
    assert "shell" in r.checks, r.console[-2000:]
    out = r.checks["shell"].output
    n = out[0].split()[1]
    assert out[1:5] == ["stdout got hello", "stdout line1", "stdout line2", "stdout line3"]
    assert out[5] == "wait exited 3"
    assert out[6].split()[1:] == ["clone"], out[6]
    assert out[7] == "load 3"
    with open("/proc/cpuinfo") as f:
        first = " ".join(f.readline().split())
    assert " ".join(out[8].split()[1:]) == first
    assert n.isdigit()


def test_large_output_and_discarded_offsets(esrv, monkeypatch):
    c = Client(esrv.port)
    cl, n = c.new_session()
    c.put("%d/ctl" % n, b"exec seq 1 200000\n")
    want = "".join("%d\n" % i for i in range(1, 200001)).encode()
    assert c.cat("%d/stdout" % n) == want
    c.clunk(cl)

    import nine.synth.exec as X
    monkeypatch.setattr(X, "MAXBUF", 4096)
    cu = Client(esrv.port, dialect=P.V9P2000U)
    cl, n = cu.new_session()
    cu.put("%d/ctl" % n, b"exec head -c 100000 /dev/zero\n")
    assert cu.cat("%d/wait" % n) == b"exited 0\n"
    out = cu.open("%d/stdout" % n)
    with pytest.raises(OSError) as ei:
        cu.read(out, 0)
    assert ei.value.errno == errno.ESPIPE and "discarded" in ei.value.strerror
    assert cu.readall(out, 100000 - 4096) == bytes(4096)     # the kept tail reads fine
    cu.clunk(out)
    with pytest.raises(OSError) as ei:
        cu.put("%d/ctl" % n, b"dir /nonexistent\n")
    assert ei.value.errno == errno.EBUSY
    cu.clunk(cl)
    cl, n = cu.new_session()
    cu.put("%d/ctl" % n, b"dir /nonexistent/dir\n")
    with pytest.raises(OSError) as ei:
        cu.put("%d/ctl" % n, b"exec true\n")
    assert ei.value.errno == errno.ENOENT and "/nonexistent/dir" in ei.value.strerror
    cu.clunk(cl)
