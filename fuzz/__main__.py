"""The fuzz command (run from the repository's root):

    python3 -m fuzz --frames 1000000 --seed 1 --mode decoder
    python3 -m fuzz --frames 200000 --seed 1 --mode live --dialect 9P2000.L
    python3 -m fuzz --frames 100000 --live-frames 20000 --mode both
    python3 -m fuzz --replay CORPUS/crash-0123456789ab.bin

It prints progress on stderr, what it found, and one summary line:

    fuzz: decoder 1000000 frames in 92 s, 0 findings; live 200000 frames in 80 s, ...

and exits 1 when anything was found (each finding is saved under --corpus).
"""

import argparse
import os
import sys
import tempfile

from nine import protocol as P

from .findings import Findings


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python3 -m fuzz",
                                description="Fuzz nine's 9P decoder and a live nine server.")
    p.add_argument("--frames", type=int, default=100000,
                   help="damaged frames to decode; also the live frames unless --live-frames")
    p.add_argument("--live-frames", type=int, help="frames to send to the live server")
    p.add_argument("--seed", default="1", help="the campaign's seed (any string)")
    p.add_argument("--mode", choices=("decoder", "live", "both"), default="both")
    p.add_argument("--dialect", action="append", choices=P.DIALECTS,
                   help="a dialect to fuzz (repeatable; default: all three)")
    p.add_argument("--corpus", default=os.path.join(tempfile.gettempdir(), "nine-fuzz-corpus"),
                   help="where findings are saved (default: %(default)s)")
    p.add_argument("--slow-ms", type=float, default=50.0,
                   help="a decode slower than this is a finding (default 50)")
    p.add_argument("--ref-rate", type=float, default=0.1,
                   help="share of frames also decoded by tests/reference.py (default 0.1)")
    p.add_argument("--conns", type=int, default=4, help="live connections at once")
    p.add_argument("--probe-s", type=float, default=2.0,
                   help="seconds a probe connection has to answer (default 2)")
    p.add_argument("--rss-mib", type=float, default=256,
                   help="server memory growth that is a finding (default 256 MiB)")
    p.add_argument("--replay", nargs="+", metavar="FILE",
                   help="play saved findings again instead of fuzzing")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    return p.parse_args(argv)


def replay(paths, dialects):
    from . import decoder, live
    for path in paths:
        print("%s:" % path)
        with open(path, "rb") as f:
            saved_live = f.read(4) == b"CONN"
        if saved_live:
            lines = live.replay(path)
        else:
            lines = ["%s: %s" % pair for pair in decoder.replay(path, dialects)]
        for line in lines:
            print("  " + line.replace("\n", "\n  "))


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    dialects = tuple(args.dialect or P.DIALECTS)
    if args.replay:
        replay(args.replay, dialects)
        return 0
    progress = None if args.quiet else (lambda text: print(text, file=sys.stderr, flush=True))
    parts = []
    found = 0
    if args.mode in ("decoder", "both"):
        from .decoder import DecoderCampaign
        findings = Findings(args.corpus)
        c = DecoderCampaign(args.seed, dialects, findings, args.slow_ms, args.ref_rate)
        dt = c.run(args.frames, progress)
        s = c.stats
        print("decoder: %d frames (%s), %d decodes, %d still decoded, %d round trips, "
              "%d reference checks, %d Framer streams, %.0f frames/s"
              % (s["frames"], ", ".join(dialects), s["decodes"], s["accepted"],
                 s["round_trips"], s["reference"], s["framer_streams"], s["frames"] / dt))
        if findings.counts:
            print("decoder findings:\n" + findings.report())
        parts.append("decoder %d frames in %.0f s, %d findings" % (s["frames"], dt, len(findings)))
        found += len(findings)
    if args.mode in ("live", "both"):
        from .live import LiveCampaign
        findings = Findings(args.corpus)
        c = LiveCampaign(args.seed, dialects, findings, args.conns, args.rss_mib,
                         probe_s=args.probe_s)
        dt = c.run(args.live_frames if args.live_frames is not None else args.frames, progress)
        s = c.stats
        print("live: %d frames in %d rounds on %d sessions, %d replies (%d errors), "
              "%d disconnects, %d slow probes, %d restarts, %.0f frames/s, rss peak %.0f MiB"
              % (s["frames"], s["rounds"], s["sessions"], s["replies"], s["errors"],
                 s["disconnects"], s["slow_probes"], s["restarts"], s["frames"] / dt,
                 c.rss_peak))
        if findings.counts:
            print("live findings:\n" + findings.report())
        parts.append("live %d frames in %.0f s, %d deaths, %d hangs, %d stalls, "
                     "%d tracebacks, %d bad replies, %d escapes, %d rss"
                     % (s["frames"], dt, *(findings.of_kind(k) for k in (
                         "death", "hang", "stall", "traceback", "badreply", "escape",
                         "rss"))))
        found += len(findings)
    print("fuzz: " + "; ".join(parts))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
