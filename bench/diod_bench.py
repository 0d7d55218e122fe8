#!/usr/bin/env python3
"""nine against diod, measured in the same run with diod's own load generators.

    python bench/diod_bench.py [--seconds 3] [--threads 4] [--rounds 2] [--size-mib 256]

Starts diod and `nine serve` on loopback, each exporting the same directory and the
`ctl` tree, then runs for each server, alternating servers round by round:
  diodload -g        getattr storm on ctl:null (ops/s)
  diodload           ctl:zero -> ctl:null copy (MB/s)
  diodcat -m 1 MiB   of a 256 MiB file (MB/s)
and prints nine/diod ratios (best round of each).  Absolute figures from different
runs are not comparable on these noisy machines; the ratios are the result.
"""

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from nine.netwait import free_port, wait_port  # noqa: E402


def diodload(port, seconds, threads, getattr_):
    cmd = ["diodload", "-s", "127.0.0.1:%d" % port, "-r", str(seconds), "-n", str(threads)]
    if getattr_:
        cmd.append("-g")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    text = out.stdout + out.stderr
    m = re.search(r"diodload: (\d+) ops/s, (\d+) rMB/s, (\d+) wMB/s", text)
    if not m or "error" in text.lower():
        raise RuntimeError("diodload failed: %s" % text.strip())
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def diodcat(port, aname, name, size, expect_md5=None):
    """Time diodcat of one file into /dev/null; with expect_md5, check the bytes instead."""
    cmd = ["diodcat", "-s", "127.0.0.1:%d" % port, "-a", aname, "-m", "1048576", name]
    if expect_md5 is not None:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=300)
        got = hashlib.md5(p.stdout).hexdigest()
        if p.returncode != 0 or got != expect_md5:
            raise RuntimeError("diodcat returned other bytes (rc %d, %d bytes): %s" % (
                p.returncode, len(p.stdout), p.stderr.decode(errors="replace").strip()))
        return None
    t0 = time.perf_counter()
    with open(os.devnull, "wb") as null:
        p = subprocess.run(cmd, stdout=null, stderr=subprocess.PIPE, timeout=300)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError("diodcat failed (rc %d): %s" % (
            p.returncode, p.stderr.decode(errors="replace").strip()))
    return size / dt / 1e6


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    if not shutil.which("diod"):
        sys.exit("diod is not installed (apt-get install diod)")

    tmp = tempfile.mkdtemp(prefix="nine-bench-")
    os.chmod(tmp, 0o755)  # diod -S acts as nobody
    export = os.path.join(tmp, "export")
    os.mkdir(export)
    os.chmod(export, 0o755)
    size = args.size_mib << 20
    chunk = os.urandom(1 << 20)
    md5 = hashlib.md5()
    with open(os.path.join(export, "big"), "wb") as f:
        for i in range(args.size_mib):
            c = bytes([i & 0xFF]) + chunk[1:]
            f.write(c)
            md5.update(c)
    md5 = md5.hexdigest()
    procs = []
    try:
        dport, nport = free_port(), free_port()
        diod = subprocess.Popen(["diod", "-f", "-n", "-l", "127.0.0.1:%d" % dport, "-e", export,
                                 "-e", "ctl", "-S"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        procs.append(diod)
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        nine = subprocess.Popen([sys.executable, "-m", "nine", "serve", "--listen",
                                 "127.0.0.1:%d" % nport, "--export", export, "--ctl",
                                 "--squash", "root", "-q",
                                 "--no-auth"],   # as diod -n: its load generators
                                env=env)         # speak MUNGE only
        procs.append(nine)
        wait_port(dport, 15, proc=diod)
        wait_port(nport, 15, proc=nine)
        # warm the page cache
        with open(os.path.join(export, "big"), "rb") as f:
            while f.read(1 << 24):
                pass
        for port in (dport, nport):  # both serve the file byte for byte
            diodcat(port, export, "big", size, expect_md5=md5)
        res = {"diod": {"getattr": [], "copy": [], "cat": []},
               "nine": {"getattr": [], "copy": [], "cat": []}}
        for r in range(args.rounds):
            for name, port in (("diod", dport), ("nine", nport)):
                ops, _, _ = diodload(port, args.seconds, args.threads, True)
                res[name]["getattr"].append(ops)
                ops, rmb, wmb = diodload(port, args.seconds, args.threads, False)
                res[name]["copy"].append(min(rmb, wmb))
                res[name]["cat"].append(diodcat(port, export, "big", size))
                print("round %d %-4s getattr %7d ops/s  copy %5d MB/s  cat %6.0f MB/s" % (
                    r + 1, name, res[name]["getattr"][-1], res[name]["copy"][-1],
                    res[name]["cat"][-1]), flush=True)
        best = {s: {k: max(v) for k, v in res[s].items()} for s in res}
        print()
        print("%-34s %12s %12s %8s %8s" % ("measure (best of %d rounds)" % args.rounds,
                                             "diod", "nine", "ratio", "target"))
        rows = [("diodload -g getattr storm, ops/s", "getattr", 0.5),
                ("diodload zero->null copy, MB/s", "copy", 0.8),
                ("diodcat %d MiB -m 1MiB, MB/s" % args.size_mib, "cat", 0.9)]
        summary = {}
        for label, key, target in rows:
            d, n = best["diod"][key], best["nine"][key]
            ratio = n / d if d else 0.0
            summary[key] = {"diod": d, "nine": n, "ratio": ratio, "target": target}
            print("%-34s %12.0f %12.0f %7.2fx %7.1fx" % (label, d, n, ratio, target))
        print("\n%d client threads, %d s per diodload, %s, %d cores" % (
            args.threads, args.seconds, time.strftime("%Y-%m-%d"), os.cpu_count()))
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"rounds": res, "summary": summary}, f, indent=1)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
