"""Start the 9P server under test on 127.0.0.1 with a free port.

``NINE_VM_SERVER`` picks it: ``nine`` (default; ``python -m nine serve``) or
``diod`` (9P2000.L only, the reference).  ``NINE_VM_SERVER_CMD`` overrides
with any command template using ``{port}`` and ``{export}`` (then
``NINE_VM_SERVER_ANAME`` and ``NINE_VM_SERVER_DIALECTS`` describe it).
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ALL_DIALECTS = ("9p2000.L", "9p2000.u", "9p2000")


class ServerError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclasses.dataclass
class Server:
    kind: str
    port: int
    export: Path
    aname: str
    dialects: tuple[str, ...]
    proc: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def server_kind() -> str:
    if os.environ.get("NINE_VM_SERVER_CMD"):
        return "custom"
    return os.environ.get("NINE_VM_SERVER", "nine")


def server_dialects(kind: str | None = None) -> tuple[str, ...]:
    kind = kind or server_kind()
    if kind == "diod":
        return ("9p2000.L",)
    if kind == "custom":
        d = os.environ.get("NINE_VM_SERVER_DIALECTS")
        return tuple(d.split(",")) if d else ALL_DIALECTS
    return ALL_DIALECTS


def _command(kind: str, port: int, export: Path) -> tuple[list[str], str]:
    """(argv, aname) of a server kind."""
    if kind == "nine":
        return [sys.executable, "-m", "nine", "serve", "--listen", f"127.0.0.1:{port}",
                "--export", str(export)], ""
    if kind == "diod":
        # -n: no auth.  No -S (allsquash): run as root, diod then acts as the
        # attaching user, so that chown/mknod of the battery work.
        extra = shlex.split(os.environ.get("NINE_VM_DIOD_OPTS", ""))
        return ["diod", "-f", "-n", "-l", f"127.0.0.1:{port}", "-e", str(export), *extra], str(export)
    if kind == "custom":
        tmpl = os.environ["NINE_VM_SERVER_CMD"]
        argv = [a.format(port=port, export=str(export)) for a in shlex.split(tmpl)]
        return argv, os.environ.get("NINE_VM_SERVER_ANAME", "").format(export=str(export))
    raise ServerError(f"unknown NINE_VM_SERVER {kind!r} (nine, diod)")


def start_server(export: Path, log_path: Path, kind: str | None = None, ready_timeout: float = 15) -> Server:
    """Start the server exporting ``export``; return once it accepts TCP
    connections.  Raises ServerError (with its log) if it exits or never
    listens."""
    kind = kind or server_kind()
    port = free_port()
    argv, aname = _command(kind, port, export)
    log = open(log_path, "wb")
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    try:
        proc = subprocess.Popen(argv, cwd=REPO, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env=env)
    except OSError as e:
        raise ServerError(f"cannot start {argv[0]}: {e}") from e
    finally:
        log.close()
    srv = Server(kind, port, export, aname, server_dialects(kind), proc, log_path)
    deadline = time.monotonic() + ready_timeout
    while True:
        if proc.poll() is not None:
            raise ServerError(f"server {' '.join(argv)} exited with {proc.returncode}:\n{srv.log()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            pass
        if time.monotonic() > deadline:
            srv.stop()
            raise ServerError(f"server {' '.join(argv)} not listening on {port} after {ready_timeout}s:\n{srv.log()}")
        time.sleep(0.05)
    return srv
