"""The group benchmark still runs and checks what it measures (no timing is asserted:
performance is measured by the benchmark itself, not by tests).

bench/group_bench.py checks every group read's equivalence classes (tree, flat mux,
serial) against the expected ones and exits 1 on a mismatch; here it runs on tiny
sizes, on loopback and with its simulated link latency (the delay line in the leaves,
the `nine mux` processes and the root)."""

import os
import re
import subprocess
import sys

import pytest

from nine.netwait import scaled

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench", "group_bench.py")


def run_bench(*args):
    p = subprocess.run([sys.executable, BENCH, "--reads", "2", "--fanout", "4"] + list(args),
                       cwd=ROOT, capture_output=True, text=True, timeout=scaled(300))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "ERROR" not in p.stdout, p.stdout
    rows = {}
    for line in p.stdout.splitlines():
        m = re.match(r"^\s+(\d+)\s+(\d+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+"
                     r"([\d.]+)x\s+([\d.]+)x\s+(\d+)\s+(\d+)$", line)
        if m:
            rows[int(m.group(1))] = dict(depth=int(m.group(2)), muxes=int(m.group(3)),
                                         rx=int(m.group(9)))
    return p.stdout, rows


def test_group_bench_runs_and_checks_its_classes():
    out, rows = run_bench("--sizes", "4,16", "--open-reads", "1")
    assert set(rows) == {4, 16}, out
    assert rows[4]["depth"] == 1 and rows[16]["depth"] == 2, rows
    assert rows[16]["rx"] <= 1.5 * rows[4]["rx"], rows  # k classes to the client, not N
    assert "tree time x" in out


@pytest.mark.parametrize("ms", ["1"])
def test_group_bench_with_simulated_link_latency(ms):
    out, rows = run_bench("--sizes", "16", "--open-reads", "0", "--latency", ms)
    assert set(rows) == {16}, out
    assert re.search(r"SIMULATED LATENCY.*\n.*each link is a %s ms round trip" % ms, out), out


def test_auth_bench_quick_runs_and_checks():
    """bench/auth_bench.py --quick: every row measured, contents and classes checked."""
    p = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "auth_bench.py"), "--quick"],
                       cwd=ROOT, capture_output=True, text=True, timeout=scaled(300))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "ERROR" not in p.stdout, p.stdout
    for row in ("--no-auth", "key + TLS", "bulk read", "group read"):
        assert row in p.stdout, p.stdout


def test_attack_bench_quick_keeps_the_server_up_and_bounded():
    """bench/attack.py --quick: every attack leaves the server up, within its RSS bound
    (the probe's latency is reported, not asserted)."""
    p = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "attack.py"), "--quick"],
                       cwd=ROOT, capture_output=True, text=True, timeout=scaled(600))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    lines = re.findall(r"^attack (\S+): RSS peak (\d+) MB \(bound (\d+) MB\).*server (\w+)",
                       p.stdout, re.M)
    assert len(lines) >= 9, p.stdout
    for name, peak, bound, state in lines:
        assert state == "up" and int(peak) <= int(bound), (name, p.stdout)
