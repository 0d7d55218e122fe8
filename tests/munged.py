"""A munged of a test's own, and the fixture ``munged`` that starts one.

Its key (1 KiB from os.urandom, mode 0400, owned by the user the tests run as, whom
munged runs as), socket, pid, log and seed files lie in a fresh temporary directory
that other users may traverse (a test encodes credentials as another uid).  The socket
is at <dir>/run/munge/munge.socket.2, so that a program without an option for the
socket (diod and its clients use libmunge's default, /run/munge/munge.socket.2) can be
run by ``at_default(argv)`` in a mount namespace of its own where <dir>/run is /run:
the machine's /run and any munged of the machine stay untouched.
"""

import os
import shutil
import stat
import subprocess
import tempfile

import pytest

from nine.netwait import wait_for


class Munged:
    """munged -F on a socket of its own; stop() ends it by its PID and removes the
    directory."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="nine-munged-")
        os.chmod(self.dir, 0o755)
        self.run_dir = os.path.join(self.dir, "run")
        os.makedirs(os.path.join(self.run_dir, "munge"), mode=0o755)
        self.socket = os.path.join(self.run_dir, "munge", "munge.socket.2")
        self.key = os.path.join(self.dir, "munge.key")
        self.log = os.path.join(self.dir, "munged.log")
        fd = os.open(self.key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
        with os.fdopen(fd, "wb") as f:
            f.write(os.urandom(1024))
        self.proc = None

    def start(self):
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [shutil.which("munged"), "--foreground", "--socket=" + self.socket,
                 "--key-file=" + self.key, "--log-file=" + self.log,
                 "--pid-file=" + os.path.join(self.dir, "munged.pid"),
                 "--seed-file=" + os.path.join(self.dir, "munged.seed")],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        try:
            wait_for(self._listening, 10, "munged on " + self.socket)
        except BaseException:
            self.stop()
            raise
        return self

    def _listening(self):
        if self.proc.poll() is not None:
            raise RuntimeError("munged exited with %d: %s" % (self.proc.returncode,
                                                              self.log_text()))
        try:
            return stat.S_ISSOCK(os.stat(self.socket).st_mode)
        except FileNotFoundError:
            return False

    def log_text(self):
        with open(self.log, errors="replace") as f:
            return f.read()

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def at_default(self, argv):
        """argv run where this munged's socket is at libmunge's default path."""
        return ["unshare", "--mount", "sh", "-c", 'mount --bind "$0" /run && exec "$@"',
                self.run_dir] + list(argv)


_namespaces = []


def can_use_default():
    """Whether at_default works here: a mount namespace with a bind mount (root)."""
    if not _namespaces:
        ok = shutil.which("unshare") is not None and subprocess.run(
            ["unshare", "--mount", "mount", "--bind", "/run", "/run"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0
        _namespaces.append(ok)
    return _namespaces[0]


@pytest.fixture(name="munged")
def munged_fixture():
    """A running Munged (skips the test where munged is not installed)."""
    if shutil.which("munged") is None:
        pytest.skip("munged is not installed (apt-get install munge libmunge2)")
    m = Munged().start()
    yield m
    m.stop()

