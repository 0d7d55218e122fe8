"""The soak benchmark still runs and checks what it promises (no timing is asserted).

bench/soak.py runs a tree of `nine serve` leaves and `nine mux` processes under mixed
client load while leaves are killed and restarted and processes stopped and continued,
then reads every write the servers acknowledged from the leaves' directories; it exits
1 when a byte is lost, a read returned wrong bytes or the tree did not serve again.
Here it runs for 20 s (stretched by the machine's load), long enough for a kill and a
stop."""

import os
import re
import subprocess
import sys

from nine.netwait import scaled

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench", "soak.py")

FIGURE = re.compile(
    r"^soak: (\d+) s, ops done (\d+) \(reads (\d+), writes (\d+), group reads (\d+), "
    r"listings (\d+)\), faults injected (\d+) \(kills (\d+), stops (\d+)\), client errors "
    r"(\d+) \(by errno: [^)]*\), acknowledged writes (\d+), bytes lost (\d+)$", re.M)


def test_soak_loses_no_acknowledged_write():
    seconds = round(scaled(20))
    p = subprocess.run([sys.executable, BENCH, "--seconds", str(seconds)], cwd=ROOT,
                       capture_output=True, text=True, timeout=seconds + scaled(120))
    out = p.stdout + p.stderr[-3000:]
    assert p.returncode == 0, out
    m = FIGURE.search(p.stdout)
    assert m, out
    (_s, ops, reads, writes, groups, listings, faults, kills, stops, _errors, acked,
     lost) = (int(x) for x in m.groups())
    assert lost == 0, out
    assert kills >= 1 and stops >= 1 and faults == kills + stops, out
    assert ops > 0 and ops == reads + writes + groups + listings, out
    assert acked == writes, out
    assert "ERROR" not in p.stdout, out
