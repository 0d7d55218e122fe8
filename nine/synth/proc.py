"""Plan 9-style process control as synthetic files (proc(3) on Linux, through ptrace).

    from nine.synth.files import Dir, SynthFS
    from nine.synth.proc import proc_tree
    export = SynthFS(Dir("", [proc_tree()])).attach      # proc/PID/...

proc/ has one directory per process (threads are under proc/PID/task/).  proc/PID/ holds

  the Linux files of /proc/PID (cmdline, environ, stat, statm, maps, limits, ...): each
      open reads the real file once, so an open sees one consistent snapshot.  Linux's
      `status` is shown as `lstatus`; `mem`, `pagemap` and `clear_refs` are not copied.
  ctl     write one command per line (a write may hold several lines):
            stop       stop every thread; returns once all are stopped
            start      resume (a signal that stopped the process is delivered now)
            step       single-step the focus thread (returns when the step is done)
            waitstop   returns when the process has stopped (ESRCH if it exits)
            startstop  start, then waitstop
            kill       SIGKILL
            signal S   post signal S (name such as INT or SIGINT, or number)
            hang       stop at the next exec (event `exec PATH`); nohang undoes it
            detach     release the process (it runs on)
          a read gives the control state: `pid=N state=S focus=TID hang=0|1 threads=N`
  mem     the address space: read/write at offset = virtual address (/proc/PID/mem;
          writes work on a running process too; offsets >= 2^63 reach kernel addresses)
  regs    registers of the focus thread as `name 0xvalue` lines (the process must be
          stopped); write `name value` lines to change only the named registers
  note    write a signal name or number to post it (also `interrupt`, `hangup`, `alarm`,
          `kill`, `term` as Plan 9-style notes)
  wait    each read returns the next event line; blocks until there is one (a read that
          continues right after an event, as the Linux client's read loop does, returns
          empty when no event is queued, so `cat wait` prints events as they come); EOF once the
          process is gone and every event has been read:
            stopped SIGNUM     a signal stopped it (delivered on `start` unless a stop
                               signal; the job-control group-stop is reported the same way)
            breakpoint ADDR    an int3 (x86_64; brk on arm64) at ADDR (hex)
            exec PATH          after `hang`
            exited CODE / killed SIGNUM
          `stop`, `step` and `start` are the controller's own actions: no events.
  status  one Plan 9 status line: name user state utime stime real cutime cstime creal
          (ms) memory(KB) basepri pri
  task/TID/  the Linux files of that thread plus ctl, regs, wait, status for that thread
          alone (`stop`/`start`/`step` act on that thread only; `kill`, `hang`,
          `detach` act on the process).

The focus thread of a process is the one that reported the latest event (else the
main thread).  Every event of any thread goes to proc/PID/wait, a thread's events (and
its own exit) also to task/TID/wait.

Attachment: the first command, regs access or wait read seizes the process (every
thread, PTRACE_SEIZE: nothing stops).  Opens of ctl/regs/note/wait (process or task)
hold a reference; when the last is clunked the process is detached unless it is being
held stopped (by `stop` or an event), waits to hang, or has an int3 written through mem
(until `detach`): so `echo stop > ctl` followed by
`echo start > ctl` works from a shell.  All ptrace work happens in one OS thread, see
nine.synth.ptrace_thread.

Security: judged on the attaching user (ctx.uid; None or 0 is root), never on the
server's own uid.  Every process is listed (pass hide_others=True to list only the
user's own processes, to root: all).  Files are owned by the process's owner (the owner
of /proc/PID: the effective uid, root for a non-dumpable process); ctl, mem, regs are
0600, note 0200, wait 0400, Linux files whose Linux counterpart needs ptrace access
(environ, maps, auxv, ...) 0400, the harmless ones (cmdline, comm, stat, statm, lstatus,
limits, ...) 0444, status 0444.  So another user can see and read the harmless files
of a process and gets EACCES when opening its control files or mem.

Read-only (proc_tree(read_only=True), `nine serve --read-only`): no process is changed.
Opening ctl, regs, note or mem (process or task) for writing fails with EROFS; reads
(ctl's state, regs, mem, wait, status, the Linux files) work as before.
"""

import errno
import os
import signal

from ..protocol import L_O_ACCMODE, L_O_RDONLY, L_O_TRUNC
from ..server.node import error
from ..server.users import USERS
from .files import Dir, File
from . import ptrace_thread as PT

# Linux /proc/PID files that any user may read in Linux itself (no ptrace-access check)
WORLD = frozenset("""cmdline comm stat statm status cgroup cpuset limits loginuid sessionid
oom_score oom_score_adj oom_adj mountinfo mounts mountstats sched schedstat uid_map gid_map
projid_map setgroups cpu_resctrl_groups arch_status patch_state""".split())
# never copied: huge, write-only, or replaced by our own
SKIP = frozenset(("mem", "pagemap", "clear_refs", "kpageflags", "kpagecount"))
RENAME = {"status": "lstatus"}
MAXSNAP = 64 << 20

NOTES = {"interrupt": signal.SIGINT, "hangup": signal.SIGHUP, "alarm": signal.SIGALRM,
         "kill": signal.SIGKILL, "term": signal.SIGTERM, "quit": signal.SIGQUIT}

_STATES = {"R": "Running", "S": "Sleep", "D": "Wakeme", "T": "Stopped", "t": "Stopped",
           "Z": "Moribund", "X": "Dead", "I": "Idle", "P": "Parked", "W": "Waking",
           "K": "Wakekill"}


def proc_tree(name="proc", hide_others=False, read_only=False):
    """The `proc` directory: mount it into a synthetic tree,
    e.g. SynthFS(Dir("", [proc_tree()])).attach.  read_only: no control file or mem
    opens for writing (EROFS)."""
    return ProcRoot(name, hide_others, read_only)


# --- helpers ---------------------------------------------------------------------------

def _is_root(ctx):
    return ctx.uid is None or ctx.uid == 0


def _owner(pid):
    try:
        return os.stat("/proc/%d" % pid).st_uid
    except OSError:
        return None


def _check_owner(ctx, h):
    """Only the process's owner (now: a setuid exec changes it) or root may control it."""
    if _is_root(ctx):
        return
    if ctx.uid != h.uid or _owner(h.pid) not in (h.uid, None):
        raise error(errno.EACCES, "permission denied: not the owner of process %d" % h.pid)


def _check_writable(ctx, h, flags, what):
    """The owner check, and EROFS for an open for writing in a read-only tree."""
    _check_owner(ctx, h)
    if h.read_only and ((flags & L_O_ACCMODE) != L_O_RDONLY or flags & L_O_TRUNC):
        raise error(errno.EROFS, "%s: this server is read-only (--read-only): no process "
                    "is changed" % what)


def parse_signal(word):
    """A signal from a name (INT, SIGINT, sigint) or a number; ValueError if bad."""
    w = word.strip()
    if w.isdigit():
        n = int(w)
        if 0 < n < signal.NSIG:
            return n
        raise ValueError(word)
    if w.lower() in NOTES:
        return int(NOTES[w.lower()])
    u = w.upper()
    if not u.startswith("SIG"):
        u = "SIG" + u
    s = getattr(signal, u, None)
    if isinstance(s, signal.Signals):
        return int(s)
    raise ValueError(word)


def _read_proc_file(path):
    with open(path, "rb", buffering=0) as f:
        parts = []
        n = 0
        while n < MAXSNAP:
            b = f.read(min(1 << 20, MAXSNAP - n))
            if not b:
                break
            parts.append(b)
            n += len(b)
    return b"".join(parts)


class _LazyEntries:
    """A mapping for SynthNode: `get(name)` looks one name up, `items()` lists all."""

    def __init__(self, get, items):
        self.get = get
        self._items = items

    def items(self):
        return self._items()

    def __contains__(self, name):
        return self.get(name) is not None


# --- proc/ ---------------------------------------------------------------------------

class ProcRoot(Dir):
    def __init__(self, name="proc", hide_others=False, read_only=False):
        super().__init__(name, mode=0o555)
        self.hide_others = hide_others
        self.read_only = read_only
        self._cache = {}          # pid -> ProcDir

    def _lookup(self, pid, ctx, listed=False):
        start = PT.starttime(pid)
        d = self._cache.get(pid)
        if start is None:
            # gone; still walkable while control files of it are open (Moribund), so
            # that `kill` and then opening `wait` reads the death
            if d is not None and PT.tracer().known(pid, d.start) is not None:
                return d
            self._cache.pop(pid, None)
            return None
        try:
            st = os.stat("/proc/%d" % pid)
        except OSError:
            self._cache.pop(pid, None)
            return None
        if d is None or d.start != start or (d.uid, d.gid) != (st.st_uid, st.st_gid):
            # new, or the pid was reused, or a setuid exec changed its owner
            if not listed:
                tgid = PT._tgid_of(pid)
                if tgid is not None and tgid != pid:
                    return None         # a thread id: threads live under task/
            d = ProcDir(pid, start, st.st_uid, st.st_gid, self.read_only)
            self._cache[pid] = d
        if self.hide_others and not _is_root(ctx) and d.uid != ctx.uid:
            return None
        return d

    def entries(self, ctx):
        def get(name):
            if not name.isdigit() or name.startswith("0"):
                return None
            return self._lookup(int(name), ctx)

        def items():
            pids = set(int(n) for n in os.listdir("/proc") if n.isdigit())
            for stale in set(self._cache) - pids:
                if PT.tracer().known(stale, self._cache[stale].start) is None:
                    del self._cache[stale]
                else:
                    pids.add(stale)
            pids = sorted(pids)
            out = []
            for pid in pids:
                d = self._lookup(pid, ctx, listed=True)
                if d is not None:
                    out.append((str(pid), d))
            return out
        return _LazyEntries(get, items)


def _real_files(dirpath, uid, gid, pid, start, tid=None):
    """File entries for the regular files of a /proc directory: per-open snapshots."""
    out = []
    for de in os.scandir(dirpath):
        try:
            if not de.is_file(follow_symlinks=False):
                continue
        except OSError:
            continue
        if de.name in SKIP:
            continue
        path = de.path
        mode = 0o444 if de.name in WORLD else 0o400

        def opener(ctx, flags, path=path):
            if PT.starttime(pid) != start:
                raise error(errno.ESRCH, "process %d has exited" % pid)
            return _read_proc_file(path)

        out.append(File(RENAME.get(de.name, de.name), open=opener,
                        read=lambda ctx, state: state, mode=mode, uid=uid, gid=gid,
                        blocking=True))
    return out


class ProcDir(Dir):
    """proc/PID/ for one process, identified by (pid, start time).  Its entries are made
    on first use: listing proc/ stays cheap."""

    def __init__(self, pid, start, uid, gid, read_only):
        super().__init__(str(pid), mode=0o555, uid=uid, gid=gid)
        self.pid = pid
        self.start = start
        self.read_only = read_only
        self.built = False

    def entries(self, ctx):
        if not self.built:
            h = _Handle(self.pid, self.start, self.uid, None, self.read_only)
            kids = {}
            try:
                for e in _real_files("/proc/%d" % self.pid, self.uid, self.gid, self.pid,
                                     self.start):
                    kids[e.name] = e
            except FileNotFoundError:
                pass                        # gone (Moribund): control files only
            for e in _control_files(h, self.uid, self.gid, with_mem=True):
                kids[e.name] = e
            kids["task"] = TaskDir(h, self.uid, self.gid)
            self.children = kids
            self.built = True
        return self.children


class TaskDir(Dir):
    def __init__(self, h, uid, gid):
        super().__init__("task", mode=0o555, uid=uid, gid=gid)
        self.h = h
        self._cache = {}          # tid -> ThreadDir

    def _lookup(self, tid):
        try:
            start = int(PT.proc_stat(self.h.pid, tid)[21])
        except (OSError, ValueError, IndexError):
            self._cache.pop(tid, None)
            return None
        d = self._cache.get(tid)
        if d is None or d.tstart != start:
            try:
                d = ThreadDir(self.h, tid, start, self.uid, self.gid)
            except FileNotFoundError:
                return None
            self._cache[tid] = d
        return d

    def entries(self, ctx):
        def get(name):
            if not name.isdigit():
                return None
            return self._lookup(int(name))

        def items():
            try:
                tids = sorted(int(n) for n in os.listdir("/proc/%d/task" % self.h.pid))
            except FileNotFoundError:
                tids = []
            for stale in set(self._cache) - set(tids):
                del self._cache[stale]
            out = []
            for tid in tids:
                d = self._lookup(tid)
                if d is not None:
                    out.append((str(tid), d))
            return out
        return _LazyEntries(get, items)


class ThreadDir(Dir):
    def __init__(self, h, tid, tstart, uid, gid):
        super().__init__(str(tid), mode=0o555, uid=uid, gid=gid)
        self.tstart = tstart
        th = _Handle(h.pid, h.start, h.uid, tid, h.read_only)
        for e in _real_files("/proc/%d/task/%d" % (h.pid, tid), uid, gid, h.pid, h.start,
                             tid):
            self.children[e.name] = e
        for e in _control_files(th, uid, gid, with_mem=False):
            self.children[e.name] = e


# --- the control files -----------------------------------------------------------------

class _Handle:
    """What a control file refers to: a process (pid, start) and maybe one thread, in a
    tree that may be read-only."""
    __slots__ = ("pid", "start", "uid", "tid", "read_only")

    def __init__(self, pid, start, uid, tid, read_only):
        self.pid = pid
        self.start = start
        self.uid = uid
        self.tid = tid
        self.read_only = read_only


class _Open:
    """Per-open state of a control file."""
    __slots__ = ("p", "buf", "fd", "pause_at")

    def __init__(self, p):
        self.p = p
        self.buf = b""
        self.fd = None
        self.pause_at = None


def _control_files(h, uid, gid, with_mem):
    T = PT.tracer

    def ref_open(ctx, flags):
        _check_writable(ctx, h, flags, "process %d" % h.pid)
        if PT.starttime(h.pid) != h.start and T().known(h.pid, h.start) is None:
            raise error(errno.ESRCH, "process %d has exited" % h.pid)
        return _Open(T().ref(h.pid, h.start))

    def unref(ctx, state):
        if state is not None and state.p is not None:
            p, state.p = state.p, None
            T().unref(p)

    # ctl
    def ctl_write(ctx, off, data, state):
        _check_owner(ctx, h)
        text = bytes(data).decode("utf-8", "replace")
        for line in text.splitlines():
            words = line.split()
            if words:
                _ctl(state.p, h.tid, words)
        return len(data)

    def ctl_read(ctx, state):
        tr = T()
        p = state.p
        with tr.lock:
            f = p.focus_thread()
            return "pid=%d state=%s focus=%d hang=%d threads=%d\n" % (
                p.pid, p.state_name(), f.tid if f is not None else p.pid, p.hang,
                len(p.threads))

    # regs
    def regs_read(ctx, state):
        regs = T().call(T().cmd_getregs, state.p, h.tid)
        return "".join("%s %#x\n" % (n, regs[n]) for n in PT.REGNAMES)

    def regs_write(ctx, off, data, state):
        _check_owner(ctx, h)
        changes = {}
        for line in bytes(data).decode("utf-8", "replace").splitlines():
            words = line.replace("=", " ").split()
            if not words:
                continue
            if len(words) != 2:
                raise error(errno.EINVAL, "bad register line %r" % line)
            name, value = words
            if name not in PT.REGNAMES:
                raise error(errno.EINVAL, "unknown register %r" % name)
            try:
                v = int(value, 0)
            except ValueError:
                raise error(errno.EINVAL, "bad value %r for register %s" % (value, name))
            if not -(1 << 63) <= v < (1 << 64):
                raise error(errno.EINVAL, "value %r out of range for %s" % (value, name))
            changes[name] = v & 0xFFFFFFFFFFFFFFFF
        if changes:
            T().call(T().cmd_setregs, state.p, changes, h.tid)
        return len(data)

    # note
    def note_write(ctx, off, data, state):
        _check_owner(ctx, h)
        word = bytes(data).decode("utf-8", "replace").strip()
        try:
            sig = parse_signal(word)
        except ValueError:
            raise error(errno.EINVAL, "bad note %r: a signal name or number" % word)
        T().call(T().cmd_signal, state.p, sig, h.tid)
        return len(data)

    # wait
    def wait_pread(ctx, off, count, state):
        if not state.buf:
            if state.pause_at == off:
                # a sequential read right after an event: the Linux client (cache=none)
                # keeps reading until a read comes back empty, so an empty read here ends
                # the user's read() with the event, and `cat wait` prints events as they
                # come; the next read blocks again
                state.pause_at = None
                line = _pop_event(state.p, h.tid)
                if line is None:
                    return b""
                state.buf = line
            else:
                state.buf = _next_event(state.p, h.tid)
        out, state.buf = state.buf[:count], state.buf[count:]
        state.pause_at = off + len(out) if out and not state.buf else None
        return out

    # status
    def status_read(ctx):
        return _status_line(h)

    files = [
        File("ctl", read=ctl_read, write=ctl_write, open=ref_open, clunk=unref, mode=0o600,
             uid=uid, gid=gid, blocking=True),
        File("regs", read=regs_read, write=regs_write, open=ref_open, clunk=unref,
             mode=0o600, uid=uid, gid=gid, blocking=True),
        File("wait", pread=wait_pread, open=ref_open, clunk=unref, mode=0o400, uid=uid,
             gid=gid, blocking=True),
        File("status", read=status_read, mode=0o444, uid=uid, gid=gid, blocking=True),
    ]
    if with_mem:
        files.append(File("note", write=note_write, open=ref_open, clunk=unref, mode=0o200,
                          uid=uid, gid=gid, blocking=True))
        files.append(_mem_file(h, uid, gid))
    return files


def _mem_file(h, uid, gid):
    def mem_open(ctx, flags):
        _check_writable(ctx, h, flags, "process %d: mem" % h.pid)
        acc = flags & 3
        st = _Open(None)
        st.fd = os.open("/proc/%d/mem" % h.pid, os.O_RDONLY if acc == 0 else os.O_RDWR)
        if PT.starttime(h.pid) != h.start:      # checked after open: no pid reuse race
            os.close(st.fd)
            raise error(errno.ESRCH, "process %d has exited" % h.pid)
        return st

    def mem_close(ctx, state):
        if state is not None and state.fd is not None:
            os.close(state.fd)
            state.fd = None

    def mem_pread(ctx, off, count, state):
        if off >= 1 << 63:
            os.lseek(state.fd, off - (1 << 64), os.SEEK_SET)
            return os.read(state.fd, count)
        return os.pread(state.fd, count, off)

    def mem_write(ctx, off, data, state):
        _check_owner(ctx, h)
        if b"\xcc" in bytes(data):
            # a breakpoint: keep the process attached after the last control file is
            # clunked (`echo start > ctl` from a shell), so the trap is caught, not fatal
            tr = PT.tracer()
            with tr.lock:
                p = tr.procs.get((h.pid, h.start))
                if p is not None and p.attached:
                    p.breakpoints = True
        if off >= 1 << 63:
            os.lseek(state.fd, off - (1 << 64), os.SEEK_SET)
            return os.write(state.fd, bytes(data))
        return os.pwrite(state.fd, bytes(data), off)

    return File("mem", pread=mem_pread, write=mem_write, open=mem_open, clunk=mem_close,
                mode=0o600, uid=uid, gid=gid, blocking=True)


# --- ctl commands --------------------------------------------------------------------------

def _ctl(p, tid, words):
    cmd, args = words[0], words[1:]
    spec = _COMMANDS.get(cmd)
    if spec is None:
        raise error(errno.EINVAL, "unknown ctl command %r" % cmd)
    nargs, fn = spec
    if len(args) != nargs:
        raise error(errno.EINVAL, "ctl command %r takes %s" % (
            cmd, "no argument" if nargs == 0 else "%d argument" % nargs))
    fn(p, tid, *args)


def _wait_stopped(p, tid):
    tr = PT.tracer()

    def pred():
        if p.exited:
            return "exited"
        if not p.attached:
            return "detached"
        if tid is None:
            return "stopped" if p.all_stopped() else None
        t = p.threads.get(tid)
        if t is None:
            return "exited"
        return "stopped" if (t.state == "stopped" and not t.stepping) else None
    r = tr.wait_until(pred)
    if r == "exited":
        raise error(errno.ESRCH, "process %d has exited" % p.pid if tid is None
                    else "thread %d has exited" % tid)
    if r == "detached":
        raise error(errno.EIO, "process %d was detached" % p.pid)


def _c_stop(p, tid):
    tr = PT.tracer()
    tr.call(tr.cmd_stop, p, tid)
    _wait_stopped(p, tid)


def _c_start(p, tid):
    tr = PT.tracer()
    tr.call(tr.cmd_start, p, tid)


def _c_step(p, tid):
    tr = PT.tracer()
    th = tr.call(tr.cmd_step, p, tid)

    def pred():
        if p.exited or p.threads.get(th.tid) is not th:
            return "gone"
        return "done" if (th.state == "stopped" and not th.stepping) else None
    tr.wait_until(pred)


def _c_waitstop(p, tid):
    tr = PT.tracer()
    tr.call(tr.attach, p)
    _wait_stopped(p, tid)


def _c_startstop(p, tid):
    _c_start(p, tid)
    _c_waitstop(p, tid)


def _c_kill(p, tid):
    tr = PT.tracer()
    tr.call(tr.cmd_kill, p)


def _c_signal(p, tid, name):
    try:
        sig = parse_signal(name)
    except ValueError:
        raise error(errno.EINVAL, "bad signal %r in ctl command 'signal'" % name)
    tr = PT.tracer()
    tr.call(tr.cmd_signal, p, sig, tid)


def _c_hang(p, tid):
    tr = PT.tracer()
    tr.call(tr.cmd_hang, p, True)


def _c_nohang(p, tid):
    tr = PT.tracer()
    tr.call(tr.cmd_hang, p, False)


def _c_detach(p, tid):
    tr = PT.tracer()
    tr.call(tr.cmd_detach, p)
    tr.wait_until(lambda: p.exited or not p.attached)


_COMMANDS = {
    "stop": (0, _c_stop),
    "start": (0, _c_start),
    "step": (0, _c_step),
    "waitstop": (0, _c_waitstop),
    "startstop": (0, _c_startstop),
    "kill": (0, _c_kill),
    "signal": (1, _c_signal),
    "hang": (0, _c_hang),
    "nohang": (0, _c_nohang),
    "detach": (0, _c_detach),
}


# --- wait --------------------------------------------------------------------------------

def _pop_event(p, tid):
    """The next queued event line (bytes), or None if none is queued (never blocks)."""
    tr = PT.tracer()
    with tr.lock:
        q = p.events if tid is None else p.tevents.get(tid)
        if q:
            return (q.popleft() + "\n").encode()
    return None


def _next_event(p, tid):
    """The next event line (bytes) for the process (tid None) or one thread; b"" at the
    end (process gone, or detached, with nothing left to read)."""
    tr = PT.tracer()

    def queue():
        return p.events if tid is None else p.tevents.get(tid)

    def pop():
        q = queue()
        if q:
            return q.popleft()
        return None

    with tr.lock:
        line = pop()
        if line is not None:
            return (line + "\n").encode()
        if p.exited:
            return b""
    try:
        tr.call(tr.attach, p)
    except OSError as ex:
        if ex.errno != errno.ESRCH:
            raise
    END = object()

    def pred():
        line = pop()
        if line is not None:
            return line
        if p.exited or not p.attached:
            return END
        if tid is not None and tid not in p.threads:
            return END
        return None
    line = tr.wait_until(pred)
    if line is END or line is None:
        return b""
    return (line + "\n").encode()


# --- status --------------------------------------------------------------------------------

def _status_line(h):
    try:
        f = PT.proc_stat(h.pid, h.tid)
    except OSError:
        raise error(errno.ESRCH, "process %d has exited" % h.pid)
    if int(f[21]) != h.start and h.tid is None:
        raise error(errno.ESRCH, "process %d has exited" % h.pid)
    hz = os.sysconf("SC_CLK_TCK")

    def ms(ticks):
        return int(ticks) * 1000 // hz
    with open("/proc/uptime") as u:
        uptime = float(u.read().split()[0])
    real = max(0, int(uptime * 1000) - ms(f[21]))
    name = "".join(c if c > " " else "_" for c in f[1]) or "?"
    state = _STATES.get(f[2], f[2])
    nice = int(f[18])
    mem_kb = int(f[22]) // 1024
    return "%-27s %-27s %-11s %11d %11d %11d %11d %11d %11d %11d %11d %11d\n" % (
        name, USERS.uname(h.uid), state, ms(f[13]), ms(f[14]), real, ms(f[15]), ms(f[16]),
        0, mem_kb, 20 - nice, 40 - int(f[17]))
