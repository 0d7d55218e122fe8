"""One OS thread that owns every ptrace call and every waitpid for tracees.

Linux binds a tracee to the thread that attached it: ptrace requests from any other
thread fail with ESRCH.  So a single daemon thread (the "tracer", one per Python
process, shared by every gevent hub) makes all ptrace(2) calls and all waitpid(2)
calls for tracees.  Greenlets never block their hub on it:

  call(fn, *args)      runs fn(*args) in the tracer thread (holding `lock`) and waits
                       for the result; the waiting greenlet is woken through an
                       async watcher of its own hub (loop.async_().send() is the one
                       libev/libuv call that is safe from a foreign thread)
  wait_until(pred)     waits (greenlet-friendly) until pred() holds; pred is evaluated
                       under `lock`; the tracer wakes every waiter after each change
  submit(fn, *args)    fire and forget (used from clunk hooks)

All tracer state (Proc and Thread records, event queues) is changed only by the
tracer thread, always under `lock`; greenlets read it and pop events under `lock`.
A greenlet killed by Tflush (GreenletExit) while waiting detaches its waker under the
lock before closing it, so the tracer never signals a closed watcher; the request it
was waiting for still runs to completion, which leaves the state consistent.

Event collection: the tracer polls waitpid(-1, WNOHANG|__WALL|__WNOTHREAD): with
__WNOTHREAD it sees only its own tracees, never the children other threads of the
server started (subprocess keeps working).  It polls every 1 ms after any activity,
backing off to 10 ms while a tracee runs, 50 ms when every tracee is stopped, and it
sleeps on its request queue when nothing is traced.  A caveat of ptrace itself:
waitpid on a tracee from any other thread of the process (Popen.wait() on a traced
child) can steal its stop notifications; do not wait for a child while it is traced.

Model (all-stop, like gdb): attaching a process seizes (PTRACE_SEIZE, so nothing
stops) every thread, with TRACECLONE (new threads are traced too) and TRACEEXEC.
A breakpoint, a signal or an exec (with `hang`) in any thread stops the whole process
(the other threads get PTRACE_INTERRUPT), queues an event line and makes that thread
the process's "focus" (whose registers proc/N/regs shows and `step` steps).
"""

import collections
import ctypes
import errno
import logging
import os
import queue
import signal
import struct
import threading
import time

import gevent
import gevent.event

log = logging.getLogger("nine.proc")

# --- raw ptrace ---------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_ptrace = _libc.ptrace
_ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
_ptrace.restype = ctypes.c_long
_tgkill = getattr(_libc, "tgkill", None)

PTRACE_CONT = 7
PTRACE_SINGLESTEP = 9
PTRACE_DETACH = 17
PTRACE_SETOPTIONS = 0x4200
PTRACE_GETEVENTMSG = 0x4201
PTRACE_GETSIGINFO = 0x4202
PTRACE_GETREGSET = 0x4204
PTRACE_SETREGSET = 0x4205
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207

PTRACE_O_TRACECLONE = 0x08
PTRACE_O_TRACEEXEC = 0x10

PTRACE_EVENT_CLONE = 3
PTRACE_EVENT_EXEC = 4
PTRACE_EVENT_STOP = 128

NT_PRSTATUS = 1
WALL = 0x40000000
WNOTHREAD = 0x20000000
SI_KERNEL = 0x80
TRAP_TRACE = 2

OPTIONS = PTRACE_O_TRACECLONE | PTRACE_O_TRACEEXEC

STOPSIGS = frozenset((signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU))
# signals that pass through a traced process without stopping it
PASS = frozenset(getattr(signal, n) for n in (
    "SIGCHLD", "SIGALRM", "SIGWINCH", "SIGURG", "SIGPROF", "SIGVTALRM", "SIGIO", "SIGCONT",
    "SIGPIPE") if hasattr(signal, n))

MAXEVENTS = 1024


def ptrace(req, pid, addr=0, data=0):
    r = _ptrace(req, pid, addr, data)
    if r == -1:
        e = ctypes.get_errno()
        if e:
            raise OSError(e, "ptrace(%#x, %d): %s" % (req, pid, os.strerror(e)))
    return r


def tgkill(tgid, tid, sig):
    if _tgkill is None:
        os.kill(tid, sig)
        return
    if _tgkill(tgid, tid, sig) == -1:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


class _iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


# --- registers (NT_PRSTATUS layout per architecture) ----------------------------------

_MACHINE = os.uname().machine      # (what platform.machine() says, without importing it)
if _MACHINE == "x86_64":
    REGNAMES = ("r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax rcx rdx rsi rdi orig_rax rip cs "
                "eflags rsp ss fs_base gs_base ds es fs gs").split()
    PC = "rip"
    BP_ADJUST = 1          # after int3 the pc is one past the breakpoint
    BREAKPOINT = b"\xcc"
elif _MACHINE in ("aarch64", "arm64"):
    REGNAMES = ["x%d" % i for i in range(31)] + ["sp", "pc", "pstate"]
    PC = "pc"
    BP_ADJUST = 0
    BREAKPOINT = struct.pack("<I", 0xd4200000)   # brk #0
else:  # pragma: no cover - other architectures: registers as r0..rN
    REGNAMES = ["r%d" % i for i in range(64)]
    PC = None
    BP_ADJUST = 0
    BREAKPOINT = b""
_REGFMT = "<%dQ" % len(REGNAMES)
_REGSIZE = struct.calcsize(_REGFMT)


def getregs(tid):
    buf = ctypes.create_string_buffer(_REGSIZE)
    iov = _iovec(ctypes.cast(buf, ctypes.c_void_p), _REGSIZE)
    ptrace(PTRACE_GETREGSET, tid, NT_PRSTATUS, ctypes.addressof(iov))
    vals = struct.unpack_from(_REGFMT, buf.raw[:iov.len] + bytes(_REGSIZE - iov.len))
    return dict(zip(REGNAMES, vals))


def setregs(tid, regs):
    buf = ctypes.create_string_buffer(struct.pack(_REGFMT, *(regs[n] for n in REGNAMES)),
                                      _REGSIZE)
    iov = _iovec(ctypes.cast(buf, ctypes.c_void_p), _REGSIZE)
    ptrace(PTRACE_SETREGSET, tid, NT_PRSTATUS, ctypes.addressof(iov))


def getsiginfo(tid):
    buf = ctypes.create_string_buffer(128)
    ptrace(PTRACE_GETSIGINFO, tid, 0, ctypes.addressof(buf))
    signo, _errno, code = struct.unpack_from("<iii", buf.raw)
    return signo, code


def geteventmsg(tid):
    v = ctypes.c_ulong()
    ptrace(PTRACE_GETEVENTMSG, tid, 0, ctypes.addressof(v))
    return v.value


# --- /proc helpers -------------------------------------------------------------------

def proc_stat(pid, task=None):
    """The fields of /proc/PID/stat (or /proc/PID/task/TID/stat) after the comm, with the
    comm as field 1: a list indexed as in proc(5) minus one (f[0] pid, f[1] comm, f[2] state)."""
    path = "/proc/%d/stat" % pid if task is None else "/proc/%d/task/%d/stat" % (pid, task)
    with open(path, "rb") as f:
        s = f.read().decode("utf-8", "replace")
    lp, rp = s.index("("), s.rindex(")")
    return [s[:lp].strip(), s[lp + 1:rp]] + s[rp + 2:].split()


def starttime(pid):
    """The process's start time (clock ticks since boot), None if it is gone."""
    try:
        return int(proc_stat(pid)[21])
    except (OSError, ValueError, IndexError):
        return None


def _tgid_of(tid):
    try:
        with open("/proc/%d/status" % tid) as f:
            for line in f:
                if line.startswith("Tgid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


# --- records -------------------------------------------------------------------------

class Thread:
    __slots__ = ("tid", "state", "pending", "hold", "stepping", "bp")

    def __init__(self, tid):
        self.tid = tid
        self.state = "running"      # running | stopped
        self.pending = 0            # signal to deliver when resumed
        self.hold = False           # stopped on request of task/TID/ctl
        self.stepping = False
        self.bp = False             # last stop was a breakpoint (never re-deliver SIGTRAP)


class Proc:
    """A traced (or traceable) process, identified by (pid, start time).  Open control
    files hold a reference (refs); the attachment lasts while refs > 0, or while the
    process is held stopped or waits to hang at exec."""

    def __init__(self, pid, start):
        self.pid = pid
        self.start = start
        self.refs = 0
        self.attached = False
        self.detaching = False
        self.threads = {}           # tid -> Thread (traced, alive)
        self.held = False           # stopped by `stop` or by an event (all-stop)
        self.breakpoints = False    # an int3 was written through mem while attached
        self.jobstop = False        # a job-control stop was seen: `start` sends SIGCONT
        self.hang = False
        self.owner = None           # owner (uid of /proc/PID) when attached
        self.focus = pid
        self.exited = None          # the exit event line, once the process is gone
        self.events = collections.deque(maxlen=MAXEVENTS)
        self.tevents = {}           # tid -> deque of that thread's events
        self.inject = collections.Counter()   # signals we sent: deliver, do not stop

    # predicates (call under the tracer lock)
    def all_stopped(self):
        return self.attached and bool(self.threads) and all(
            t.state == "stopped" and not t.stepping for t in self.threads.values())

    def focus_thread(self):
        t = self.threads.get(self.focus) or self.threads.get(self.pid)
        if t is None and self.threads:
            t = next(iter(self.threads.values()))
        return t

    def push(self, line, tid=None):
        self.events.append(line)
        if tid is not None:
            self.tpush(line, tid)

    def tpush(self, line, tid):
        q = self.tevents.get(tid)
        if q is None:
            if len(self.tevents) > 4096:
                for k in [k for k, v in self.tevents.items() if not v]:
                    del self.tevents[k]
            q = self.tevents[tid] = collections.deque(maxlen=MAXEVENTS)
        q.append(line)

    def state_name(self):
        if self.exited:
            return "exited"
        if not self.attached:
            return "untraced"
        if self.all_stopped():
            return "stopped"
        if self.held:
            return "stopping"
        return "running"


# --- cross-thread wakeups -------------------------------------------------------------

class _Waker:
    """Wakes one greenlet of a given hub from any thread."""
    __slots__ = ("ev", "w")

    def __init__(self):
        hub = gevent.get_hub()
        self.ev = gevent.event.Event()
        self.w = hub.loop.async_()
        self.w.start(self.ev.set)

    def send(self):
        self.w.send()

    def close(self):
        self.w.stop()
        self.w.close()


class _Request:
    __slots__ = ("fn", "args", "done", "result", "exc", "waker")

    def __init__(self, fn, args, waker):
        self.fn = fn
        self.args = args
        self.done = False
        self.result = None
        self.exc = None
        self.waker = waker


class Tracer:
    def __init__(self):
        self.lock = threading.Lock()
        self.q = queue.SimpleQueue()
        self.procs = {}           # (pid, start) -> Proc, while referenced or attached
        self.threads = {}         # tid -> (Proc, Thread), traced threads only
        self.waiters = set()
        self.ident = None
        self._interval = 0.001
        self.t = threading.Thread(target=self._run, name="nine-ptrace", daemon=True)
        self.t.start()

    # --- greenlet side ------------------------------------------------------------
    def call(self, fn, *args):
        """Run fn(*args) in the tracer thread (under the lock); return its result or
        raise its exception.  Cancellable (GreenletExit) without harm."""
        if threading.get_ident() == self.ident:
            return fn(*args)
        waker = _Waker()
        req = _Request(fn, args, waker)
        try:
            self.q.put(req)
            while True:
                with self.lock:
                    if req.done:
                        break
                waker.ev.wait()
                waker.ev.clear()
        finally:
            with self.lock:
                req.waker = None
            waker.close()
        if req.exc is not None:
            raise req.exc
        return req.result

    def submit(self, fn, *args):
        self.q.put(_Request(fn, args, None))

    def wait_until(self, pred, timeout=None):
        """Wait until pred() (evaluated under the lock) is true; return its value, or
        None on timeout."""
        waker = _Waker()
        try:
            with self.lock:
                v = pred()
                if v:
                    return v
                self.waiters.add(waker)
            while True:
                if not waker.ev.wait(timeout):
                    return None
                waker.ev.clear()
                with self.lock:
                    v = pred()
                    if v:
                        return v
        finally:
            with self.lock:
                self.waiters.discard(waker)
            waker.close()

    def known(self, pid, start):
        """The Proc record for (pid, start) if one exists (referenced or attached)."""
        with self.lock:
            return self.procs.get((pid, start))

    def ref(self, pid, start):
        with self.lock:
            p = self.procs.get((pid, start))
            if p is None:
                p = self.procs[(pid, start)] = Proc(pid, start)
            p.refs += 1
            return p

    def unref(self, p):
        with self.lock:
            p.refs -= 1
            last = p.refs <= 0
        if last:
            self.submit(self._release, p)

    # --- tracer thread ------------------------------------------------------------
    def _run(self):
        self.ident = threading.get_ident()
        while True:
            try:
                self._loop_once()
            except Exception:   # the tracer must survive anything
                log.exception("tracer loop")
                time.sleep(0.01)

    def _loop_once(self):
        timeout = self._timeout()
        try:
            req = self.q.get(timeout=timeout) if timeout is not None else self.q.get()
        except queue.Empty:
            req = None
        changed = False
        with self.lock:
            while req is not None:
                self._exec(req)
                changed = True
                try:
                    req = self.q.get_nowait()
                except queue.Empty:
                    req = None
            if self.threads or any(p.detaching for p in self.procs.values()):
                changed |= self._reap()
            if changed:
                self._interval = 0.001
                for w in self.waiters:
                    w.send()
            else:
                self._interval = min(self._interval * 1.5, 0.05)

    def _timeout(self):
        if not self.threads:
            return None
        running = any(t.state == "running" for _, t in self.threads.values())
        return min(self._interval, 0.01) if running else self._interval

    def _exec(self, req):
        try:
            req.result = req.fn(*req.args)
        except BaseException as ex:   # delivered to the caller
            req.exc = ex
        req.done = True
        if req.waker is not None:
            req.waker.send()

    def _reap(self):
        changed = False
        while True:
            try:
                tid, status = os.waitpid(-1, os.WNOHANG | WALL | WNOTHREAD)
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            if tid == 0:
                break
            changed = True
            try:
                self._handle(tid, status)
            except Exception:   # never let one odd event kill the tracer
                log.exception("ptrace event %d %#x", tid, status)
        return changed

    # --- attaching and detaching (tracer thread) ----------------------------------
    def _attach(self, p):
        if p.exited:
            raise OSError(errno.ESRCH, "process %d has exited" % p.pid)
        if p.attached and not p.detaching:
            return
        if p.detaching:
            raise OSError(errno.EBUSY, "process %d is being detached" % p.pid)
        if starttime(p.pid) != p.start:
            raise OSError(errno.ESRCH, "process %d has exited" % p.pid)
        if p.pid == os.getpid():
            raise OSError(errno.EPERM, "the server cannot trace itself")
        first = True
        while True:
            try:
                tids = [int(t) for t in os.listdir("/proc/%d/task" % p.pid)]
            except FileNotFoundError:
                tids = []
            new = [t for t in tids if t not in p.threads]
            if not new:
                break
            for tid in new:
                try:
                    ptrace(PTRACE_SEIZE, tid, 0, OPTIONS)
                except OSError as ex:
                    if ex.errno == errno.ESRCH and not (first and tid == p.pid):
                        continue    # a thread that exited meanwhile
                    if first and not p.threads:
                        if ex.errno == errno.EPERM and _exiting(p.pid):
                            raise OSError(errno.ESRCH, "process %d has exited" % p.pid)
                        if ex.errno == errno.EPERM:
                            raise OSError(errno.EPERM, "cannot trace process %d: %s" % (
                                p.pid, "already traced, or not permitted")) from None
                        raise
                    continue
                th = Thread(tid)
                p.threads[tid] = th
                self.threads[tid] = (p, th)
            first = False
        if not p.threads:
            raise OSError(errno.ESRCH, "process %d has exited" % p.pid)
        p.attached = True
        p.focus = p.pid
        p.owner = _owner(p.pid)
        if p.held:      # a stop asked before the attachment
            self._interrupt_all(p)

    def _detach(self, p):
        """Detach every thread (a running one is interrupted first; its stop finishes
        the detach in _handle).  The process runs on."""
        if not p.attached:
            return
        p.breakpoints = False
        p.held = False
        p.hang = False
        p.detaching = True
        for t in list(p.threads.values()):
            t.hold = False
            if t.state == "stopped" and not t.stepping:
                self._detach_thread(p, t)
            else:
                try:
                    ptrace(PTRACE_INTERRUPT, t.tid)
                except OSError:
                    pass
        self._detached_check(p)

    def _detach_thread(self, p, t):
        sig = 0 if t.bp else t.pending
        try:
            ptrace(PTRACE_DETACH, t.tid, 0, sig)
        except OSError:
            pass
        p.threads.pop(t.tid, None)
        self.threads.pop(t.tid, None)

    def _detached_check(self, p):
        if p.detaching and not p.threads:
            p.detaching = False
            p.attached = False
            if p.jobstop:
                p.jobstop = False
                try:
                    os.kill(p.pid, signal.SIGCONT)
                except OSError:
                    pass
            if p.refs <= 0:
                self.procs.pop((p.pid, p.start), None)

    def _release(self, p):
        """The last control file was clunked: detach unless the process is held."""
        if p.refs > 0:
            return
        if p.exited or not p.attached:
            if not p.detaching:
                self.procs.pop((p.pid, p.start), None)
            return
        if p.held or p.hang or p.breakpoints or any(t.hold for t in p.threads.values()):
            # stays attached until someone starts or detaches it; with an int3 planted
            # through mem, detaching would let the trap kill the process
            return
        self._detach(p)

    # --- resuming and stopping (tracer thread) --------------------------------------
    def _resume(self, p, t, step=False):
        sig = 0 if t.bp else t.pending
        req = PTRACE_SINGLESTEP if (step or t.stepping) else PTRACE_CONT
        try:
            ptrace(req, t.tid, 0, sig)
        except OSError as ex:
            if ex.errno != errno.ESRCH:
                raise
        t.pending = 0
        t.bp = False
        t.state = "running"

    def _interrupt_all(self, p, but=None):
        for t in p.threads.values():
            if t is not but and t.state == "running":
                try:
                    ptrace(PTRACE_INTERRUPT, t.tid)
                except OSError:
                    pass

    def _stop_event(self, p, t, line):
        """A thread stopped on its own (breakpoint, signal, exec): all-stop."""
        p.focus = t.tid
        p.push(line, t.tid)
        if not p.held:
            p.held = True
            self._interrupt_all(p, but=t)

    # --- commands (tracer thread) --------------------------------------------------
    def cmd_stop(self, p, t=None):
        self._attach(p)
        if t is None:
            p.held = True
            self._interrupt_all(p)
        else:
            th = self._thread(p, t)
            th.hold = True
            if th.state == "running":
                ptrace(PTRACE_INTERRUPT, th.tid)

    def cmd_start(self, p, t=None):
        if not p.attached or p.detaching:
            if p.exited:
                raise OSError(errno.ESRCH, "process %d has exited" % p.pid)
            if _is_jobstopped(p.pid):
                os.kill(p.pid, signal.SIGCONT)
                return
            raise OSError(errno.EBUSY, "process %d is not stopped" % p.pid)
        if t is None:
            stopped = [th for th in p.threads.values() if th.state == "stopped"]
            if not stopped and not p.held:
                raise OSError(errno.EBUSY, "process %d is not stopped" % p.pid)
            p.held = False
            for th in p.threads.values():
                th.hold = False
            for th in stopped:
                self._resume(p, th)
            if p.jobstop:
                p.jobstop = False
                os.kill(p.pid, signal.SIGCONT)
            if p.refs <= 0:
                self._release(p)
        else:
            th = self._thread(p, t)
            th.hold = False
            if th.state != "stopped":
                raise OSError(errno.EBUSY, "thread %d is not stopped" % th.tid)
            self._resume(p, th)

    def cmd_step(self, p, t=None):
        if not p.attached:
            raise OSError(errno.EBUSY, "process %d is not stopped" % p.pid)
        th = self._thread(p, t) if t is not None else p.focus_thread()
        if th is None or th.state != "stopped":
            raise OSError(errno.EBUSY, "%s is not stopped" % (
                "process %d" % p.pid if t is None else "thread %d" % t))
        th.stepping = True
        pending, th.pending = th.pending, 0   # a pending signal waits for `start`
        bp, th.bp = th.bp, False
        try:
            ptrace(PTRACE_SINGLESTEP, th.tid, 0, 0)
        except OSError:
            th.stepping = False
            th.pending, th.bp = pending, bp
            raise
        th.pending = pending
        th.state = "running"
        return th

    def cmd_hang(self, p, on):
        if on:
            self._attach(p)
        p.hang = on

    def cmd_detach(self, p):
        self._detach(p)

    def cmd_signal(self, p, sig, t=None):
        if p.exited:
            raise OSError(errno.ESRCH, "process %d has exited" % p.pid)
        if p.attached and sig not in (signal.SIGKILL, 0):
            p.inject[sig] += 1
        if t is None:
            os.kill(p.pid, sig)
        else:
            tgkill(p.pid, t, sig)

    def cmd_kill(self, p):
        if p.exited:
            raise OSError(errno.ESRCH, "process %d has exited" % p.pid)
        if not p.attached:
            try:
                self._attach(p)     # so that the death is reported on `wait`
            except OSError:
                pass
        os.kill(p.pid, signal.SIGKILL)

    def cmd_getregs(self, p, t=None):
        th = self._regs_thread(p, t)
        return getregs(th.tid)

    def cmd_setregs(self, p, changes, t=None):
        th = self._regs_thread(p, t)
        regs = getregs(th.tid)
        regs.update(changes)
        setregs(th.tid, regs)

    def _regs_thread(self, p, t):
        if not p.attached:
            raise OSError(errno.EBUSY, "process %d is not stopped" % p.pid)
        th = self._thread(p, t) if t is not None else p.focus_thread()
        if th is None or th.state != "stopped" or th.stepping:
            raise OSError(errno.EBUSY, "%s is not stopped" % (
                "process %d" % p.pid if t is None else "thread %d" % t))
        return th

    def _thread(self, p, tid):
        th = p.threads.get(tid)
        if th is None:
            raise OSError(errno.ESRCH, "thread %d is not traced or has exited" % tid)
        return th

    def attach(self, p):
        self._attach(p)

    # --- events (tracer thread) ------------------------------------------------------
    def _handle(self, tid, status):
        rec = self.threads.get(tid)
        if rec is None:
            rec = self._adopt(tid)
            if rec is None:
                return
        p, t = rec
        if os.WIFEXITED(status) or os.WIFSIGNALED(status):
            line = ("exited %d" % os.WEXITSTATUS(status) if os.WIFEXITED(status)
                    else "killed %d" % os.WTERMSIG(status))
            p.threads.pop(tid, None)
            self.threads.pop(tid, None)
            if tid == p.pid:
                self._gone(p, line)
            else:
                p.tpush(line, tid)      # a thread's end: that thread's wait only
                self._detached_check(p)
            return
        if not os.WIFSTOPPED(status):
            return
        sig = os.WSTOPSIG(status)
        event = status >> 16
        t.state = "stopped"
        was_stepping, t.stepping = t.stepping, False
        if p.detaching:
            if event == 0 and sig == signal.SIGTRAP:
                try:
                    if getsiginfo(tid)[1] in (SI_KERNEL, TRAP_TRACE):
                        sig = 0
                except OSError:
                    pass
            t.bp = False
            t.pending = sig if event == 0 else 0
            self._detach_thread(p, t)
            self._detached_check(p)
            return
        if event == PTRACE_EVENT_STOP:
            if sig in STOPSIGS:             # group-stop (job control)
                p.jobstop = True
                if not p.held and not t.hold:
                    self._stop_event(p, t, "stopped %d" % sig)
            elif not (p.held or t.hold or was_stepping):
                self._resume(p, t)          # a stale interrupt or a new thread's first stop
            return
        if event == PTRACE_EVENT_CLONE:
            try:
                new = geteventmsg(tid)
            except OSError:
                new = None
            if new and new not in self.threads:
                nt = Thread(new)
                p.threads[new] = nt
                self.threads[new] = (p, nt)
            if not (p.held or t.hold):
                self._resume(p, t)
            return
        if event == PTRACE_EVENT_EXEC:
            try:
                former = geteventmsg(tid)
            except OSError:
                former = tid
            # every other thread is gone; the execing thread now has the leader's tid
            for otid in list(p.threads):
                if otid != tid:
                    p.threads.pop(otid, None)
                    self.threads.pop(otid, None)
            if former != tid:
                p.threads[tid] = t
                self.threads[tid] = (p, t)
                t.tid = tid
            if _owner(p.pid) != p.owner:
                # a setuid exec: whoever controlled it may no longer; let it go
                try:
                    exe = os.readlink("/proc/%d/exe" % p.pid)
                except OSError:
                    exe = "?"
                p.push("exec %s" % exe, tid)
                self._detach(p)
                return
            if p.hang:
                try:
                    exe = os.readlink("/proc/%d/exe" % p.pid)
                except OSError:
                    exe = "?"
                self._stop_event(p, t, "exec %s" % exe)
            elif not (p.held or t.hold):
                self._resume(p, t)
            return
        if event != 0:      # an event we did not ask for
            if not (p.held or t.hold):
                self._resume(p, t)
            return
        # signal-delivery-stop
        if sig == signal.SIGTRAP:
            try:
                _, code = getsiginfo(tid)
            except OSError:
                code = None
            if code == SI_KERNEL:
                t.bp = True
                pc = _pc(tid)
                self._stop_event(p, t, "breakpoint %#x" % (pc - BP_ADJUST))
                return
            if was_stepping and code == TRAP_TRACE:
                if not (p.held or t.hold):      # `start` came while stepping
                    self._resume(p, t)
                return
        if p.inject.get(sig):
            p.inject[sig] -= 1
            t.pending = sig
            self._resume(p, t)
            return
        if sig in PASS:
            t.pending = sig
            self._resume(p, t)
            return
        t.pending = 0 if sig in STOPSIGS else sig
        self._stop_event(p, t, "stopped %d" % sig)

    def _adopt(self, tid):
        """A stop from a tid we do not know yet: a new thread whose creator's clone
        event is still to come."""
        tgid = _tgid_of(tid)
        for p in self.procs.values():
            if p.pid == tgid and p.attached:
                t = Thread(tid)
                p.threads[tid] = t
                self.threads[tid] = (p, t)
                return p, t
        try:
            ptrace(PTRACE_DETACH, tid, 0, 0)
        except OSError:
            pass
        return None

    def _gone(self, p, line):
        p.exited = line
        p.push(line, p.pid)
        for otid in list(p.threads):
            self.threads.pop(otid, None)
        p.threads.clear()
        p.attached = False
        p.detaching = False
        p.held = False
        if p.refs <= 0:
            self.procs.pop((p.pid, p.start), None)


def _pc(tid):
    if PC is None:
        return 0
    return getregs(tid)[PC]


def _owner(pid):
    try:
        return os.stat("/proc/%d" % pid).st_uid
    except OSError:
        return None


def _exiting(pid):
    try:
        return proc_stat(pid)[2] in "ZXx"
    except (OSError, IndexError):
        return True


def _is_jobstopped(pid):
    try:
        return proc_stat(pid)[2] == "T"
    except (OSError, IndexError):
        return False


_tracer = None
_tracer_lock = threading.Lock()


def tracer():
    """The process-wide tracer thread (started on first use)."""
    global _tracer
    if _tracer is None:
        with _tracer_lock:
            if _tracer is None:
                _tracer = Tracer()
    return _tracer
