"""A fixed-seed slice of the fuzz campaign (fuzz/, `python3 -m fuzz`): 100,000 damaged
frames made in each dialect and decoded in all three, and 40,000 frames sent to a live
server over several connections, with no finding (about 20 s on an idle two-core
machine); and the campaign itself notices what it is there to notice (a decoder that
raises something else than ProtocolError, a traceback in a server log) and prints its
summary line."""

import os
import re
import subprocess
import sys

import pytest

from nine import protocol as P
from nine.netwait import scaled

from fuzz import decoder as D
from fuzz.findings import Findings
from fuzz.live import LiveCampaign
from fuzz.target import tracebacks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED = "ci"


@pytest.mark.parametrize("dialect", P.DIALECTS)
def test_decoder_slice(dialect, tmp_path):
    findings = Findings(str(tmp_path))
    c = D.DecoderCampaign(SEED, P.DIALECTS, findings)
    c.run(100000, make=(dialect,))
    assert not findings.counts, findings.report()
    s = c.stats
    assert s["frames"] == 100000 and s["decodes"] == 300000
    assert s["round_trips"] == 100000 and s["reference"] > 5000
    assert 0.05 * s["decodes"] < s["accepted"] < 0.95 * s["decodes"]


def test_live_slice(tmp_path):
    findings = Findings(str(tmp_path))
    c = LiveCampaign(SEED, P.DIALECTS, findings, probe_s=scaled(2.0))
    c.run(40000)
    assert not findings.counts, findings.report()
    s = c.stats
    assert s["frames"] >= 40000 and s["sessions"] >= 50
    # the server read the batches and did more than refuse them
    assert s["replies"] > 0.7 * s["frames"]
    assert s["errors"] < 0.9 * s["replies"]


def test_decoder_finding_is_reported_and_saved(tmp_path, monkeypatch):
    """A decoder that fails with something else than ProtocolError is a finding: counted
    by signature, its frame saved, and the saved frame replays the failure."""
    real = D.decode

    def broken(buf, dialect):
        if buf[4] == P.Twalk.mtype and len(buf) > 20:
            raise IndexError("planted")
        return real(buf, dialect)

    monkeypatch.setattr(D, "decode", broken)
    findings = Findings(str(tmp_path))
    D.DecoderCampaign(SEED, P.DIALECTS, findings, ref_rate=0).run(3000)
    crashes = [sig for sig in findings.counts if sig.startswith("crash: IndexError")]
    assert crashes, findings.report()
    saved = sorted(p for p in os.listdir(tmp_path) if p.endswith(".bin"))
    assert saved and all(os.path.exists(tmp_path / (p[:-4] + ".txt")) for p in saved)
    path = tmp_path / saved[0]
    assert path.read_bytes()[4] == P.Twalk.mtype
    assert any("IndexError: planted" in out for _, out in D.replay(path, P.DIALECTS))


def test_tracebacks_in_a_log():
    log = ("nine.server: ERROR internal error in Twalk\n"
           "Traceback (most recent call last):\n"
           '  File "%s/nine/server/core.py", line 12, in h_Twalk\n'
           "    x = y[3]\n"
           "        ~^^^\n"
           "IndexError: list index out of range\n"
           "nine.server: WARNING something else\n" % ROOT)
    (sig, text), = tracebacks(log)
    assert sig == "IndexError at nine/server/core.py:12"
    assert text.startswith("nine.server: ERROR") and text.endswith("out of range")
    assert tracebacks("nine.server: WARNING no traceback\n") == []


def test_command_summary(tmp_path):
    p = subprocess.run([sys.executable, "-m", "fuzz", "--mode", "both", "--frames", "3000",
                        "--live-frames", "2000", "--seed", SEED, "--corpus", str(tmp_path),
                        "--probe-s", str(scaled(2.0)), "-q"],
                       cwd=ROOT, capture_output=True, text=True, timeout=scaled(120))
    assert p.returncode == 0, p.stdout + p.stderr
    last = p.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"fuzz: decoder 3000 frames in \d+ s, 0 findings; live \d+ frames in "
                        r"\d+ s, 0 deaths, 0 hangs, 0 stalls, 0 tracebacks, 0 bad replies, "
                        r"0 escapes, 0 rss", last), p.stdout
    assert not os.listdir(tmp_path)
