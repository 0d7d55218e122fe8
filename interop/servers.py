"""Start the 9P server under test on 127.0.0.1 with a free port.

``NINE_VM_SERVER`` picks it: ``nine`` (default; ``python -m nine serve``) or
``diod`` (9P2000.L only, the reference) or ``tree`` (a 2-level ``nine tree``:
the root over 2 muxes over 3 leaves, node1 exporting the directory, mounted with
aname ``nodes/node1/files``).  ``NINE_VM_SERVER_CMD`` overrides with any
command template using ``{port}`` and ``{export}`` (then
``NINE_VM_SERVER_ANAME`` and ``NINE_VM_SERVER_DIALECTS`` describe it).
In a program, ``with servers.using("tree"):`` picks the kind for the calling
thread, whatever the environment says.  The deadlines here are for an idle
machine, stretched by its load (nine.netwait).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
from pathlib import Path

from nine.netwait import ServerExited, free_port, wait_for, wait_port

REPO = Path(__file__).resolve().parent.parent
ALL_DIALECTS = ("9p2000.L", "9p2000.u", "9p2000")

#: kind "tree": `nine tree --topology FILE`, FILE written next to the export.
#: fanout 2 over 3 leaves gives root -> 2 muxes -> leaves; node1 exports the
#: directory (as files/ in its aname "nine"), and the kernel mounts that subtree.
#: The leaves' arguments are the default ones plus --allow-devices (check_mknod).
TREE_TOPOLOGY = """[tree]
fanout = 2
leaf-args = --proc --host --exec --allow-devices

[leaves]
node1 = local:{export}
node2 = local
node3 = local
"""
TREE_ANAME = "nodes/node1/files"

_local = threading.local()


class ServerError(RuntimeError):
    pass


@dataclasses.dataclass
class Server:
    kind: str
    port: int
    export: Path
    aname: str
    dialects: tuple[str, ...]
    proc: subprocess.Popen
    log_path: Path
    group: bool = False  # the server runs in its own process group; stop() signals all of it

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self):
        if self.group:
            # the tree's leaves and muxes are its children, in its process group
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(5)
                    break
                except subprocess.TimeoutExpired:
                    pass
            return
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


@contextlib.contextmanager
def using(kind: str):
    """Within the block, server_kind() of this thread is ``kind``."""
    old = getattr(_local, "kind", None)
    _local.kind = kind
    try:
        yield
    finally:
        _local.kind = old


def server_kind() -> str:
    if getattr(_local, "kind", None):
        return _local.kind
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
        # --no-auth: the kernel mounts with trans=tcp, it cannot authenticate (an
        # authenticated kernel mount goes through `nine mount`, tests/test_kernel_auth.py);
        # --allow-devices: check_mknod makes devices, as with diod (refused by default)
        return [sys.executable, "-m", "nine", "serve", "--listen", f"127.0.0.1:{port}",
                "--no-auth", "--allow-devices", "--export", str(export)], ""
    if kind == "diod":
        # -n: no auth.  No -S (allsquash): run as root, diod then acts as the
        # attaching user, so that chown/mknod of the battery work.
        extra = shlex.split(os.environ.get("NINE_VM_DIOD_OPTS", ""))
        return ["diod", "-f", "-n", "-l", f"127.0.0.1:{port}", "-e", str(export), *extra], str(export)
    if kind == "tree":
        topo = export.parent / f"{export.name}.topology"
        topo.write_text(TREE_TOPOLOGY.format(export=export))
        # -v: the leaves' and muxes' stderr (internal errors) goes to the server log too
        return [sys.executable, "-m", "nine", "-v", "tree", "--topology", str(topo), "--listen",
                f"127.0.0.1:{port}", "--no-auth"], TREE_ANAME
    if kind == "custom":
        tmpl = os.environ["NINE_VM_SERVER_CMD"]
        argv = [a.format(port=port, export=str(export)) for a in shlex.split(tmpl)]
        return argv, os.environ.get("NINE_VM_SERVER_ANAME", "").format(export=str(export))
    raise ServerError(f"unknown NINE_VM_SERVER {kind!r} (nine, diod, tree)")


#: one tree starts at a time: `nine tree` picks its children's ports with
#: bind(0)-and-close, so trees starting together can take each other's ports
_tree_start_lock = threading.Lock()
TREE_ATTEMPTS = 5
TREE_RETRY_MARK = "### tree start attempt "


def _tree_problem(srv: Server, timeout: float = 10) -> str | None:
    """Why the tree that answers on srv.port is not the one asked for, or
    None: its banner must name our root port and distinct child addresses
    (a child that lost its port to another process means a child of
    someone else answers in its place)."""
    def banner():
        log = srv.log().rpartition(TREE_RETRY_MARK)[2]  # this attempt's part
        m = re.search(r"^nine tree: .* root on (\S+)$", log, re.M)
        if m and re.search(r"^muxes \(level \d+\):.*$", log, re.M):
            return log, m
        if srv.proc.poll() is not None:
            raise ServerExited(f"exited with {srv.proc.returncode}")
        return None
    try:
        log, m = wait_for(banner, timeout, "the tree's banner")
    except ServerExited as e:
        return str(e)
    except TimeoutError:
        return "no banner"
    if not m.group(1).endswith(f":{srv.port}"):
        return f"root on {m.group(1)}, not port {srv.port}"
    addrs = re.findall(r"\S+=(\d+\.\d+\.\d+\.\d+:\d+)", log)
    dups = sorted({a for a in addrs if addrs.count(a) > 1})
    if dups:
        return f"children share addresses {dups}"
    if "cannot listen" in log:
        return "a child could not listen"
    return None


def start_server(export: Path, log_path: Path, kind: str | None = None, ready_timeout: float | None = None) -> Server:
    """Start the server exporting ``export``; return once it accepts TCP
    connections.  Raises ServerError (with its log) if it exits or never
    listens.  A tree is started one at a time, and again (up to
    TREE_ATTEMPTS times) where its children's ports collided; the discarded
    attempts' logs stay at the top of the log."""
    kind = kind or server_kind()
    if kind != "tree":
        return _start_server(export, log_path, kind, ready_timeout)
    with _tree_start_lock:
        for attempt in range(1, TREE_ATTEMPTS + 1):
            try:
                srv = _start_server(export, log_path, kind, ready_timeout, append=attempt > 1)
            except ServerError as e:  # e.g. a child took the root's port
                problem = str(e).splitlines()[0]
            else:
                problem = _tree_problem(srv)
                if problem is None:
                    return srv
                srv.stop()
            with open(log_path, "ab") as f:
                f.write(f"{TREE_RETRY_MARK}{attempt} discarded: {problem}\n".encode())
    raise ServerError(f"tree did not start right in {TREE_ATTEMPTS} attempts:\n"
                      f"{log_path.read_text(errors='replace')}")


def _start_server(export: Path, log_path: Path, kind: str, ready_timeout: float | None,
                  append: bool = False) -> Server:
    group = kind == "tree"
    if ready_timeout is None:
        ready_timeout = 60 if group else 15  # a tree starts 6 Python processes
    port = free_port()
    argv, aname = _command(kind, port, export)
    log = open(log_path, "ab" if append else "wb")
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    try:
        proc = subprocess.Popen(argv, cwd=REPO, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env=env, start_new_session=group)
    except OSError as e:
        raise ServerError(f"cannot start {argv[0]}: {e}") from e
    finally:
        log.close()
    srv = Server(kind, port, export, aname, server_dialects(kind), proc, log_path, group)
    try:
        wait_port(port, ready_timeout, proc=proc)
    except ServerExited:
        raise ServerError(f"server {' '.join(argv)} exited with {proc.returncode}:\n{srv.log()}") from None
    except TimeoutError as e:
        srv.stop()
        raise ServerError(f"server {' '.join(argv)}: {e}:\n{srv.log()}") from None
    return srv
