"""Linux kernel 9P client (v9fs in a QEMU/TCG guest) against the server under test.

One boot per (dialect, cache) runs every check of interop/battery.sh; each
check is its own test: test_check[DIALECT-CACHE-CHECK].  The guest's result is
asserted first, then the host inspects what the guest left in the export.

    NINE_VM_SERVER=nine|diod   server under test (default nine; diod = 9P2000.L
                               reference: its other dialects are skipped)
    NINE_VM_SERVER_CMD='cmd {port} {export}'  any other server
    NINE_VM_JOBS=N             boots run in parallel (default 2)
    NINE_VM_TIMEOUT=S          limit per boot (default 900 s; ~20 s on a quiet machine)
    NINE_VM_CACHE=DIR          kernel/initramfs cache (default ~/.cache/nine-vm)
    NINE_VM_KEEP=1             keep the work directory (exports, console and
                               server logs) and print where it is

Needs qemu-system-x86_64, busybox-static, gcc + libc6-dev (static), and
apt-get/dpkg-deb with network access for the first download of the kernel.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from interop import battery, servers, vm  # noqa: E402
sys.path.insert(0, str(Path(__file__).resolve().parent))
import vmhost  # noqa: E402

CHECKS = battery.check_names()
COMBOS = battery.combos()
DIALECTS = list(battery.DIALECTS)
ALL = "*"


@dataclasses.dataclass
class Boot:
    dialect: str
    cache: str
    export: Path
    result: vm.GuestResult | None = None
    error: str | None = None  # server or harness failure
    server_log: str = ""
    seconds: float = 0.0


class VMRuns:
    """Boots each needed (dialect, cache) once, NINE_VM_JOBS at a time, in the
    background as soon as the session starts; tests wait for their boot."""

    def __init__(self, work: Path, needed: dict[tuple[str, str], set[str]]):
        self.work = work
        self.kind = servers.server_kind()
        self.supported = servers.server_dialects()
        self.needed = needed
        self.big = battery.make_big(work / "big.bin")
        self.futures: dict[tuple[str, str], Future] = {}
        self.lock = threading.Lock()
        jobs = int(os.environ.get("NINE_VM_JOBS", "2"))
        self.pool = ThreadPoolExecutor(max_workers=max(1, jobs))
        # build kernel + initramfs once before the boots start
        self.prepare_error = None
        try:
            vm.ensure_initramfs()
        except Exception as e:  # noqa: BLE001  reported by every test
            self.prepare_error = f"{type(e).__name__}: {e}"
        for combo in COMBOS:
            if combo in needed and combo[0] in self.supported:
                self.futures[combo] = self.pool.submit(self._boot, *combo)

    def _boot(self, dialect: str, cache: str) -> Boot:
        tag = f"{dialect}-{cache}"
        export = self.work / f"export-{tag}"
        b = Boot(dialect, cache, export)
        if self.prepare_error:
            b.error = self.prepare_error
            return b
        checks = self.needed[(dialect, cache)]
        checks = None if ALL in checks else [c for c in CHECKS if c in checks]
        t0 = time.monotonic()
        try:
            battery.setup_export(export, self.big)
            with servers.start_server(export, self.work / f"server-{tag}.log") as srv:
                try:
                    b.result = battery.run_battery(srv.port, dialect, cache, aname=srv.aname, checks=checks,
                                                   log_path=self.work / f"console-{tag}.log",
                                                   timeout=float(os.environ.get("NINE_VM_TIMEOUT", "900")))
                finally:
                    srv.stop()
                    b.server_log = srv.log()
        except Exception as e:  # noqa: BLE001  reported by every test of the boot
            b.error = f"{type(e).__name__}: {e}"
        b.seconds = time.monotonic() - t0
        return b

    def get(self, dialect: str, cache: str) -> Boot:
        if dialect not in self.supported:
            pytest.skip(f"server {self.kind} does not implement {dialect} (reference server only)")
        b = self.futures[(dialect, cache)].result()
        if b.error:
            pytest.fail(f"boot {dialect}/{cache} failed: {b.error}\n--- server log ---\n{b.server_log[-3000:]}",
                        pytrace=False)
        return b

    def close(self):
        self.pool.shutdown(wait=True)


def _needed(items) -> dict[tuple[str, str], set[str]]:
    """Which checks each (dialect, cache) boot must run for the selected tests
    of this module."""
    return vmhost.needed_checks(items, __name__, COMBOS, ALL)


@pytest.fixture(scope="session")
def vm_runs(request):
    yield from vmhost.runs_fixture(lambda work: VMRuns(work, _needed(request.session.items)),
                                   "nine-vm-test-")


_tail = vmhost.tail


@pytest.mark.parametrize("dialect,cache", COMBOS, ids=[f"{d}-{c}" for d, c in COMBOS])
def test_boot(vm_runs, dialect, cache):
    """The guest booted, mounted, ran every check, unmounted and powered off."""
    b = vm_runs.get(dialect, cache)
    r = b.result
    print(f"{dialect}/{cache}: {r.summary()}; boot to /init {r.boot_seconds}s; total with setup {b.seconds:.1f}s")
    assert not r.timed_out, f"guest timed out\n{_tail(r.console)}"
    assert r.mounted, f"mount failed\n{_tail(r.console)}"
    assert r.done, f"guest did not finish\n{_tail(r.console)}"
    assert not [w for w in r.warnings if "umount" in w], f"unmount failed: {r.warnings}"
    assert r.requests, "no 9P requests traced"
    assert not [w for w in r.warnings if "hist" in w], f"request counting incomplete: {r.warnings}"


PARAMS = [(d, c, k) for d, c in COMBOS for k in CHECKS]


@pytest.mark.parametrize("dialect,cache,check", PARAMS, ids=[f"{d}-{c}-{k}" for d, c, k in PARAMS])
def test_check(vm_runs, dialect, cache, check):
    b = vm_runs.get(dialect, cache)
    r = b.result
    res = r.checks.get(check)
    if res is None:
        why = "mount failed" if not r.mounted else ("guest timed out" if r.timed_out else "no result")
        pytest.fail(f"{check}: {why}\n{_tail(r.console)}", pytrace=False)
    reqs = dict(r.requests_by_check.get(check, {}))
    errs = [f"{e.request}->{e.errname} x{e.count}" for e in r.errors if e.check == check]
    assert res.passed, (f"guest check {check} failed (rc {res.rc}):\n{res.detail}\n"
                        f"requests: {reqs}\nerror replies: {errs}")
    battery.verify_host(check, b.export, dialect)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_message_audit(vm_runs, dialect):
    """No request the kernel sent during the battery was answered with
    EOPNOTSUPP/ENOSYS, except those the kernel probes or falls back from
    (battery.TOLERATED_REQUESTS)."""
    boots = [vm_runs.get(d, c) for d, c in COMBOS if d == dialect]
    results = [(f"{b.dialect}/{b.cache}", b.result) for b in boots]
    failures, notes = battery.audit(results)
    for n in notes:
        print(n)
    seen = sorted(set().union(*(r.requests for _, r in results)))
    print(f"{dialect}: request types sent: {' '.join(seen)}")
    assert not failures, "requests answered EOPNOTSUPP/ENOSYS:\n" + "\n".join(failures)


def test_parse_console():
    """The console protocol of the guest (no VM needed)."""
    console = "\n".join([
        "@@BOOTED 1.40",
        "@@MOUNT OK 10.0.2.2 /mnt 9p rw,msize=65536 0 0",
        "@@HREQ mount 100 1",
        "@@HREQ mount 104 2",
        "@@OUT ls total 0",
        "[    2.0] some kernel message @@OUT ls interleaved",
        "@@RESULT ls PASS 0 0.05",
        "@@HREQ ls 100 1",
        "@@HREQ ls 104 2",
        "@@HREQ ls 110 7",
        "@@HERR ls 110 4294967294 3",
        "@@OUT mv mv: can't rename",
        "@@RESULT mv FAIL 1 0.10",
        "@@HREQ mv 110 9",
        "@@HREQ mv 74 1",
        "@@HERR mv 110 4294967294 3",
        "@@HERR mv 74 -95 1",
        "@@DONE 3.0",
    ])
    r = vm.parse_console(console, vm.GuestResult(console, 0, False, 1.0))
    assert r.mounted and r.done and r.boot_seconds == 1.4
    assert r.checks["ls"].passed and r.checks["ls"].output == ["total 0", "interleaved"]
    assert not r.checks["mv"].passed and r.checks["mv"].rc == 1
    assert r.requests_by_check["ls"] == {"Twalk": 7}
    assert r.requests_by_check["mv"] == {"Twalk": 2, "Trenameat": 1}
    assert r.requests == {"Tversion": 1, "Tattach": 2, "Twalk": 9, "Trenameat": 1}
    errs = {(e.check, e.request, e.errname, e.count) for e in r.errors}
    assert errs == {("ls", "Twalk", "ENOENT", 3), ("mv", "Trenameat", "EOPNOTSUPP", 1)}
    fails, notes = battery.audit([("9p2000.L/none", r)])
    assert not fails and len(notes) == 1
