"""Process execution over files, in the manner of Xcpu and Inferno's cmd(3).

    tree = exec_tree()
    server.exports["exec"] = SynthFS(tree).attach

The tree:

    clone           opening it makes a new session N; a read of that open gives "N\\n"
    N/              the session (mode 0700, owned by the user who opened clone)
        ctl         write commands, one per line; a read gives "N\\n"
        argv        the program's arguments (words split as by sh(1); NUL-separated if the
                    text holds a NUL); writable until exec; a write at offset 0 replaces
                    the text, later offsets extend it (so `>` replaces and `>>` appends)
        env         NAME=VALUE lines, added to a small base environment (PATH, HOME, USER,
                    LOGNAME, SHELL); writable until exec, like argv
        stdin       writes go to the process's standard input (they wait while the pipe is
                    full; writes before exec are kept and fed at exec)
        stdout      the standard output, as a stream: a read at offset k gives the bytes from
        stderr      k on, waiting until there are some; an empty read (EOF) comes only when
                    the process has exited and its pipe is drained and closed
        wait        a read waits for the process to exit, then gives its status line:
                    "exited CODE" or "killed SIGNUM" (e.g. "exited 3", "killed 9")
        status      one line: "new", "running PID", "exited CODE" or "killed SIGNUM"
                    ("exited unknown" in wait and status: something else in the server
                    process reaped the child, so its status is lost)

ctl commands:

    exec [PROG ARGS...]   start the program: PROG and ARGS are split as by sh(1) (shlex);
                          with no words, the argv file gives them.  Once per session.
    dir PATH              the working directory for exec (default /)
    signal NAME|NUM       send a signal (TERM, SIGTERM, 15) to the process group
    kill                  SIGKILL to the process group
    close                 close the process's standard input
    wipe                  kill the process group and remove the session at once

An unknown command or a bad argument fails the write with EINVAL and a message naming it
(the message reaches 9P2000 and 9P2000.u clients; 9P2000.L carries only the errno).

Who runs it: when the server runs as root, the program runs as the attaching user (the
uid, gid and supplementary groups of the attach's Context); otherwise as the server's own
user.  Each program is a session leader (setsid), so `signal`, `kill` and `wipe` reach its
children too.  A session is listed, walkable and openable only by its creator and root.

Standard input is closed by `close`, or when the last fid open for writing on stdin is
clunked (before exec: at exec, after the kept bytes are fed; a new writer before exec
cancels that).  So `echo hello > N/stdin` feeds one line and closes; hold the file open
(`exec 4> N/stdin`) to write more than once.  Writes after the close fail with EPIPE.
Nobody opening stdin at all leaves it open (a program that reads it waits): use `close`.

Read-only (exec_tree(read_only=True), `nine serve --read-only`): nothing runs.  Opening
clone fails with EROFS, so no session (and no N/ctl) is ever made; the empty tree stays
listable.

Output is kept in memory: at least the last 16 MiB of each of stdout and stderr.  A read
at an offset older than what is kept fails with ESPIPE ("... discarded ...").

Lifecycle: a session lives while any file of it (the clone fid that made it included) is
open, and while its process runs.  It is removed
  - by `wipe` (at once, whoever still has files open: their reads then end), or
  - when the process has exited (or was never started) and the last open fid on the
    session's files is clunked.
So a client must keep the clone fid (or another file of the session) open from clone until
it has read what it wants after the exit; closing everything before exec discards the
session.  A shell does:

    exec 3< /n/exec/clone; read n <&3; d=/n/exec/$n
    echo "exec sh -c 'read x; echo got \\$x; exit 3'" > $d/ctl
    echo hello > $d/stdin
    cat $d/stdout          # follows the output until the process exits
    cat $d/wait            # exited 3
    exec 3<&-              # the session goes away

The exited process stays a zombie until its session is removed, so its process-group id
cannot be reused while `signal`/`kill` may still aim at it (children left running in the
group can still be signalled after the leader exited).  Exit is noticed through a pidfd
(Linux 5.3+; a polling loop otherwise), never through SIGCHLD: nothing here reaps children
that are not its own, and nothing here installs gevent's SIGCHLD handler (libev's would
reap every child of the process).  Processes are started with the standard library's
subprocess (gevent.subprocess needs child watchers, which only the default loop has);
their pipes are non-blocking and served by greenlets.
"""

import errno
import itertools
import os
import pwd
import shlex
import signal

import gevent
import gevent.event
import gevent.lock
import gevent.os

from ..protocol import L_O_ACCMODE, L_O_RDONLY, L_O_TRUNC
from ..server.node import error
from .files import Dir, File

#: at least this many of the latest bytes of each output stream are kept
MAXBUF = 16 << 20
#: bytes written to stdin before exec that are kept
MAXPENDING = 16 << 20
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _size(n):
    return "%d MiB" % (n >> 20) if n >= 1 << 20 else "%d bytes" % n


class _Stream:
    """One output stream: a growing byte buffer that readers follow."""

    def __init__(self, session, name):
        self.session = session
        self.name = name
        self.data = bytearray()
        self.base = 0           # the offset of data[0]
        self.eof = False        # the pipe is closed (or there never was one)
        self._ev = gevent.event.Event()
        self.entry = None

    @property
    def end(self):
        return self.base + len(self.data)

    def notify(self):
        ev, self._ev = self._ev, gevent.event.Event()
        ev.set()

    def append(self, chunk):
        self.data += chunk
        if len(self.data) > MAXBUF + (MAXBUF >> 2):
            drop = len(self.data) - MAXBUF
            del self.data[:drop]
            self.base += drop
        if self.entry is not None:
            self.entry.touch()
        self.notify()

    def finished(self):
        return self.eof and self.session.done

    def pread(self, ctx, off, count, state=None):
        while True:
            if off < self.base:
                raise error(errno.ESPIPE, "%s: bytes before offset %d were discarded (only "
                            "the last %s are kept)" % (self.name, self.base, _size(MAXBUF)))
            if off < self.end:
                i = off - self.base
                return bytes(self.data[i:i + count])
            if self.finished():
                return b""
            self._ev.wait()


class _Buf:
    """The text of argv or env: a write at offset 0 replaces it (the Linux kernel client
    truncates with a separate setattr, which synthetic files ignore), a write elsewhere
    goes at its offset (appends come at the end: stat's size is the length)."""

    def __init__(self):
        self.data = bytearray()

    def write(self, off, data):
        end = off + len(data)
        if end > MAXPENDING:
            raise error(errno.EFBIG)
        if off == 0:
            self.data = bytearray()
        if off > len(self.data):
            self.data += bytes(off - len(self.data))
        self.data[off:end] = data
        return len(data)


class _Open:
    """Per-open state of a session file (and of the clone fid)."""
    __slots__ = ("session", "writer")

    def __init__(self, session):
        self.session = session
        self.writer = False


def _parse_signal(word):
    w = word.strip()
    if not w:
        raise error(errno.EINVAL, "signal: which signal?")
    if w.isdigit():
        n = int(w)
        if not 0 < n < signal.NSIG:
            raise error(errno.EINVAL, "signal: bad signal number %s" % w)
        return n
    name = w.upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    sig = getattr(signal, name, None)
    if not isinstance(sig, signal.Signals) or name.startswith("SIG_"):
        raise error(errno.EINVAL, "signal: unknown signal %r" % w)
    return int(sig)


def _split_words(text, what):
    if "\0" in text:
        return [w for w in text.split("\0") if w]
    try:
        return shlex.split(text)
    except ValueError as ex:
        raise error(errno.EINVAL, "%s: %s" % (what, ex))


class Session:
    def __init__(self, tree, n, ctx):
        self.tree = tree
        self.n = n
        self.uid = ctx.uid if ctx.uid is not None else os.geteuid()
        self.gid = ctx.gid if ctx.gid is not None else os.getegid()
        self.groups = tuple(ctx.groups or ())
        self.uname = ctx.uname
        self.opens = 0
        self.gone = False
        self.state = "new"          # new, running, exited
        self.result = None          # "exited N" / "killed N" / "wiped"
        self.done = False           # exited, or removed before it ran
        self.exit_ev = gevent.event.Event()
        self.proc = None
        self.pid = None
        self.argv_used = None
        self.cwd = "/"
        self.argv = _Buf()
        self.env = _Buf()
        self.stdout = _Stream(self, "stdout")
        self.stderr = _Stream(self, "stderr")
        self.stdin_fd = None
        self.stdin_lock = gevent.lock.Semaphore()
        self.pending = bytearray()
        self.stdin_writers = 0
        self.stdin_closed = False   # no more writes: closed, or closing
        self.soft_close = False     # before exec: the last writer went away
        self.greenlets = []
        self.dir = self._make_dir()

    # --- the files -------------------------------------------------------------------
    def _make_dir(self):
        s = self
        uid, gid = self.uid, self.gid

        def opener(kind=None):
            def on_open(ctx, flags):
                if s.gone:
                    raise error(errno.ENOENT, "session %d is gone" % s.n)
                if not s.may_use(ctx):
                    raise error(errno.EACCES)
                acc = flags & L_O_ACCMODE
                st = _Open(s)
                if kind in ("argv", "env") and (acc != L_O_RDONLY or flags & L_O_TRUNC):
                    if s.state != "new":
                        raise error(errno.EBUSY, "%s: already started" % kind)
                    if flags & L_O_TRUNC:
                        getattr(s, kind).data = bytearray()
                if kind == "stdin" and acc != L_O_RDONLY:
                    st.writer = True
                    s.stdin_writers += 1
                    s.soft_close = False
                s.opens += 1
                return st
            return on_open

        def on_clunk(ctx, st):
            if st is None:
                return
            s.opens -= 1
            if st.writer:
                s.stdin_writers -= 1
                if s.stdin_writers == 0 and not s.gone:
                    if s.state == "new":
                        s.soft_close = True
                    else:
                        s.close_stdin()
            s.maybe_remove()

        def buf_file(kind):
            buf_of = lambda: getattr(s, kind)

            def read(ctx, state=None):
                if kind == "argv" and s.argv_used is not None:
                    return (shlex.join(s.argv_used) + "\n").encode("utf-8", "surrogateescape")
                return bytes(buf_of().data)

            def write(ctx, off, data, state=None):
                if s.state != "new":
                    raise error(errno.EBUSY, "%s: already started" % kind)
                return buf_of().write(off, data)
            return File(kind, read=read, write=write, mode=0o600, uid=uid, gid=gid,
                        open=opener(kind), clunk=on_clunk,
                        size=lambda ctx: len(buf_of().data))

        def stream_file(stream):
            f = File(stream.name, pread=stream.pread, mode=0o400, uid=uid, gid=gid,
                     open=opener(), clunk=on_clunk, size=lambda ctx: stream.end)
            stream.entry = f
            return f

        def wait_pread(ctx, off, count, state=None):
            s.exit_ev.wait()
            line = (s.result + "\n").encode()
            return line[off:off + count]

        files = [
            File("ctl", read=lambda ctx, state=None: "%d\n" % s.n,
                 write=lambda ctx, off, data, state=None: s.ctl(ctx, data),
                 mode=0o600, uid=uid, gid=gid, open=opener(), clunk=on_clunk, blocking=True),
            buf_file("argv"),
            buf_file("env"),
            File("stdin", write=lambda ctx, off, data, state=None: s.write_stdin(data),
                 mode=0o200, uid=uid, gid=gid, open=opener("stdin"), clunk=on_clunk,
                 blocking=True),
            stream_file(self.stdout),
            stream_file(self.stderr),
            File("wait", pread=wait_pread, mode=0o400, uid=uid, gid=gid, open=opener(),
                 clunk=on_clunk),
            File("status", read=lambda ctx, state=None: s.status_line() + "\n", mode=0o400,
                 uid=uid, gid=gid, open=opener(), clunk=on_clunk),
        ]
        self.clunk_hook = on_clunk
        return Dir(str(self.n), files, mode=0o700, uid=uid, gid=gid)

    def may_use(self, ctx):
        return ctx.uid is None or ctx.uid == 0 or ctx.uid == self.uid

    def status_line(self):
        if self.state == "new":
            return "wiped" if self.gone else "new"
        if self.state == "running":
            return "running %d" % self.pid
        return self.result

    # --- ctl ---------------------------------------------------------------------------
    def ctl(self, ctx, data):
        if self.gone:
            raise error(errno.ENOENT, "session %d is gone" % self.n)
        text = bytes(data).decode("utf-8", "surrogateescape")
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split(None, 1)
            cmd, rest = parts[0], (parts[1] if len(parts) > 1 else "")
            fn = getattr(self, "c_" + cmd, None) if cmd.isalpha() else None
            if fn is None:
                raise error(errno.EINVAL, "unknown ctl command %r" % cmd)
            fn(ctx, rest)
        return len(data)

    def c_exec(self, ctx, rest):
        if self.state != "new":
            raise error(errno.EBUSY, "exec: already started")
        if rest.strip():
            argv = _split_words(rest, "exec")
        else:
            argv = _split_words(bytes(self.argv.data).decode("utf-8", "surrogateescape"),
                                "argv")
        if not argv:
            raise error(errno.EINVAL, "exec: no program (give one, or write argv)")
        self.start(argv)

    def c_dir(self, ctx, rest):
        if self.state != "new":
            raise error(errno.EBUSY, "dir: already started")
        path = rest.strip()
        if not path.startswith("/"):
            raise error(errno.EINVAL, "dir: %r is not an absolute path" % path)
        self.cwd = path

    def c_signal(self, ctx, rest):
        self.signal(_parse_signal(rest), "signal")

    def c_kill(self, ctx, rest):
        if rest.strip():
            raise error(errno.EINVAL, "kill: takes no argument (use signal)")
        self.signal(signal.SIGKILL, "kill")

    def c_close(self, ctx, rest):
        self.close_stdin()

    def c_wipe(self, ctx, rest):
        self.wipe()

    # --- the process -------------------------------------------------------------------
    def _environ(self):
        try:
            pw = pwd.getpwuid(self.uid)
            name, home, shell = pw.pw_name, pw.pw_dir, pw.pw_shell
        except KeyError:
            name, home, shell = self.uname or str(self.uid), "/", "/bin/sh"
        env = {"PATH": BASE_PATH, "HOME": home, "USER": name, "LOGNAME": name,
               "SHELL": shell or "/bin/sh"}
        text = bytes(self.env.data).decode("utf-8", "surrogateescape")
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            k, sep, v = line.partition("=")
            if not sep or not k or "\0" in line:
                raise error(errno.EINVAL, "env line %d: not NAME=VALUE: %r" % (i, line))
            env[k] = v
        return env

    def start(self, argv):
        env = self._environ()
        kw = {}
        if os.geteuid() == 0 and self.uid != 0:
            kw = dict(user=self.uid, group=self.gid,
                      extra_groups=list(self.groups) if self.groups else [self.gid])
        try:
            import subprocess   # (when a command first runs: not at the server's start)
            p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, bufsize=0, env=env, cwd=self.cwd,
                                 start_new_session=True, close_fds=True, **kw)
        except OSError as ex:
            code = ex.errno or errno.ENOEXEC
            if ex.filename == self.cwd and ex.filename != argv[0]:
                raise error(code, "exec %s: dir %s: %s" % (argv[0], self.cwd, os.strerror(code)))
            raise error(code, "exec %s: %s" % (argv[0], os.strerror(code)))
        except (ValueError, TypeError) as ex:
            raise error(errno.EINVAL, "exec %s: %s" % (argv[0], ex))
        self.proc = p
        self.pid = p.pid
        self.argv_used = argv
        self.state = "running"
        for f in (p.stdin, p.stdout, p.stderr):
            os.set_blocking(f.fileno(), False)
        self.stdin_fd = p.stdin
        try:
            pidfd = os.pidfd_open(p.pid)
        except (AttributeError, OSError):
            pidfd = None
        self.tree.dir.touch()
        self.greenlets = [gevent.spawn(self._pump, p.stdout, self.stdout),
                          gevent.spawn(self._pump, p.stderr, self.stderr),
                          gevent.spawn(self._watch, pidfd)]
        if self.pending or self.soft_close or self.stdin_closed:
            gevent.spawn(self._feed_pending)

    def _feed_pending(self):
        with self.stdin_lock:
            try:
                self._flush_pending()
            except OSError:
                pass
        if self.soft_close or self.stdin_closed:
            self.close_stdin()

    def _flush_pending(self):
        # with stdin_lock held: what was written before exec goes first
        if self.pending and self.stdin_fd is not None:
            data, self.pending = bytes(self.pending), bytearray()
            self._write_all(data)

    def _pump(self, f, stream):
        fd = f.fileno()
        try:
            while True:
                try:
                    chunk = gevent.os.nb_read(fd, 65536)
                except OSError:
                    chunk = b""
                if not chunk:
                    break
                stream.append(chunk)
        finally:
            stream.eof = True
            try:
                f.close()
            except OSError:
                pass
            stream.notify()

    def _watch(self, pidfd):
        info = None
        try:
            if pidfd is not None:
                hub = gevent.get_hub()
                w = hub.loop.io(pidfd, 1)
                try:
                    hub.wait(w)
                finally:
                    w.close()
                try:
                    info = os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOWAIT)
                except ChildProcessError:
                    info = None
            else:
                delay = 0.005
                while True:
                    try:
                        info = os.waitid(os.P_PID, self.pid,
                                         os.WEXITED | os.WNOHANG | os.WNOWAIT)
                    except ChildProcessError:
                        info = None
                        break
                    if info is not None:
                        break
                    gevent.sleep(delay)
                    delay = min(delay * 2, 0.25)
        finally:
            if pidfd is not None:
                os.close(pidfd)
        if info is None:
            result = "exited unknown"     # someone else reaped it
        elif info.si_code == os.CLD_EXITED:
            result = "exited %d" % info.si_status
        else:
            result = "killed %d" % info.si_status
        self.exited(result)

    def exited(self, result):
        self.state = "exited"
        self.result = result
        self.done = True
        self.exit_ev.set()
        self.close_stdin()
        self.stdout.notify()
        self.stderr.notify()
        self.tree.dir.touch()
        if self.gone:
            self._reap()
        else:
            self.maybe_remove()

    def _reap(self):
        if self.proc is not None and self.proc.returncode is None:
            try:
                self.proc.poll()
            except OSError:
                pass

    def signal(self, sig, what):
        if self.state == "new":
            raise error(errno.ESRCH, "%s: no process (not started)" % what)
        if self.proc.returncode is not None:
            raise error(errno.ESRCH, "%s: process is gone (%s)" % (what, self.result))
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            raise error(errno.ESRCH, "%s: no such process" % what)

    # --- stdin -------------------------------------------------------------------------
    def _write_all(self, data):
        view = memoryview(data)
        fd = self.stdin_fd.fileno()
        while view:
            n = gevent.os.nb_write(fd, view)
            view = view[n:]

    def write_stdin(self, data):
        if self.gone:
            raise error(errno.EPIPE, "session %d is gone" % self.n)
        if self.stdin_closed:
            raise error(errno.EPIPE, "stdin is closed")
        if self.state == "new":
            if len(self.pending) + len(data) > MAXPENDING:
                raise error(errno.ENOSPC, "stdin: more than %s before exec"
                            % _size(MAXPENDING))
            self.pending += data
            return len(data)
        with self.stdin_lock:
            if self.stdin_fd is None or self.stdin_closed:
                raise error(errno.EPIPE, "stdin is closed")
            try:
                self._flush_pending()
                self._write_all(data)
            except BrokenPipeError:
                raise error(errno.EPIPE, "the process does not read its stdin any more")
            except OSError as ex:
                raise error(ex.errno or errno.EIO, "stdin: %s" % ex.strerror)
        return len(data)

    def close_stdin(self):
        self.stdin_closed = True
        if self.state == "new" or self.stdin_fd is None:
            return
        if self.stdin_lock.locked():
            gevent.spawn(self._close_stdin_locked)
        else:
            self._close_stdin_now()

    def _close_stdin_locked(self):
        with self.stdin_lock:
            self._close_stdin_now()

    def _close_stdin_now(self):
        f, self.stdin_fd = self.stdin_fd, None
        if f is not None:
            try:
                f.close()
            except OSError:
                pass

    # --- removal -----------------------------------------------------------------------
    def maybe_remove(self):
        if not self.gone and self.opens <= 0 and self.state != "running":
            self.remove()

    def wipe(self):
        if self.state == "running" or (self.proc is not None and self.proc.returncode is None):
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except OSError:
                pass
        self.remove()

    def remove(self):
        if self.gone:
            return
        self.gone = True
        self.tree.sessions.pop(self.n, None)
        self.tree.dir.touch()
        self.stdin_closed = True
        self.pending = bytearray()
        if self.state == "new":
            self.result = "wiped"
            self.done = True
            self.exit_ev.set()
        else:
            if self.stdin_lock.locked():
                gevent.spawn(self._close_stdin_locked)
            else:
                self._close_stdin_now()
            # the pumps end at EOF when the group dies; stop them now all the same
            for g in self.greenlets[:2]:
                g.kill(block=False)
            if self.state == "exited":
                self._reap()
        for st in (self.stdout, self.stderr):
            if self.state == "new":
                st.eof = True
            st.notify()


class ExecTree:
    def __init__(self, read_only=False):
        self.read_only = read_only
        self.sessions = {}
        self.counter = itertools.count(0)
        self.dir = Dir("", [
            File("clone", read=self._clone_read, open=self._clone_open,
                 clunk=self._clone_clunk, mode=0o444),
        ], list=self._list)
        self.dir.exec_tree = self
        self.dir.wipe_all = self.wipe_all

    def _list(self, ctx):
        return {str(n): s.dir for n, s in list(self.sessions.items()) if s.may_use(ctx)}

    def _clone_open(self, ctx, flags):
        if self.read_only:
            raise error(errno.EROFS, "exec: this server is read-only (--read-only): "
                        "no command runs")
        n = next(self.counter)
        s = Session(self, n, ctx)
        self.sessions[n] = s
        self.dir.touch()
        s.opens += 1
        return _Open(s)

    def _clone_read(self, ctx, state=None):
        return "%d\n" % state.session.n

    def _clone_clunk(self, ctx, state):
        if state is not None:
            state.session.clunk_hook(ctx, state)

    def wipe_all(self):
        for s in list(self.sessions.values()):
            s.wipe()


def exec_tree(read_only=False):
    """A Dir for SynthFS: `clone` and the sessions (see the module docstring; read_only:
    clone refuses, nothing runs).  The Dir has `wipe_all()` (kill every process and drop
    every session, e.g. at shutdown) and `exec_tree` (the ExecTree with its `sessions`
    dict)."""
    return ExecTree(read_only).dir
