"""pjdfstest through the Linux kernel 9P client (interop/pjdfstest.py).

The whole suite is a benchmark-like run (``python3 -m interop.pjdfstest``, tens of
minutes under TCG); here: the parser of prove's output, and a few test files of
pjdfstest against nine in one boot.  pjdfstest is not part of this repository:
the VM test needs a build made once with
``python3 -m interop.pjdfstest --source DIR`` (in the VM cache, or
``NINE_PJDFSTEST_BUILD=DIR``) and is skipped without one.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from interop import pjdfstest  # noqa: E402

SAMPLE = """\
[20:12:26] /run/pjd/tests/chown/00.t .. 
not ok 5 - tried '-u 65534 -g 65532,65531 -- chown pjdfstest_x -1 65532', expected 0, got EPERM
not ok 9 - tried '-u 65534 -g 65532,65531 -- chown pjdfstest_y -1 65532', expected 0, got EPERM
[20:13:01] /run/pjd/tests/chown/00.t .. Failed 2/171 subtests 
[20:13:05] /run/pjd/tests/chown/01.t .. ok     4023 ms ( 0.02 usr  0.01 sys +  2.24 cusr  1.33 csys =  3.60 CPU)
[20:13:09] /run/pjd/tests/open/02.t ... 
not ok 3 - tried 'open x O_CREAT 0644', expected 0, got ENAMETOOLONG
[20:13:10] /run/pjd/tests/open/02.t ... Failed 1/4 subtests 
[20:13:10]

Test Summary Report
-------------------
/run/pjd/tests/chown/00.t (Wstat: 0 Tests: 171 Failed: 2)
  Failed tests:  5, 9
/run/pjd/tests/open/02.t (Wstat: 0 Tests: 4 Failed: 1)
  Failed test:  3
Files=3, Tests=185, 44 wallclock secs ( 1.08 usr  0.36 sys + 65.38 cusr 37.19 csys = 104.01 CPU)
Result: FAIL
"""

#: pjdfstest files that nine passes whole (chmod: search permission, sticky directories,
#: setgid clearing; chown: EPERM for a non-owner, through the client and the server)
VM_FILES = ["chmod/05.t", "chmod/11.t", "chmod/12.t", "chown/07.t"]


def test_parse_prove_output():
    r = pjdfstest.parse(SAMPLE.splitlines())
    assert r["files"] == 3 and r["tests"] == 185 and r["result"] == "FAIL"
    assert r["failures"] == {
        "chown/00.t": [(5, "tried '-u 65534 -g 65532,65531 -- chown pjdfstest_x -1 65532', expected 0, got EPERM"),
                       (9, "tried '-u 65534 -g 65532,65531 -- chown pjdfstest_y -1 65532', expected 0, got EPERM")],
        "open/02.t": [(3, "tried 'open x O_CREAT 0644', expected 0, got ENAMETOOLONG")]}
    assert r["summary_failed"] == {"chown/00.t": 2, "open/02.t": 1}
    assert r["seconds"] == {"chown/01.t": 4.023}


def _build() -> Path | None:
    d = os.environ.get("NINE_PJDFSTEST_BUILD")
    b = Path(d) if d else pjdfstest.default_build()
    return b if (b / "pjdfstest").exists() and (b / "tests" / "misc.sh").exists() else None


def test_pjdfstest_files_against_nine():
    build = _build()
    if build is None:
        pytest.skip("no pjdfstest build: python3 -m interop.pjdfstest --source DIR makes one")
    with tempfile.TemporaryDirectory(prefix="nine-pjd-test-") as work:
        os.chmod(work, 0o755)
        res, text, _ = pjdfstest.run_server("nine", build, VM_FILES, Path(work), 600, 1024, "")
    assert res["mounted"], text
    assert not res["hostroot_failed"], "the guest could not mount the host's root (virtio-9p)"
    assert res["files"] == len(VM_FILES) and res["tests"] > 100, text
    assert res["failures"] == {} and res["bad"] == {}, text
    assert res["result"] == "PASS", text
