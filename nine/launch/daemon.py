"""Daemon mode of `nine serve` and `nine mux` (--daemon): leave the session that started
the server, and tell its starter when the server listens.

    ready = detach(pid_file, log_file)      # returns in the daemon only
    ...                                     # build the server, listen, --address-file
    ready()                                 # the pid file appears; the starter exits 0

detach() forks twice with a setsid() in between (no controlling terminal, and never one
again), points stdin at /dev/null and stdout and stderr at the log file (appended to;
/dev/null without one) and closes every other descriptor it inherited, so that
`ssh HOST nine serve --daemon ...` returns as soon as the server listens: nothing of the
ssh session stays open in the daemon (the classic `ssh HOST 'cmd &'` hang).  The process
that called detach() waits on a pipe until the daemon calls ready() (it exits 0) or dies
before that (it exits 1 and copies the end of the log file to its stderr), so a launcher
knows when the server answers without polling for it.

The working directory is kept, so that relative paths of the command line (exports, the
address file) mean what they meant to the starter.  The pid file is written once the
server listens, atomically, and removed when the daemon exits (not after SIGKILL: a pid
file naming a process that no longer runs is simply replaced).  detach() refuses to
start while the pid file names a live process.
"""

import atexit
import fcntl
import os
import sys


class DaemonError(Exception):
    """The daemon cannot start (its pid file names a live process)."""


def read_pid(path):
    """The pid a pid file holds, or None (no file, or not a pid)."""
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None


def alive(pid):
    """Whether process `pid` exists (it may belong to another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_pid_file(path):
    """Raise DaemonError when the pid file names a live process."""
    pid = read_pid(path)
    if pid is not None and pid != os.getpid() and alive(pid):
        raise DaemonError("%s names process %d, which is running (stop it, or remove the "
                          "file if that process is not a nine server)" % (path, pid))


def _tail(path, lines=20):
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _starter(child, rfd, log):
    """The process that called detach(): wait for the daemon's word, then exit."""
    os.waitpid(child, 0)                # the first child ends right after the second fork
    word = b""
    while True:
        chunk = os.read(rfd, 64)
        if not chunk:
            break
        word += chunk
    if word.startswith(b"ok"):
        os._exit(0)
    if log == os.devnull:
        why = "; with a --log-file it would say why"
    else:
        tail = _tail(log)
        why = "; the end of %s:\n%s" % (log, tail) if tail else " (%s says nothing)" % log
    sys.stderr.write("nine: the daemon exited before serving%s\n" % why)
    sys.stderr.flush()
    os._exit(1)


def detach(pid_file=None, log_file=None):
    """Become a daemon (see the module's text); returns ready(), to call once listening.
    Raises DaemonError or OSError (the log file cannot be opened) before forking."""
    pid_file = os.path.abspath(pid_file) if pid_file else None
    log = os.path.abspath(log_file) if log_file else os.devnull
    if pid_file:
        check_pid_file(pid_file)
    logfd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    rfd, wfd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    child = os.fork()
    if child:
        os.close(wfd)
        os.close(logfd)
        _starter(child, rfd, log)
    os.setsid()
    if os.fork():
        os._exit(0)
    os.close(rfd)
    wfd = fcntl.fcntl(wfd, fcntl.F_DUPFD_CLOEXEC, 3)    # above 0-2, whatever the starter
    logfd = fcntl.fcntl(logfd, fcntl.F_DUPFD, 3)        # had open there
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    os.dup2(logfd, 1)
    os.dup2(logfd, 2)
    os.closerange(3, wfd)               # every inherited descriptor but the pipe
    os.closerange(wfd + 1, max(wfd + 1, os.sysconf("SC_OPEN_MAX")))
    if "gevent" in sys.modules:         # forked: the event loop must start afresh
        import gevent
        gevent.reinit()

    def ready():
        if pid_file:
            tmp = pid_file + ".tmp"
            with open(tmp, "w") as f:
                f.write("%d\n" % os.getpid())
            os.rename(tmp, pid_file)
            atexit.register(_remove_pid_file, pid_file, os.getpid())
        os.write(wfd, b"ok\n")
        os.close(wfd)
    return ready


def _remove_pid_file(path, pid):
    if read_pid(path) == pid:
        try:
            os.unlink(path)
        except OSError:
            pass
