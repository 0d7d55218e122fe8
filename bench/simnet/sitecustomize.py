"""Loaded at start-up by the `nine mux` processes of bench/group_bench.py --latency
(this directory is put on their PYTHONPATH): their servers then delay every reply by
$NINE_BENCH_LINK_DELAY_US microseconds, as the benchmark's leaves and root do.  Does
nothing without that variable."""

import os
import sys

_us = os.environ.get("NINE_BENCH_LINK_DELAY_US")
if _us:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import benchleaves
    benchleaves.install_delay(int(_us))
