"""Round trips per second of nine.client against a 9P server.

    python -m nine.client.bench ADDR [--aname NAME] [--version 9P2000.L] [--seconds 2]
        [--greenlets 1,50] [--op getattr|walkclunk|read]

getattr: Tgetattr (or Tstat) on one fid; walkclunk: Twalk(0 names)+Tclunk pairs, counted
as two round trips; read: Tread of 1 byte.  Prints one line per (op, greenlets) with
round trips/s and the client's CPU microseconds per round trip.
"""

import argparse
import time

import gevent

from .client import Client


def run(client, op, ngreen, seconds):
    root = client.root
    dotl = client.conn.dotl
    fid = root.clone()
    if op == "read":
        fid.lopen(0) if dotl else fid.open(0)
    stop = [False]
    count = [0]

    def one():
        n = 0
        if op == "getattr":
            f = fid.getattr if dotl else fid.stat
            while not stop[0]:
                f()
                n += 1
        elif op == "walkclunk":
            while not stop[0]:
                root.clone().clunk()
                n += 2
        elif op == "read":
            while not stop[0]:
                fid.read(0, 1)
                n += 1
        count[0] += n

    gs = [gevent.spawn(one) for _ in range(ngreen)]
    t0 = time.perf_counter()
    c0 = time.process_time()
    gevent.sleep(seconds)
    stop[0] = True
    gevent.joinall(gs, raise_error=True)
    dt = time.perf_counter() - t0
    dc = time.process_time() - c0
    fid.clunk()
    return count[0] / dt, dc / max(count[0], 1) * 1e6


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("addr")
    ap.add_argument("--aname", default="")
    ap.add_argument("--uname", default=None)
    ap.add_argument("--version", default="9P2000.L")
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--greenlets", default="1,50")
    ap.add_argument("--op", default="getattr,walkclunk")
    a = ap.parse_args(argv)
    c = Client(a.addr, uname=a.uname, aname=a.aname, version=a.version)
    try:
        for op in a.op.split(","):
            for g in a.greenlets.split(","):
                rate, cpu = run(c, op, int(g), a.seconds)
                print("%-10s %3d greenlets: %8.0f round trips/s  %5.1f us client CPU each" % (
                    op, int(g), rate, cpu))
    finally:
        c.close()


if __name__ == "__main__":
    main()
