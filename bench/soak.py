"""Soak benchmark: a tree of real `nine` processes under mixed client load while faults
are injected, then a check that every write the servers acknowledged is on disk.

    python bench/soak.py [--seconds 60] [--leaves 6] [--fanout 3] [--clients 4]
                         [--fault-every 5] [--stop-for 3] [--down-for 1]
                         [--op-timeout 5] [--seed 1] [--keep]

The tree: --leaves `nine serve --exec --export DIR` processes, each exporting its own
temporary directory on a fixed loopback port; above them `nine mux` processes of
--fanout leaves each (`simple *:/ at /nodes`, aname nine: /nodes/LEAF/files/... is
DIR), and a root `nine mux` process over those (`insert *:/ at /`).  Every process
authenticates with $NINE_KEY (a key made for the run when it is not set).

The load: --clients greenlets in this process, each on its own connection to the root,
each running one operation after another until the time is up, picked at random:
  read     a seeded file of a leaf (files/read/rK, known bytes), or a file this client
           wrote earlier and the server acknowledged; the bytes are compared
  write    a new file files/w/CLIENT-SEQ of a leaf (1 B to 192 KiB of seeded bytes):
           create, write, close; recorded with its sha256 only once the server has
           acknowledged the write and the close (a file is never written twice)
  group    a group read (aggregator equiv, sync timeout) of /groups/soak, made at the
           start with mkdir and one symlink per leaf to its files/group.txt (the same
           bytes on every leaf): every class must be those bytes; members that failed
           make it a partial group read
  listing  a leaf's files/read (its names are compared), files/w, /nodes or the group
Every 9P request has the --op-timeout (Client(timeout=)), and every operation three
times that (gevent.Timeout): a failed or timed-out operation is a client error, counted
by errno (timeout: the operation's own limit); it is expected while faults last.

The faults, every --fault-every seconds in turn:
  kill     a leaf gets SIGKILL and, --down-for seconds later, is started again on the
           same port over the same directory (its mux reconnects by itself)
  stop     a leaf or a mux (not the root) gets SIGSTOP and, --stop-for seconds later,
           SIGCONT
At the end every stopped process is continued, the load stops, the tree must serve a
read of every leaf through the root again (it is given 30 s, stretched by the machine's
load), and every acknowledged write is read from its leaf's directory directly (not
through 9P): a missing file or different bytes are bytes lost.

Output: a description, a detail line, then the figure line
  soak: N s, ops done X (reads R, writes W, group reads G, listings L), faults injected
  F (kills K, stops S), client errors E (by errno: ...), acknowledged writes W, bytes lost B
Exit status 1 when a byte is lost, a read returned wrong bytes or the tree did not
serve again after the faults; client errors are not failures.  Timing is not judged.
"""

import argparse
import collections
import errno
import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

import gevent  # noqa: E402

from nine.client import Client  # noqa: E402
from nine.launch.local import _die_with_parent  # noqa: E402
from nine.netwait import free_port, wait_for, wait_port  # noqa: E402

LEAF_MUX_FINAL = "simple *:/ at /nodes\n"
ROOT_FINAL = "insert *:/ at /\n"
GROUP = "/groups/soak"
GROUP_CONTENT = b"soak group member\n"
READ_SIZES = (100, 4096, 65536, 300000)       # files/read/r0.. of every leaf
WRITE_MAX = 192 * 1024
OPS = (("read", 40), ("write", 30), ("group", 10), ("listing", 20))
RECOVERY_S = 30


def seeded_bytes(seed, size):
    return random.Random(seed).randbytes(size)


def read_content(leaf, k):
    return seeded_bytes("read-%s-%d" % (leaf, k), READ_SIZES[k])


# ---------------------------------------------------------------------------------------
# the tree's processes

class NineProcess:
    """One `nine` server process on a fixed loopback port, its output in a log file."""

    def __init__(self, name, args, logdir):
        self.name = name
        self.port = free_port()
        self.addr = "127.0.0.1:%d" % self.port
        self.args = args
        self.log = os.path.join(logdir, name + ".log")
        self.proc = None
        self.stopped = False

    def start(self):
        env = dict(os.environ)
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "nine"] + self.args + ["--listen", self.addr],
                env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                preexec_fn=_die_with_parent())
        self.stopped = False

    def wait_serving(self):
        wait_port(self.addr, proc=self.proc, sleep=gevent.sleep)

    def signal(self, sig):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def kill(self):
        """SIGKILL, and wait (without blocking the other greenlets) until it is gone."""
        self.signal(signal.SIGKILL)
        while self.proc.poll() is None:
            gevent.sleep(0.02)

    def stop(self):
        self.signal(signal.SIGSTOP)
        self.stopped = True

    def cont(self):
        self.signal(signal.SIGCONT)
        self.stopped = False

    def end(self):
        if self.proc is None:
            return
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class SoakTree:
    """The leaves (each with its export directory), the leaf muxes and the root."""

    def __init__(self, work, nleaves, fanout):
        logs = os.path.join(work, "logs")
        os.makedirs(logs)
        self.leaves = []
        self.dirs = {}
        for i in range(nleaves):
            name = "leaf%d" % i
            d = os.path.join(work, name)
            self.seed_directory(name, d)
            self.dirs[name] = d
            self.leaves.append(NineProcess(name, ["serve", "-q", "--exec", "--export", d],
                                           logs))
        self.muxes = []
        for m, i in enumerate(range(0, nleaves, fanout)):
            kids = sum((["--child", "%s=%s" % (x.name, x.addr)]
                        for x in self.leaves[i:i + fanout]), [])
            self.muxes.append(NineProcess(
                "mux%d" % m, ["mux", "-q", "--final-text", LEAF_MUX_FINAL,
                              "--child-aname", "nine"] + kids, logs))
        kids = sum((["--child", "%s=%s" % (x.name, x.addr)] for x in self.muxes), [])
        self.root = NineProcess("root", ["mux", "-q", "--final-text", ROOT_FINAL] + kids,
                                logs)

    @staticmethod
    def seed_directory(name, d):
        os.makedirs(os.path.join(d, "read"))
        os.makedirs(os.path.join(d, "w"))
        for k in range(len(READ_SIZES)):
            with open(os.path.join(d, "read", "r%d" % k), "wb") as f:
                f.write(read_content(name, k))
        with open(os.path.join(d, "group.txt"), "wb") as f:
            f.write(GROUP_CONTENT)

    def processes(self):
        return self.leaves + self.muxes + [self.root]

    def start(self):
        for level in (self.leaves, self.muxes, [self.root]):
            for p in level:
                p.start()
            for p in level:
                p.wait_serving()

    def end(self):
        for p in reversed(self.processes()):
            p.end()


# ---------------------------------------------------------------------------------------
# the load

class Stats:
    def __init__(self):
        self.done = collections.Counter()        # operation -> completed
        self.errors = collections.Counter()      # errno name -> client errors
        self.examples = {}                       # errno name -> one message
        self.wrong = []                          # reads that returned other bytes
        self.acked = []                          # (leaf, name, size, sha256, seed)
        self.in_doubt = 0                        # writes started, never acknowledged
        self.partial_groups = 0
        self.faults = collections.Counter()      # kill / stop


def error_name(ex):
    if isinstance(ex, gevent.Timeout):
        return "timeout"
    no = getattr(ex, "errno", None)
    if isinstance(no, int) and no in errno.errorcode:
        return errno.errorcode[no]
    return type(ex).__name__


class Worker:
    """One client: its own connection to the root, one operation at a time."""

    def __init__(self, k, addr, leaves, stats, args):
        self.k = k
        self.addr = addr
        self.leaves = leaves
        self.stats = stats
        self.timeout = args.op_timeout
        self.rnd = random.Random("%d-%d" % (args.seed, k))
        self.client = None
        self.group = None
        self.mine = []           # this client's acknowledged writes
        self.seq = 0
        self.kinds = [op for op, weight in OPS for _ in range(weight)]

    def run(self, deadline):
        while time.monotonic() < deadline:
            op = self.rnd.choice(self.kinds)
            try:
                with gevent.Timeout(3 * self.timeout):
                    if self.client is None or self.client.conn.closed:
                        self.connect()
                    getattr(self, "op_" + op)()
                self.stats.done[op] += 1
            except (Exception, gevent.Timeout) as ex:
                name = error_name(ex)
                self.stats.errors[name] += 1
                self.stats.examples.setdefault(name, "%s: %s" % (op, ex))
                if op == "group":
                    self.drop_group()
                gevent.sleep(0.05)
        self.drop_group()
        if self.client is not None:
            self.client.close()

    def connect(self):
        if self.client is not None:
            self.client.close()
            self.client = None
        self.client = Client(self.addr, timeout=self.timeout, connect_timeout=self.timeout)

    def drop_group(self):
        g, self.group = self.group, None
        if g is not None:
            try:
                with gevent.Timeout(self.timeout):
                    g.close()
            except (Exception, gevent.Timeout):
                pass

    def check(self, what, got, want):
        if got != want:
            self.stats.wrong.append("%s: %d bytes read, %d expected%s" % (
                what, len(got), len(want), "" if len(got) != len(want) else " (differ)"))

    def op_read(self):
        if self.mine and self.rnd.random() < 0.3:
            leaf, name, size, _sha, seed = self.rnd.choice(self.mine)
            path = "/nodes/%s/files/w/%s" % (leaf, name)
            self.check(path, self.client.read_file(path), seeded_bytes(seed, size))
            return
        leaf = self.rnd.choice(self.leaves)
        k = self.rnd.randrange(len(READ_SIZES))
        path = "/nodes/%s/files/read/r%d" % (leaf, k)
        self.check(path, self.client.read_file(path), read_content(leaf, k))

    def op_write(self):
        leaf = self.rnd.choice(self.leaves)
        self.seq += 1
        name = "c%d-%d" % (self.k, self.seq)
        seed = "write-%s-%s" % (leaf, name)
        size = int(2 ** self.rnd.uniform(0, 17.6))          # 1 B .. about 192 KiB
        data = seeded_bytes(seed, min(size, WRITE_MAX))
        self.stats.in_doubt += 1
        f = self.client.open("/nodes/%s/files/w/%s" % (leaf, name), "x")
        try:
            n = f.write(data)
        finally:
            f.close()
        if n != len(data):
            raise OSError(errno.EIO, "short write: %d of %d bytes" % (n, len(data)))
        self.stats.in_doubt -= 1
        rec = (leaf, name, len(data), hashlib.sha256(data).hexdigest(), seed)
        self.stats.acked.append(rec)
        self.mine.append(rec)

    def op_group(self):
        if self.group is None:
            g = self.client.gopen(GROUP, "r", aggregator="equiv", sync="timeout",
                                  timeout=0.6 * self.timeout)
            if not g.served:
                g.close()
                raise OSError(errno.ENOTSUP, "the root did not serve the group")
            self.group = g
        classes = self.group.classes()
        for content, members in classes.items():
            self.check("group read (%s)" % ",".join(sorted(members)), bytes(content),
                       GROUP_CONTENT)
        if self.group.failed:
            self.stats.partial_groups += 1

    def op_listing(self):
        leaf = self.rnd.choice(self.leaves)
        what = self.rnd.randrange(4)
        if what == 0:
            got = sorted(self.client.listdir("/nodes/%s/files/read" % leaf))
            want = ["r%d" % k for k in range(len(READ_SIZES))]
            if got != want:
                self.stats.wrong.append("listing of %s/files/read: %s" % (leaf, got))
        elif what == 1:
            self.client.listdir("/nodes/%s/files/w" % leaf)
        elif what == 2:
            self.client.listdir("/nodes")
        else:
            self.client.listdir(GROUP)


def make_group(addr, leaves, timeout):
    c = Client(addr, timeout=timeout)
    try:
        c.mkdir(GROUP)
        for leaf in leaves:
            c.symlink("../../nodes/%s/files/group.txt" % leaf, "%s/%s" % (GROUP, leaf))
    finally:
        c.close()


# ---------------------------------------------------------------------------------------
# the faults

def inject_faults(tree, stats, rnd, deadline, args):
    """Every fault_every seconds, a kill or a stop in turn, until the deadline."""
    targets = tree.leaves + tree.muxes
    kill_next = True
    start = time.monotonic()
    try:
        gevent.sleep(min(args.fault_every / 2, max(0.0, deadline - time.monotonic())))
        while time.monotonic() < deadline:
            t0 = time.monotonic()
            if kill_next:
                p = rnd.choice(tree.leaves)
                p.kill()
                stats.faults["kill"] += 1
                gevent.sleep(args.down_for)
                p.start()
                p.wait_serving()
                what = "SIGKILL %s, serving again after %.1f s" % (p.name,
                                                                   time.monotonic() - t0)
            else:
                p = rnd.choice(targets)
                p.stop()
                stats.faults["stop"] += 1
                gevent.sleep(args.stop_for)
                p.cont()
                what = "SIGSTOP %s, SIGCONT after %.1f s" % (p.name, time.monotonic() - t0)
            print("  fault at %5.1f s: %s" % (t0 - start, what), flush=True)
            kill_next = not kill_next
            gevent.sleep(max(0.0, min(t0 + args.fault_every, deadline) - time.monotonic()))
    finally:
        for p in targets:
            if p.stopped:
                p.cont()


# ---------------------------------------------------------------------------------------
# after the load

def recovery(addr, leaves, timeout):
    """Seconds until a read of every leaf through the root succeeds again."""
    t0 = time.monotonic()
    pending = set(leaves)

    def all_served():
        try:
            with gevent.Timeout(2 * timeout):
                c = Client(addr, timeout=timeout, connect_timeout=timeout)
                try:
                    for leaf in sorted(pending):
                        if c.read_file("/nodes/%s/files/read/r0" % leaf) == \
                                read_content(leaf, 0):
                            pending.discard(leaf)
                finally:
                    c.close()
        except (Exception, gevent.Timeout):
            pass
        return not pending
    wait_for(all_served, RECOVERY_S, "every leaf served through the root again",
             interval=0.5, sleep=gevent.sleep)
    return time.monotonic() - t0


def bytes_lost(tree, acked):
    """Bytes of the acknowledged writes not on their leaf's disk as written: (lost,
    files with a loss)."""
    lost = bad = 0
    for leaf, name, size, sha, seed in acked:
        try:
            with open(os.path.join(tree.dirs[leaf], "w", name), "rb") as f:
                disk = f.read()
        except FileNotFoundError:
            lost += size
            bad += 1
            continue
        if hashlib.sha256(disk).hexdigest() == sha:
            continue
        want = seeded_bytes(seed, size)
        lost += sum(1 for a, b in zip(disk, want) if a != b) + max(0, size - len(disk))
        bad += 1
    return lost, bad


# ---------------------------------------------------------------------------------------

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60, help="how long the load runs")
    ap.add_argument("--leaves", type=int, default=6)
    ap.add_argument("--fanout", type=int, default=3, help="leaves per mux")
    ap.add_argument("--clients", type=int, default=4, help="client greenlets")
    ap.add_argument("--fault-every", type=float, default=5, help="seconds between faults")
    ap.add_argument("--stop-for", type=float, default=3, help="seconds a process is stopped")
    ap.add_argument("--down-for", type=float, default=1,
                    help="seconds a killed leaf stays down")
    ap.add_argument("--op-timeout", type=float, default=5,
                    help="seconds a client waits for one 9P reply")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", action="store_true",
                    help="keep the export directories and the servers' logs")
    args = ap.parse_args(argv)
    if args.leaves < 1 or args.fanout < 1 or args.clients < 1 or args.seconds <= 0:
        ap.error("--leaves, --fanout, --clients and --seconds must be positive")
    return args


def main(argv=None):
    args = parse_args(argv)
    work = tempfile.mkdtemp(prefix="nine-soak-")
    if not os.environ.get("NINE_KEY"):
        from nine.auth.key import make_key
        make_key(os.path.join(work, "key"))
        os.environ["NINE_KEY"] = os.path.join(work, "key")  # for every process started
    tree = SoakTree(work, args.leaves, args.fanout)
    stats = Stats()
    failed = []
    try:
        tree.start()
        names = [p.name for p in tree.leaves]
        print("soak: %d leaves (`nine serve --exec`) under %d `nine mux` under a root mux, "
              "%d clients; a fault every %g s (kill: down %g s, stop: %g s), op timeout %g s"
              % (len(names), len(tree.muxes), args.clients, args.fault_every,
                 args.down_for, args.stop_for, args.op_timeout), flush=True)
        make_group(tree.root.addr, names, args.op_timeout)
        t0 = time.monotonic()
        deadline = t0 + args.seconds
        workers = [Worker(k, tree.root.addr, names, stats, args)
                   for k in range(args.clients)]
        jobs = [gevent.spawn(w.run, deadline) for w in workers]
        jobs.append(gevent.spawn(inject_faults, tree, stats, random.Random(args.seed),
                                 deadline, args))
        gevent.joinall(jobs, raise_error=True)
        elapsed = time.monotonic() - t0
        try:
            healed = "%.1f s" % recovery(tree.root.addr, names, args.op_timeout)
        except TimeoutError as ex:
            healed = "never"
            failed.append("the tree did not serve every leaf again: %s" % ex)
    finally:
        tree.end()
    lost, bad = bytes_lost(tree, stats.acked)
    if lost:
        failed.append("%d bytes of %d acknowledged writes lost" % (lost, bad))
    failed += ["a read returned wrong bytes: " + w for w in stats.wrong[:10]]
    for name, msg in sorted(stats.examples.items()):
        print("  error %s, e.g. %s" % (name, msg[:160]))
    print("soak: writes never acknowledged %d, partial group reads %d, reads with wrong "
          "bytes %d, the tree served every leaf again after %s" % (
              stats.in_doubt, stats.partial_groups, len(stats.wrong), healed))
    d = stats.done
    print("soak: %d s, ops done %d (reads %d, writes %d, group reads %d, listings %d), "
          "faults injected %d (kills %d, stops %d), client errors %d (by errno: %s), "
          "acknowledged writes %d, bytes lost %d" % (
              round(elapsed), sum(d.values()), d["read"], d["write"], d["group"],
              d["listing"], sum(stats.faults.values()), stats.faults["kill"],
              stats.faults["stop"], sum(stats.errors.values()),
              ", ".join("%s %d" % e for e in stats.errors.most_common()) or "none",
              len(stats.acked), lost), flush=True)
    for msg in failed:
        print("ERROR " + msg)
    if args.keep:
        print("soak: kept %s" % work)
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
