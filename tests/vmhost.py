"""Host-side helpers shared by the VM tests that drive traced host processes
(test_kernel_synth.py, test_kernel_group.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


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
