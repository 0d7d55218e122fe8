"""Plan 9-style process control (nine.synth.proc) through 9P files only.

A small C program (tests/progs/counter.c) is compiled, run, and controlled through
proc/PID/{ctl,mem,regs,wait,...} served by a ThreadServer, over plain 9P (RawConn).
"""

import errno
import os
import signal
import shutil
import subprocess
import sys
import time

import pytest

import nine.protocol as P
from conftest import RawConn, ThreadServer

HERE = os.path.dirname(os.path.abspath(__file__))

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux ptrace"),
    pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc"),
]


# --- fixtures ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def counter_exe(tmp_path_factory):
    d = tmp_path_factory.mktemp("progs")
    exe = str(d / "counter")
    subprocess.run(["gcc", "-O1", "-g", "-no-pie", "-pthread", "-o", exe,
                    os.path.join(HERE, "progs", "counter.c")], check=True)
    syms = {}
    for line in subprocess.run(["nm", exe], check=True, capture_output=True,
                               text=True).stdout.splitlines():
        parts = line.split()
        if len(parts) == 3:
            syms[parts[2]] = int(parts[0], 16)
    return exe, syms


class Counter:
    def __init__(self, exe, syms, threads=0):
        self.p = subprocess.Popen([exe, str(threads)], stdout=subprocess.PIPE)
        first = self.p.stdout.readline().split()
        self.pid = int(first[0])
        assert self.pid == self.p.pid
        self.syms = syms
        assert int(first[1], 16) == syms["counter"]   # non-PIE: nm's addresses are real
        assert int(first[2], 16) == syms["tick"]

    def stop(self):
        # the tracer may have reaped a stop or the exit already (Popen's returncode then
        # can read 0 while the process lives on): kill by pid in any case
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.p.wait(10)
        except (ChildProcessError, subprocess.TimeoutExpired):
            pass


@pytest.fixture
def counter(counter_exe):
    c = Counter(*counter_exe)
    yield c
    c.stop()


@pytest.fixture
def srv():
    def make():
        from nine.synth.files import Dir, SynthFS
        from nine.synth.proc import proc_tree
        return {None: SynthFS(Dir("", [proc_tree()])).attach}
    s = ThreadServer(make)
    yield s
    s.stop()


# --- a tiny 9P client over RawConn ---------------------------------------------------------

class Err(Exception):
    def __init__(self, code, msg=""):
        super().__init__(code, msg)
        self.errno = code
        self.msg = msg


class Client:
    def __init__(self, port, uname="root", uid=0, dialect=P.V9P2000L):
        self.c = RawConn(port, dialect=dialect)
        self.dotl = dialect == P.V9P2000L
        r = self.c.version()
        assert r.version == dialect
        r = self.c.attach(fid=0, uname=uname, n_uname=uid)
        assert isinstance(r, P.Rattach), r
        self.nfid = 1
        self.tag = 1

    def rpc(self, msg):
        self.tag = self.tag % 30000 + 1
        msg.tag = self.tag
        r = self.c.rpc(msg)
        self.check(r)
        return r

    @staticmethod
    def check(r):
        if isinstance(r, P.Rlerror):
            raise Err(r.ecode)
        if isinstance(r, P.Rerror):
            raise Err(getattr(r, "errno", 0), r.ename)

    def walk(self, path):
        fid = self.nfid
        self.nfid += 1
        names = [n for n in path.split("/") if n]
        r = self.rpc(P.Twalk(fid=0, newfid=fid, wnames=names))
        if len(r.wqids) != len(names):
            raise Err(errno.ENOENT, path)
        return fid

    def open(self, path, mode="r"):
        fid = self.walk(path)
        try:
            if self.dotl:
                flags = {"r": P.L_O_RDONLY, "w": P.L_O_WRONLY, "rw": P.L_O_RDWR}[mode]
                self.rpc(P.Tlopen(fid=fid, flags=flags))
            else:
                m = {"r": P.OREAD, "w": P.OWRITE, "rw": P.ORDWR}[mode]
                self.rpc(P.Topen(fid=fid, mode=m))
        except Err:
            self.clunk(fid)
            raise
        return fid

    def read(self, fid, off=0, count=8192):
        return self.rpc(P.Tread(fid=fid, offset=off, count=count)).data

    def write(self, fid, data, off=0):
        if isinstance(data, str):
            data = data.encode()
        return self.rpc(P.Twrite(fid=fid, offset=off, data=data)).count

    def clunk(self, fid):
        self.rpc(P.Tclunk(fid=fid))

    def readall(self, path):
        fid = self.open(path)
        try:
            out, off = b"", 0
            while True:
                d = self.read(fid, off)
                if not d:
                    return out
                out += d
                off += len(d)
        finally:
            self.clunk(fid)

    def ls(self, path):
        fid = self.open(path)
        try:
            r = self.rpc(P.Treaddir(fid=fid, offset=0, count=65536))
            names = []
            while True:
                ents = P.unpack_dirents(r.data)
                if not ents:
                    return names
                names += [e[3] for e in ents]
                r = self.rpc(P.Treaddir(fid=fid, offset=ents[-1][1], count=65536))
        finally:
            self.clunk(fid)

    def ctl(self, path, cmd):
        """`echo cmd > path`: open, truncate, write, clunk."""
        fid = self.open(path, "w")
        try:
            if self.dotl:
                self.rpc(P.Tsetattr(fid=fid, valid=P.SETATTR_SIZE, mode=0, uid=0, gid=0, size=0,
                                    atime_sec=0, atime_nsec=0, mtime_sec=0, mtime_nsec=0))
            self.write(fid, cmd + "\n")
        finally:
            self.clunk(fid)

    def close(self):
        self.c.close()


def regs_of(text):
    return {k: int(v, 16) for k, v in (l.split() for l in text.decode().splitlines())}


def read_long(cl, pid, addr):
    fid = cl.open("proc/%d/mem" % pid)
    try:
        d = cl.read(fid, addr, 8)
    finally:
        cl.clunk(fid)
    assert len(d) == 8
    return int.from_bytes(d, "little")


def proc_state(pid):
    with open("/proc/%d/stat" % pid) as f:
        return f.read().rsplit(")", 1)[1].split()[0]


# --- tests -----------------------------------------------------------------------------------

def test_listing_and_real_files(srv, counter):
    cl = Client(srv.port)
    assert str(counter.pid) in cl.ls("proc")
    names = cl.ls("proc/%d" % counter.pid)
    for n in ("ctl", "mem", "regs", "note", "wait", "status", "task", "cmdline", "environ",
              "stat", "statm", "maps", "lstatus"):
        assert n in names, n
    assert cl.readall("proc/%d/cmdline" % counter.pid).split(b"\0")[0].endswith(b"counter")
    assert b"counter" in cl.readall("proc/%d/maps" % counter.pid)
    st = cl.readall("proc/%d/status" % counter.pid).decode()
    assert st.endswith("\n") and st.count("\n") == 1
    fields = st.split()
    assert fields[0] == "counter" and fields[1] == "root"
    assert fields[2] in ("Sleep", "Running") and len(fields) == 12
    assert cl.ls("proc/%d/task" % counter.pid) == [str(counter.pid)]
    assert "regs" in cl.ls("proc/%d/task/%d" % (counter.pid, counter.pid))
    # ctl/mem/regs are the owner's, 0600
    fid = cl.walk("proc/%d/ctl" % counter.pid)
    r = cl.rpc(P.Tgetattr(fid=fid, request_mask=0x7ff))
    assert r.mode & 0o777 == 0o600 and r.uid == 0
    cl.clunk(fid)
    cl.close()


def test_breakpoint_cycle(srv, counter):
    """stop, read the counter, set a breakpoint, hit it, look at regs, restore, rewind,
    step, start: the counter keeps counting."""
    pid, syms = counter.pid, counter.syms
    cl = Client(srv.port)
    ctl = cl.open("proc/%d/ctl" % pid, "w")
    wait = cl.open("proc/%d/wait" % pid)
    mem = cl.open("proc/%d/mem" % pid, "rw")
    cl.write(ctl, "stop")
    assert proc_state(pid) == "t"
    c1 = int.from_bytes(cl.read(mem, syms["counter"], 8), "little")
    time.sleep(0.05)
    assert int.from_bytes(cl.read(mem, syms["counter"], 8), "little") == c1  # stopped
    addr = syms["tick"]
    orig = cl.read(mem, addr, 1)
    assert len(orig) == 1 and orig != b"\xcc"
    assert cl.write(mem, b"\xcc", addr) == 1
    assert cl.read(mem, addr, 1) == b"\xcc"
    cl.write(ctl, "start")
    ev = cl.read(wait).decode()
    assert ev == "breakpoint %#x\n" % addr
    regs = regs_of(cl.readall("proc/%d/regs" % pid))
    assert regs["rip"] == addr + 1
    # the counter has not moved past the breakpoint call
    cl.write(mem, orig, addr)
    rfid = cl.open("proc/%d/regs" % pid, "w")
    cl.write(rfid, "rip %#x\n" % addr)
    cl.clunk(rfid)
    regs2 = regs_of(cl.readall("proc/%d/regs" % pid))
    assert regs2["rip"] == addr
    assert {k: v for k, v in regs2.items() if k != "rip"} == \
        {k: v for k, v in regs.items() if k != "rip"}       # only rip changed
    cl.write(ctl, "step")
    rip3 = regs_of(cl.readall("proc/%d/regs" % pid))["rip"]
    assert rip3 != addr                                      # one instruction on
    cl.write(ctl, "start")
    a = int.from_bytes(cl.read(mem, syms["counter"], 8), "little")
    wait_for(lambda: int.from_bytes(cl.read(mem, syms["counter"], 8), "little") > a)
    b = int.from_bytes(cl.read(mem, syms["counter"], 8), "little")
    assert b > a >= c1
    for f in (ctl, wait, mem):
        cl.clunk(f)
    cl.close()


def test_shell_style_breakpoint_and_sequential_wait_reads(srv, counter):
    """`echo stop > ctl`, poke an int3, `echo start > ctl` each with its own open and
    clunk (as a shell does): the planted breakpoint keeps the process attached, so the trap
    is reported, not fatal.  A read that continues right after an event returns empty
    (the Linux client's read loop then hands the line to `cat`), the next one blocks."""
    pid, syms = counter.pid, counter.syms
    cl = Client(srv.port)

    def ctl(cmd):
        f = cl.open("proc/%d/ctl" % pid, "w")
        cl.write(f, cmd + "\n")
        cl.clunk(f)

    ctl("stop")
    mem = cl.open("proc/%d/mem" % pid, "rw")
    addr = syms["tick"]
    orig = cl.read(mem, addr, 1)
    cl.write(mem, b"\xcc", addr)
    cl.clunk(mem)
    ctl("start")
    assert wait_for(lambda: proc_state(pid) == "t")     # stopped at the trap, alive
    wait = cl.open("proc/%d/wait" % pid)
    ev = cl.read(wait, 0)
    assert ev == b"breakpoint %#x\n" % addr
    t0 = time.time()
    assert cl.read(wait, len(ev)) == b""                 # the pause after an event
    assert time.time() - t0 < 1
    mem = cl.open("proc/%d/mem" % pid, "rw")
    cl.write(mem, orig, addr)
    cl.clunk(mem)
    f = cl.open("proc/%d/regs" % pid, "w")
    cl.write(f, "rip %#x\n" % addr)
    cl.clunk(f)
    cl.clunk(wait)
    ctl("detach")
    assert wait_for(lambda: tracer_pid(pid) == 0)
    assert wait_for(lambda: proc_state(pid) in ("R", "S"))
    c1 = int.from_bytes(cl.read(cl.open("proc/%d/mem" % pid), syms["counter"], 8), "little")
    wait_for(lambda: int.from_bytes(cl.read(cl.open("proc/%d/mem" % pid), syms["counter"], 8),
                                    "little") > c1)
    c2 = int.from_bytes(cl.read(cl.open("proc/%d/mem" % pid), syms["counter"], 8), "little")
    assert c2 > c1
    cl.close()


def tracer_pid(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("TracerPid:"):
                return int(line.split()[1])


def wait_for(cond, timeout=5):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if cond():
            return True
        time.sleep(0.01)
    return False


def test_flush_of_blocked_wait(srv, counter):
    pid = counter.pid
    cl = Client(srv.port)
    wait = cl.open("proc/%d/wait" % pid)
    cl.c.send(P.Tread(fid=wait, offset=0, count=100, tag=500))
    time.sleep(0.2)
    t0 = time.time()
    r = cl.c.rpc(P.Tflush(oldtag=500, tag=501))
    assert isinstance(r, P.Rflush)
    assert time.time() - t0 < 1
    # still controllable, and the wait file still works
    cl.ctl("proc/%d/ctl" % pid, "stop")
    assert proc_state(pid) == "t"
    cl.ctl("proc/%d/ctl" % pid, "start")
    assert wait_for(lambda: proc_state(pid) in "RS")
    cl.ctl("proc/%d/ctl" % pid, "kill")
    assert cl.read(wait) == b"killed 9\n"
    assert cl.read(wait) == b""             # gone: EOF
    cl.clunk(wait)
    cl.close()


def test_kill_then_wait(srv, counter):
    cl = Client(srv.port)
    ctl = cl.open("proc/%d/ctl" % counter.pid, "w")
    cl.write(ctl, "kill")
    wait = cl.open("proc/%d/wait" % counter.pid)
    assert cl.read(wait) == b"killed 9\n"
    cl.clunk(wait)
    cl.clunk(ctl)
    cl.close()


def test_exit_code(srv, counter):
    """Setting the program's `quit` variable through mem makes it exit with that code."""
    cl = Client(srv.port)
    wait = cl.open("proc/%d/wait" % counter.pid)
    t0 = time.time()
    # the read blocks until the exit: send it first, then write mem on another connection
    cl.c.send(P.Tread(fid=wait, offset=0, count=100, tag=600))
    assert wait_for(lambda: tracer_pid(counter.pid) != 0)    # the read attached it
    cl2 = Client(srv.port)
    mem = cl2.open("proc/%d/mem" % counter.pid, "rw")
    cl2.write(mem, (7).to_bytes(4, "little"), counter.syms["quit"])   # while it runs
    rd = cl.c.recv()
    assert isinstance(rd, P.Rread) and rd.data == b"exited 7\n"
    assert time.time() - t0 < 5
    assert cl.read(wait) == b""
    cl2.clunk(mem)
    cl.clunk(wait)
    cl.close()
    cl2.close()


def test_bad_ctl_commands(srv, counter):
    for dialect in (P.V9P2000U, P.V9P2000):
        cl = Client(srv.port, dialect=dialect)
        ctl = cl.open("proc/%d/ctl" % counter.pid, "w")
        with pytest.raises(Err) as ei:
            cl.write(ctl, "frobnicate now\n")
        assert "frobnicate" in ei.value.msg
        if dialect == P.V9P2000U:
            assert ei.value.errno == errno.EINVAL
        with pytest.raises(Err) as ei:
            cl.write(ctl, "signal NOSUCHSIG\n")
        assert "NOSUCHSIG" in ei.value.msg
        with pytest.raises(Err) as ei:
            cl.write(ctl, "signal\n")
        assert "signal" in ei.value.msg
        with pytest.raises(Err) as ei:
            cl.write(ctl, "stop please\n")
        assert "stop" in ei.value.msg
        cl.clunk(ctl)
        cl.close()
    cl = Client(srv.port)
    ctl = cl.open("proc/%d/ctl" % counter.pid, "w")
    with pytest.raises(Err) as ei:
        cl.write(ctl, "frobnicate")
    assert ei.value.errno == errno.EINVAL
    with pytest.raises(Err) as ei:
        cl.write(ctl, "start")              # not stopped
    assert ei.value.errno == errno.EBUSY
    rf = cl.open("proc/%d/regs" % counter.pid, "rw")
    with pytest.raises(Err) as ei:
        cl.read(rf)                         # running: no registers
    assert ei.value.errno == errno.EBUSY
    cl.write(ctl, "stop")
    with pytest.raises(Err) as ei:
        cl.write(rf, "nosuchreg 0x1\n")
    assert ei.value.errno == errno.EINVAL
    cl.write(ctl, "start")
    cl.clunk(rf)
    cl.clunk(ctl)
    cl.close()


def test_other_user_is_refused(srv, counter):
    pid = counter.pid
    cl = Client(srv.port, uname="nobody", uid=65534)
    # visible, read-only
    assert str(pid) in cl.ls("proc")
    assert cl.readall("proc/%d/status" % pid).split()[0] == b"counter"
    assert cl.readall("proc/%d/cmdline" % pid).startswith(b"/")
    for path, mode in (("ctl", "w"), ("ctl", "r"), ("mem", "r"), ("mem", "w"), ("regs", "r"),
                       ("note", "w"), ("wait", "r"), ("environ", "r"), ("maps", "r"),
                       ("task/%d/ctl" % pid, "w")):
        with pytest.raises(Err) as ei:
            cl.open("proc/%d/%s" % (pid, path), mode)
        assert ei.value.errno in (errno.EACCES, errno.EPERM), path
    assert tracer_pid(pid) == 0 and proc_state(pid) in "RS"
    cl.close()


def test_shell_style_stop_start_and_release(srv, counter):
    """`echo stop > ctl` (open, truncate, write, clunk) leaves it stopped; `echo start >
    ctl` resumes it and, no control file being open, detaches."""
    pid = counter.pid
    cl = Client(srv.port)
    cl.ctl("proc/%d/ctl" % pid, "stop")
    wait_for(lambda: proc_state(pid) == "t" and tracer_pid(pid) != 0)
    assert proc_state(pid) == "t" and tracer_pid(pid) != 0
    assert b"state=stopped" in cl.readall("proc/%d/ctl" % pid)
    assert cl.readall("proc/%d/status" % pid).split()[2] == b"Stopped"
    cl.ctl("proc/%d/ctl" % pid, "start")
    assert wait_for(lambda: tracer_pid(pid) == 0)
    assert proc_state(pid) in "RS"
    # a wait reader holds the attachment; its clunk releases it
    wait = cl.open("proc/%d/wait" % pid)
    cl.c.send(P.Tread(fid=wait, offset=0, count=100, tag=700))
    assert wait_for(lambda: tracer_pid(pid) != 0)
    assert isinstance(cl.c.rpc(P.Tflush(oldtag=700, tag=701)), P.Rflush)
    cl.clunk(wait)
    assert wait_for(lambda: tracer_pid(pid) == 0)
    # detach while held
    ctl = cl.open("proc/%d/ctl" % pid, "w")
    cl.write(ctl, "stop")
    cl.write(ctl, "detach")
    assert wait_for(lambda: tracer_pid(pid) == 0) and proc_state(pid) in "RS"
    cl.clunk(ctl)
    cl.close()
    # nothing open, nothing held: the tracer forgets the process
    from nine.synth import ptrace_thread as PT
    start = PT.starttime(pid)
    assert wait_for(lambda: PT.tracer().known(pid, start) is None)


def test_signals(srv, counter):
    pid = counter.pid
    cl = Client(srv.port)
    wait = cl.open("proc/%d/wait" % pid)
    ctl = cl.open("proc/%d/ctl" % pid, "w")
    # a signal from outside stops the traced process and is reported
    cl.c.send(P.Tread(fid=wait, offset=0, count=100, tag=800))
    assert wait_for(lambda: tracer_pid(pid) != 0)
    os.kill(pid, 12)
    r = cl.c.recv()
    assert r.data == b"stopped 12\n"
    assert wait_for(lambda: proc_state(pid) == "t")
    cl.write(ctl, "waitstop")               # already stopped: returns at once
    # start delivers it: SIGUSR2 kills the program
    cl.write(ctl, "start")
    assert cl.read(wait) == b"killed 12\n"
    cl.clunk(ctl)
    cl.clunk(wait)
    cl.close()


def test_note_is_delivered(srv, counter):
    pid = counter.pid
    cl = Client(srv.port)
    wait = cl.open("proc/%d/wait" % pid)
    ctl = cl.open("proc/%d/ctl" % pid, "w")
    cl.write(ctl, "stop")
    cl.write(ctl, "start")
    note = cl.open("proc/%d/note" % pid, "w")
    with pytest.raises(Err):
        cl.write(note, "NOTASIGNAL")
    cl.write(note, "USR1")                   # our own signal passes the tracer
    assert cl.read(wait) == b"killed 10\n"
    for f in (note, ctl, wait):
        cl.clunk(f)
    cl.close()


def test_threads(srv, counter_exe):
    c = Counter(*counter_exe, threads=2)
    try:
        pid, syms = c.pid, c.syms
        cl = Client(srv.port)
        assert wait_for(lambda: len(os.listdir("/proc/%d/task" % pid)) == 3)
        tids = sorted(int(t) for t in cl.ls("proc/%d/task" % pid))
        assert len(tids) == 3 and pid in tids
        workers = [t for t in tids if t != pid]
        ctl = cl.open("proc/%d/ctl" % pid, "w")
        wait = cl.open("proc/%d/wait" % pid)
        mem = cl.open("proc/%d/mem" % pid, "rw")
        cl.write(ctl, "stop")
        assert all(proc_state(pid) == "t" for t in tids)
        assert all(open("/proc/%d/task/%d/stat" % (pid, t)).read().rsplit(")", 1)[1].split()[0]
                   == "t" for t in tids)
        addr = syms["ttick"]
        orig = cl.read(mem, addr, 1)
        cl.write(mem, b"\xcc", addr)
        cl.write(ctl, "start")
        ev = cl.read(wait).decode()
        assert ev == "breakpoint %#x\n" % addr
        # all-stop: every thread is stopped now
        assert wait_for(lambda: all(
            open("/proc/%d/task/%d/stat" % (pid, t)).read().rsplit(")", 1)[1].split()[0] == "t"
            for t in tids))
        cl.write(mem, orig, addr)
        # the focus is the worker that hit it: regs shows it, and so does its task/TID/regs
        focus = int(cl.readall("proc/%d/ctl" % pid).split(b"focus=")[1].split()[0])
        assert focus in workers
        regs = regs_of(cl.readall("proc/%d/regs" % pid))
        assert regs["rip"] == addr + 1
        tregs = regs_of(cl.readall("proc/%d/task/%d/regs" % (pid, focus)))
        assert tregs["rip"] == addr + 1
        main_regs = regs_of(cl.readall("proc/%d/task/%d/regs" % (pid, pid)))
        assert main_regs["rip"] != addr + 1
        tw = cl.open("proc/%d/task/%d/wait" % (pid, focus))
        assert cl.read(tw) == ("breakpoint %#x\n" % addr).encode()
        cl.clunk(tw)
        # the other worker may have hit it too before it was interrupted: rewind every
        # thread that stopped on the breakpoint, and drain its event
        for t in workers:
            if regs_of(cl.readall("proc/%d/task/%d/regs" % (pid, t)))["rip"] == addr + 1:
                tr = cl.open("proc/%d/task/%d/regs" % (pid, t), "w")
                cl.write(tr, "rip %#x" % addr)
                cl.clunk(tr)
                if t != focus:
                    assert cl.read(wait) == ("breakpoint %#x\n" % addr).encode()
        # per-thread: step and start only that worker
        cl.ctl("proc/%d/task/%d/ctl" % (pid, focus), "step")
        cl.ctl("proc/%d/task/%d/ctl" % (pid, focus), "start")
        t0 = int.from_bytes(cl.read(mem, syms["tcounter"], 8), "little")
        c0 = int.from_bytes(cl.read(mem, syms["counter"], 8), "little")
        time.sleep(0.1)
        assert int.from_bytes(cl.read(mem, syms["tcounter"], 8), "little") > t0
        assert int.from_bytes(cl.read(mem, syms["counter"], 8), "little") == c0
        cl.write(ctl, "start")
        wait_for(lambda: int.from_bytes(cl.read(mem, syms["counter"], 8), "little") > c0)
        assert int.from_bytes(cl.read(mem, syms["counter"], 8), "little") > c0
        cl.write(mem, (3).to_bytes(4, "little"), syms["quit"])
        assert cl.read(wait) == b"exited 3\n"
        for f in (ctl, wait, mem):
            cl.clunk(f)
        cl.close()
    finally:
        c.stop()


def test_hang_stops_at_exec(srv, counter_exe):
    exe, syms = counter_exe
    sh = subprocess.Popen(["sh", "-c", "read x; exec %s" % exe], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE)
    try:
        pid = sh.pid
        cl = Client(srv.port)
        wait = cl.open("proc/%d/wait" % pid)
        cl.ctl("proc/%d/ctl" % pid, "hang")
        sh.stdin.write(b"go\n")
        sh.stdin.flush()
        assert cl.read(wait) == ("exec %s\n" % os.path.realpath(exe)).encode()
        assert proc_state(pid) == "t"
        regs = regs_of(cl.readall("proc/%d/regs" % pid))
        assert regs["rip"] > 0
        # the new image is not running yet: nothing printed
        cl.ctl("proc/%d/ctl" % pid, "start")
        assert sh.stdout.readline().split()[0] == str(pid).encode()
        cl.ctl("proc/%d/ctl" % pid, "kill")
        assert cl.read(wait) == b"killed 9\n"
        cl.clunk(wait)
        cl.close()
    finally:
        if sh.poll() is None:
            sh.kill()
        sh.wait(10)


def test_server_in_main_thread(tmp_path, counter):
    """`python -m nine serve`-like: the server's hub runs in the main thread (default
    loop); the tracer still sees every event."""
    from conftest import free_port, wait_port, ROOT
    port = free_port()
    script = tmp_path / "srv.py"
    script.write_text(
        "import sys\n"
        "sys.path.insert(0, %r)\n"
        "from nine.server.core import Server\n"
        "from nine.synth.files import Dir, SynthFS\n"
        "from nine.synth.proc import proc_tree\n"
        "s = Server({None: SynthFS(Dir('', [proc_tree()])).attach})\n"
        "s.listen('127.0.0.1:%d')\n"
        "import gevent; gevent.wait()\n" % (ROOT, port))
    p = subprocess.Popen([sys.executable, str(script)], stderr=subprocess.PIPE)
    try:
        wait_port(port, proc=p)
        pid, syms = counter.pid, counter.syms
        cl = Client(port)
        ctl = cl.open("proc/%d/ctl" % pid, "w")
        wait = cl.open("proc/%d/wait" % pid)
        mem = cl.open("proc/%d/mem" % pid, "rw")
        cl.write(ctl, "stop")
        orig = cl.read(mem, syms["tick"], 1)
        cl.write(mem, b"\xcc", syms["tick"])
        cl.write(ctl, "startstop")
        assert cl.read(wait) == ("breakpoint %#x\n" % syms["tick"]).encode()
        cl.write(mem, orig, syms["tick"])
        rf = cl.open("proc/%d/regs" % pid, "w")
        cl.write(rf, "rip %#x" % syms["tick"])
        cl.clunk(rf)
        cl.write(ctl, "start")
        cl.write(mem, (5).to_bytes(4, "little"), syms["quit"])
        assert cl.read(wait) == b"exited 5\n"
        cl.close()
    finally:
        p.kill()
        p.wait()


def test_hide_others(counter):
    def make():
        from nine.synth.files import Dir, SynthFS
        from nine.synth.proc import proc_tree
        return {None: SynthFS(Dir("", [proc_tree(hide_others=True)])).attach}
    s = ThreadServer(make)
    try:
        nobody = Client(s.port, uname="nobody", uid=65534)
        assert str(counter.pid) not in nobody.ls("proc")
        with pytest.raises(Err) as ei:
            nobody.walk("proc/%d" % counter.pid)
        assert ei.value.errno == errno.ENOENT
        root = Client(s.port)
        assert str(counter.pid) in root.ls("proc")
        nobody.close()
        root.close()
    finally:
        s.stop()
