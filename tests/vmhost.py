"""Host-side helpers shared by the kernel-VM tests: those that drive traced host
processes (test_kernel_synth.py, test_kernel_group.py: one boot per module, run by
run_fixture, judged by check_booted/check_result/check_error_replies) and those that
boot per (dialect, cache) (test_kernel_vm.py, test_kernel_mux.py: needed_checks)."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

#: the marks of a VM test that traces host processes (gcc and nm build its program)
PTRACE_VM_MARKS = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux ptrace"),
    pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("nm") is None,
                       reason="needs gcc and nm"),
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None,
                       reason="needs qemu-system-x86_64"),
]

#: the only error replies expected of a guest session: walks of names that do not exist
#: yet (mkdir -p, mkdir, ln -s, test -e) and the kernel's security.capability probe
#: before a write
EXPECTED_ERRORS = {("Twalk", "ENOENT"), ("Txattrwalk", "ENODATA")}


def ptrace_ok() -> bool:
    """Whether this user may trace processes it did not start (Yama's ptrace_scope)."""
    if os.geteuid() == 0:
        return True
    try:
        return Path("/proc/sys/kernel/yama/ptrace_scope").read_text().strip() == "0"
    except OSError:
        return True


def proc_field(pid: int, name: str) -> str:
    """A field of /proc/PID/status ("" when absent)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    return ""


def peek8(pid: int, addr: int, signed: bool = False) -> int:
    """8 bytes of a process's memory, little-endian."""
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as f:
        f.seek(addr)
        return int.from_bytes(f.read(8), "little", signed=signed)


def guest_result(run, what: str = "server"):
    """The boot's GuestResult, or the test fails with the setup error and the log."""
    if run.error:
        pytest.fail(f"setup failed: {run.error}\n--- {what} log ---\n{run.log()[-3000:]}",
                    pytrace=False)
    return run.result


def tail(text: str, n: int = 40) -> str:
    return "\n".join(text.splitlines()[-n:])


def run_fixture(make, prefix: str, skip_unbootable: bool = False):
    """The body of a module-scoped fixture: make(work) -> a Run (start(), stop(),
    .error) in a fresh work directory, started once; a start failure is kept in
    .error for every test to report (skip_unbootable: when the VM itself cannot boot,
    vm.VMError, the module is skipped instead).  NINE_VM_KEEP keeps the directory."""
    from interop import vm
    if not ptrace_ok():
        pytest.skip("ptrace of a sibling process needs root or kernel.yama.ptrace_scope=0")
    work = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(work, 0o755)
    r = make(work)
    try:
        r.start()
    except vm.VMError as e:
        if not skip_unbootable:
            r.error = f"{type(e).__name__}: {e}"
        else:
            r.stop()
            shutil.rmtree(work, ignore_errors=True)
            pytest.skip(f"cannot boot the test VM here: {e}")
    except Exception as e:  # noqa: BLE001  reported by every test
        r.error = f"{type(e).__name__}: {e}"
    yield r
    r.stop()
    if os.environ.get("NINE_VM_KEEP"):
        print(f"\nkernel-VM work directory kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


def check_booted(r, checks, seconds: float) -> None:
    """The guest booted, mounted, ran every check, unmounted and powered off."""
    print(f"{r.summary()}; boot to /init {r.boot_seconds}s; boot + checks {seconds:.1f}s")
    for c in checks:
        if c in r.checks:
            print(f"  {c}: {r.checks[c].seconds:.2f}s")
    assert not r.timed_out, f"guest timed out\n{tail(r.console)}"
    assert r.mounted, f"mount failed\n{tail(r.console)}"
    assert r.done, f"guest did not finish\n{tail(r.console)}"
    assert not [w for w in r.warnings if "umount" in w], f"unmount failed: {r.warnings}"


def check_result(r, check: str) -> dict:
    """Guest check `check` passed; returns its requests {name: count}."""
    res = r.checks.get(check)
    if res is None:
        why = "mount failed" if not r.mounted else ("guest timed out" if r.timed_out else "no result")
        pytest.fail(f"{check}: {why}\n{tail(r.console)}", pytrace=False)
    reqs = dict(r.requests_by_check.get(check, {}))
    errs = [f"{e.request}->{e.errname} x{e.count}" for e in r.errors if e.check == check]
    print(f"{check}: {res.seconds:.2f}s, requests {reqs}, error replies {errs}")
    print(res.detail)
    assert res.passed, (f"guest check {check} failed (rc {res.rc}):\n{res.detail}\n"
                        f"requests: {reqs}\nerror replies: {errs}")
    return reqs


def check_error_replies(r, expected=EXPECTED_ERRORS) -> None:
    """No request of the guest was answered with an unexpected error."""
    bad = [f"{e.check}: {e.request} -> {e.errname} x{e.count}" for e in r.errors
           if (e.request, e.errname) not in expected]
    assert not bad, "unexpected error replies:\n" + "\n".join(bad)


def needed_checks(items, module: str, combos, all_) -> dict[tuple[str, str], set[str]]:
    """Which checks each (dialect, cache) boot must run for the selected tests of
    `module` (a test naming only a dialect needs every check of each of its combos)."""
    needed: dict[tuple[str, str], set[str]] = {}
    for item in items:
        cs = getattr(item, "callspec", None)
        if item.module is None or item.module.__name__ != module or cs is None:
            continue
        p = cs.params
        if "check" in p:
            needed.setdefault((p["dialect"], p["cache"]), set()).add(p["check"])
        elif "cache" in p:
            needed.setdefault((p["dialect"], p["cache"]), set()).add(all_)
        else:
            for d, c in combos:
                if d == p["dialect"]:
                    needed.setdefault((d, c), set()).add(all_)
    return needed


def runs_fixture(make, prefix: str, what: str = "kernel-VM"):
    """The body of a session fixture of boots per (dialect, cache): make(work) -> the
    runs object (close()) in a fresh work directory; NINE_VM_KEEP keeps it."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(work, 0o755)  # servers that switch to the attaching user must reach the export
    runs = make(work)
    yield runs
    runs.close()
    if os.environ.get("NINE_VM_KEEP"):
        print(f"\n{what} work directory kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
