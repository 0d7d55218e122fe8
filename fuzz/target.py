"""The server the live campaign attacks: a nine Server, without authentication, over a
synthetic tree that mounts a real directory.

    python3 -m fuzz.target EXPORT_DIR

prints "port N" once it listens on 127.0.0.1 (a free port), then serves until killed.
Its log goes to stderr, down to DEBUG: the server logs an internal error (a handler
that raised something else than OSError) as one line at ERROR and its traceback at
DEBUG.

Exports: "" (and every aname not listed) is the synthetic tree below; "files" is
EXPORT_DIR itself (nine.server.realfs.RealFS).

    files/    EXPORT_DIR
    date      read once per open (a snapshot)
    null      reads nothing, swallows writes
    slow      a stream whose reads wait 10 ms (cancelled by Tflush and Tclunk)
    log       writes append (the last 64 KiB kept), reads return them
    sub/      a, and dyn from a dynamic listing

Target is the handle the live campaign (fuzz.live) holds on it: it makes the scratch
directory (scratch/export, exported, seeded with files, symlinks that point out of it
and a FIFO; scratch/outside/canary, which must never change), starts the program, reads
its port, memory and log, and says what changed outside the export.
"""

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time

import gevent

from nine.server.core import Server
from nine.server.realfs import RealFS
from nine.synth.files import Dir, File, Mount, SynthFS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOG_KEEP = 64 * 1024
_CANARY = b"outside the export\n"


def synthetic_tree(files_attach):
    """The synthetic tree, with files_attach mounted as files/."""
    log = bytearray()

    def append(ctx, off, data):
        log.extend(data)
        del log[:-LOG_KEEP]
        return len(data)

    def slow(ctx, off, count):
        gevent.sleep(0.01)
        return b"slow\n"[off:off + count] if off < 5 else b""

    dyn = File("dyn", read=lambda ctx: b"dynamic\n")
    return Dir("", [
        Mount("files", files_attach),
        File("date", read=lambda ctx: time.ctime().encode() + b"\n"),
        File("null", pread=lambda ctx, off, n: b"", write=lambda ctx, off, data: len(data),
             blocking=False),
        File("slow", pread=slow),
        File("log", read=lambda ctx: bytes(log), write=append, mode=0o666),
        Dir("sub", [File("a", read=lambda ctx: b"a\n")], list=lambda ctx: {"dyn": dyn}),
    ])


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.stderr.write(__doc__)
        return 2
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr,
                        format="%(name)s: %(levelname)s %(message)s")
    fs = RealFS(argv[0])
    server = Server({None: SynthFS(synthetic_tree(fs.attach)).attach, "files": fs.attach})
    srv = server.listen("127.0.0.1:0")
    sys.stdout.write("port %d\n" % srv.address[1])
    sys.stdout.flush()
    gevent.wait()
    return 0


# ---------------------------------------------------------------------------
# the handle


def seed_export(d):
    """The files of the exported directory (made again where the fuzzing removed them)."""
    def quiet(fn, *args):
        try:
            fn(*args)
        except OSError:
            pass

    def write(name, data):
        path = os.path.join(d, name)
        if not os.path.lexists(path):
            try:
                with open(path, "wb") as f:
                    f.write(data)
            except OSError:
                pass

    quiet(os.mkdir, os.path.join(d, "dir"))
    write("hello.txt", b"hello, world\n")
    write("dir/inner", b"inner\n")
    write("big", bytes(range(256)) * 256)
    write("ro.txt", b"read only\n")
    quiet(os.chmod, os.path.join(d, "ro.txt"), 0o444)
    for name, target in (("link", "hello.txt"), ("escape", "../outside/canary"),
                         ("abs", os.path.join(os.path.dirname(d), "outside", "canary"))):
        if not os.path.lexists(os.path.join(d, name)):
            quiet(os.symlink, target, os.path.join(d, name))
    if not os.path.lexists(os.path.join(d, "fifo")):
        quiet(os.mkfifo, os.path.join(d, "fifo"))
    quiet(os.chmod, d, 0o777)


def tracebacks(text):
    """The Python tracebacks in a log: (signature, text) pairs, where the signature is
    the exception's type and the innermost place it came from (path:line, relative to
    the repository for nine's own files)."""
    lines = text.splitlines()
    out = []
    for i, line in enumerate(lines):
        if "Traceback (most recent call last)" not in line:
            continue
        j = i + 1
        where = "?"
        while j < len(lines) and (lines[j].startswith(" ") or not lines[j].strip()):
            s = lines[j].strip()
            if s.startswith('File "'):
                path, _, rest = s[6:].partition('", line ')
                where = "%s:%s" % (os.path.relpath(path, ROOT) if path.startswith(ROOT)
                                   else os.path.basename(path), rest.split(",")[0])
            j += 1
        exc = lines[j] if j < len(lines) else "?"
        out.append(("%s at %s" % (exc.split(":")[0], where),
                    "\n".join(lines[max(0, i - 2):j + 1])))
    return out


class Target:
    """The target server in a subprocess, over a scratch directory:
    scratch/export (exported), scratch/outside/canary (must never change)."""

    def __init__(self):
        self.scratch = tempfile.mkdtemp(prefix="nine-fuzz-")
        self.export = os.path.join(self.scratch, "export")
        self.log_path = os.path.join(self.scratch, "server.log")
        self.proc = None
        self.port = None
        self.log_seen = 0       # bytes of the log already looked at
        try:
            os.mkdir(self.export)
            os.mkdir(os.path.join(self.scratch, "outside"))
            with open(os.path.join(self.scratch, "outside", "canary"), "wb") as f:
                f.write(_CANARY)
            seed_export(self.export)
            self.start()
        except BaseException:
            self.remove()
            raise

    def start(self):
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "fuzz.target", self.export],
                                         cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                         stderr=log)
        line = self.proc.stdout.readline().decode()
        if not line.startswith("port "):
            self.stop()
            raise RuntimeError("the fuzz target did not start: %r\n%s" % (line, self.log_tail()))
        self.port = int(line.split()[1])

    def alive(self):
        return self.proc.poll() is None

    def rss_mib(self):
        try:
            with open("/proc/%d/status" % self.proc.pid) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024.0
        except OSError:
            pass
        return 0.0

    def new_tracebacks(self):
        """The tracebacks the log gained since the last call: (signature, text) pairs."""
        with open(self.log_path, "rb") as f:
            f.seek(self.log_seen)
            data = f.read()
        data = data[:data.rfind(b"\n") + 1]      # whole lines only
        self.log_seen += len(data)
        return tracebacks(data.decode("utf-8", "replace"))

    def log_tail(self, n=4000):
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""

    def escapes(self):
        """What changed next to the export: [] when nothing did."""
        out = []
        extra = set(os.listdir(self.scratch)) - {"export", "outside", "server.log"}
        out += ["made %s" % os.path.join(self.scratch, n) for n in sorted(extra)]
        outside = os.path.join(self.scratch, "outside")
        extra = set(os.listdir(outside)) - {"canary"}
        out += ["made %s" % os.path.join(outside, n) for n in sorted(extra)]
        try:
            with open(os.path.join(outside, "canary"), "rb") as f:
                if f.read() != _CANARY:
                    out.append("outside/canary was written")
        except OSError as ex:
            out.append("outside/canary: %s" % ex)
        return out

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None:
            self.proc.stdout.close()

    def remove(self):
        self.stop()
        shutil.rmtree(self.scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
