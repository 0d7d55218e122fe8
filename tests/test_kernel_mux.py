"""The kernel battery through the root of a 2-level tree of muxes.

The same guest checks, host-side setup and host-side verification as
tests/test_kernel_vm.py (whose machinery this reuses), but the server under
test is ``python -m nine tree --topology FILE`` with

    [tree]
    fanout = 2
    [leaves]
    node1 = local:EXPORT
    node2 = local
    node3 = local

that is: the root mux -> 2 muxes -> 3 leaf servers; node1 exports the battery's
directory (as files/ in its aname "nine") and the kernel mounts the root with
``aname=nodes/node1/files``.  Every request crosses two muxes, and what the
host finds in EXPORT afterwards is what landed on the owning leaf
(interop/servers.py, kind "tree").

One boot per (dialect, cache); each check is its own test:
test_check[DIALECT-CACHE-CHECK].  By default the boots are 9p2000.L, .u and
9p2000 with cache=none, plus 9p2000.L with cache=loose;
NINE_VM_MUX_COMBOS=all boots every combination of interop/battery.py, or a
list such as ``9p2000.L-mmap,9p2000.u-loose``.  The NINE_VM_* variables of
test_kernel_vm.py apply (NINE_VM_JOBS, NINE_VM_TIMEOUT, NINE_VM_KEEP, ...).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
import test_kernel_vm as kvm  # noqa: E402
import vmhost  # noqa: E402
from interop import battery, servers  # noqa: E402

KIND = "tree"
DEFAULT_COMBOS = [("9p2000.L", "none"), ("9p2000.u", "none"), ("9p2000", "none"), ("9p2000.L", "loose")]


def _combos() -> list[tuple[str, str]]:
    spec = os.environ.get("NINE_VM_MUX_COMBOS", "")
    if not spec:
        return DEFAULT_COMBOS
    if spec == "all":
        return battery.combos()
    wanted = {tuple(s.strip().rsplit("-", 1)) for s in spec.split(",") if s.strip()}
    return [c for c in battery.combos() if c in wanted]


COMBOS = _combos()
DIALECTS = [d for d in battery.DIALECTS if any(c[0] == d for c in COMBOS)]
CHECKS = kvm.CHECKS
ALL = kvm.ALL


class TreeRuns(kvm.VMRuns):
    """test_kernel_vm's boots, with a 2-level nine tree as the server (the
    kind is picked per thread, so the environment is left alone)."""

    def __init__(self, work: Path, needed):
        with servers.using(KIND):
            super().__init__(work, needed)

    def _boot(self, dialect: str, cache: str) -> kvm.Boot:
        with servers.using(KIND):
            return super()._boot(dialect, cache)


def _needed(items) -> dict[tuple[str, str], set[str]]:
    """Which checks each (dialect, cache) boot must run for the selected tests
    of this module."""
    return vmhost.needed_checks(items, __name__, COMBOS, ALL)


@pytest.fixture(scope="session")
def mux_runs(request):
    yield from vmhost.runs_fixture(lambda work: TreeRuns(work, _needed(request.session.items)),
                                   "nine-vm-mux-test-", "kernel-VM (tree)")


IDS = [f"{d}-{c}" for d, c in COMBOS]


@pytest.mark.parametrize("dialect,cache", COMBOS, ids=IDS)
def test_boot(mux_runs, dialect, cache):
    """The tree came up with 2 levels of muxes over the 3 leaves, and the guest
    booted, mounted its aname, ran every check, unmounted and powered off."""
    b = mux_runs.get(dialect, cache)
    retries = [ln for ln in b.server_log.splitlines() if ln.startswith(servers.TREE_RETRY_MARK)]
    for ln in retries:  # `nine tree` children's ports collided (interop/servers.py)
        print(f"{dialect}/{cache}: {ln}")
    log = b.server_log.rpartition(servers.TREE_RETRY_MARK)[2]
    m = re.search(r"nine tree: (\d+) leaves, (\d+) levels of muxes", log)
    assert m and m.groups() == ("3", "2"), f"not the expected tree:\n{log[:2000]}"
    assert re.search(r"^muxes \(level 1\):\s+mux1-0=\S+ mux1-1=\S+$", log, re.M), f"not 2 muxes:\n{log[:2000]}"
    assert "Traceback" not in log, f"a process of the tree logged a traceback:\n{log[-4000:]}"
    kvm.test_boot(mux_runs, dialect, cache)


PARAMS = [(d, c, k) for d, c in COMBOS for k in CHECKS]


@pytest.mark.parametrize("dialect,cache,check", PARAMS, ids=[f"{d}-{c}-{k}" for d, c, k in PARAMS])
def test_check(mux_runs, dialect, cache, check):
    kvm.test_check(mux_runs, dialect, cache, check)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_message_audit(mux_runs, dialect):
    """No request the kernel sent through the tree was answered with
    EOPNOTSUPP/ENOSYS, except battery.TOLERATED_REQUESTS."""
    boots = [mux_runs.get(d, c) for d, c in COMBOS if d == dialect]
    results = [(f"{b.dialect}/{b.cache}", b.result) for b in boots]
    failures, notes = battery.audit(results)
    for n in notes:
        print(n)
    seen = sorted(set().union(*(r.requests for _, r in results)))
    print(f"{dialect}: request types sent: {' '.join(seen)}")
    assert not failures, "requests answered EOPNOTSUPP/ENOSYS:\n" + "\n".join(failures)


class _FakeProc:
    returncode = None

    def poll(self):
        return None


def test_tree_banner_check(tmp_path):
    """interop/servers.py takes a tree only where its banner names the root's
    port and distinct children (no VM needed): `nine tree` picks its
    children's ports by bind(0)-and-close, and a child that loses its port
    leaves someone else's server answering in its place."""
    good = ("nine tree: 3 leaves, 2 levels of muxes, root on 127.0.0.1:5000\n"
            "leaves:            node1=127.0.0.1:5001 node2=127.0.0.1:5002 node3=127.0.0.1:5003\n"
            "muxes (level 1):   mux1-0=127.0.0.1:5004 mux1-1=127.0.0.1:5005\n")
    cases = {
        good: None,
        good.replace(":5003", ":5001"): "children share addresses ['127.0.0.1:5001']",
        good.replace("root on 127.0.0.1:5000", "root on 127.0.0.1:6000"): "root on 127.0.0.1:6000, not port 5000",
        "nine: cannot listen on 127.0.0.1:5001: [Errno 98]\n" + good: "a child could not listen",
        # only the last attempt counts
        "junk\n" + servers.TREE_RETRY_MARK + "1 discarded: x\n" + good: None,
    }
    for text, want in cases.items():
        log = tmp_path / "server.log"
        log.write_text(text)
        srv = servers.Server("tree", 5000, tmp_path, servers.TREE_ANAME, servers.ALL_DIALECTS, _FakeProc(), log, True)
        assert servers._tree_problem(srv, timeout=0.2) == want, text
