"""nine ptail against real leaf servers under a two-level tree (`nine tree --leaves 4
--fanout 2 --leaf-export DIR`): the last lines of each host, lines appended on each host
(written straight into the leaves' export directories), --fold, --grep, rotation by
truncation and by rename, a leaf restarted, a host down from the start, a stopped
(timed-out) host.  TreeUnderTest is shared with tests/test_ptop.py."""

import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import ENV_ROOT, ROOT
from nine.client import Client
from nine.tools.common import headline
from nine.group import aggregate as A
from nine.netwait import free_port, wait_port


class TreeUnderTest:
    """`nine tree` in a session of its own, with its leaves' ports, and ways to kill,
    restart, stop and continue a leaf."""

    def __init__(self, tmp_path, leaves=4, fanout=2):
        self.data = tmp_path / "data"
        self.data.mkdir()
        self.addr = "127.0.0.1:%d" % free_port()
        self.err = open(tmp_path / "tree.err", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nine", "tree", "--leaves", str(leaves), "--fanout",
             str(fanout), "--leaf-export", str(self.data), "--listen", self.addr],
            env=ENV_ROOT, stdout=subprocess.PIPE, stderr=self.err, start_new_session=True)
        self.extra = {}           # leaves restarted here: name -> Popen
        self.argv = {}            # a killed leaf's command line
        lines = []
        while len(lines) < 2:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("nine tree ended: %s" % (tmp_path / "tree.err").read_text())
            lines.append(line.decode())
        assert "2 levels of muxes" in lines[0], lines
        self.ports = {n: int(p) for n, p in re.findall(r"(node\d+)=127\.0\.0\.1:(\d+)",
                                                       lines[1])}
        self.names = sorted(self.ports)
        for n in self.names:
            (self.data / n).mkdir(exist_ok=True)

    def file(self, node, name="log"):
        return self.data / node / name

    def leaf_pid(self, node):
        if node in self.extra:
            return self.extra[node].pid
        want = str(self.data / node).encode()
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                argv = open("/proc/%s/cmdline" % d, "rb").read().split(b"\0")
                if os.getsid(int(d)) != self.proc.pid:
                    continue
            except OSError:
                continue
            if b"serve" in argv and want in argv:
                return int(d)
        raise LookupError("no leaf for %s" % node)

    def kill(self, node):
        pid = self.leaf_pid(node)
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            self.argv[node] = [a.decode() for a in f.read().split(b"\0") if a]
        os.kill(pid, signal.SIGKILL)
        p = self.extra.pop(node, None)
        if p is not None:
            p.wait(10)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)

    def restart(self, node):
        """The killed leaf again, on its port (its mux finds it there)."""
        argv = list(self.argv[node])
        i = argv.index("--address-file")
        del argv[i:i + 2]
        argv[argv.index("--listen") + 1] = "127.0.0.1:%d" % self.ports[node]
        self.extra[node] = subprocess.Popen(argv, env=ENV_ROOT, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL)
        wait_port(self.ports[node], proc=self.extra[node])

    def stop(self, node):
        os.kill(self.leaf_pid(node), signal.SIGSTOP)

    def cont(self, node):
        os.kill(self.leaf_pid(node), signal.SIGCONT)

    def close(self):
        for n in list(self.names):
            try:
                self.cont(n)
            except (LookupError, OSError):
                pass
        for p in self.extra.values():
            p.kill()
            p.wait(10)
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(5)
        self.err.close()


class Tool:
    """`nine TOOL ARGS` in the background; its stdout and stderr lines as they come."""

    def __init__(self, tree, tool, *args, argv=None):
        self.proc = subprocess.Popen(argv or [sys.executable, "-m", "nine", tool, "-a",
                                              tree.addr] + list(args),
                                     env=ENV_ROOT, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, start_new_session=True)
        self.out, self.err = [], []
        self.threads = [threading.Thread(target=self._pump, args=(f, into), daemon=True)
                        for f, into in ((self.proc.stdout, self.out),
                                        (self.proc.stderr, self.err))]
        for t in self.threads:
            t.start()

    @staticmethod
    def _pump(f, into):
        for line in iter(f.readline, b""):
            into.append(line.decode().rstrip("\n"))

    def wait_for(self, pred, what, timeout=20):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if pred():
                return
            time.sleep(0.05)
        raise AssertionError("%s not seen in %gs; out=%r err=%r" % (what, timeout,
                                                                   self.out, self.err))

    def wait_out(self, line, timeout=20):
        self.wait_for(lambda: line in self.out, repr(line), timeout)

    def wait_err(self, pattern, timeout=20):
        self.wait_for(lambda: any(re.search(pattern, e) for e in self.err), pattern, timeout)

    def finish(self, timeout=30):
        try:
            self.proc.wait(timeout)
        finally:
            for t in self.threads:
                t.join(5)
        return self.proc.returncode

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
        return self.finish()


def append(path, text):
    with open(path, "a") as f:
        f.write(text)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    t = TreeUnderTest(tmp_path_factory.mktemp("ptail"))
    yield t
    t.close()


@pytest.fixture
def logs(tree, request):
    """A fresh log file on every host (a name of this test's own)."""
    name = request.node.name + ".log"
    for n in tree.names:
        tree.file(n, name).write_text("".join("%s old %d\n" % (n, i) for i in range(1, 21)))
    return name


def test_last_lines_of_each_host(tree, logs):
    t = Tool(tree, "ptail", "-n", "3", "-w", "node[1-4,9]", logs)
    assert t.finish() == 1                   # node9: no such host
    for n in tree.names:
        assert [ln for ln in t.out if ln.startswith(n + ":")] == \
            ["%s: %s old %d" % (n, n, i) for i in (18, 19, 20)], t.out
    assert len(t.out) == 12, t.out
    assert t.err == ["nine ptail: node9: no such host"], t.err
    # an absolute path on the host (its export's directory) is the same file
    t = Tool(tree, "ptail", "-n", "1", "-w", "node2", str(tree.file("node2", logs)))
    assert t.finish() == 0 and t.out == ["node2: node2 old 20"], (t.out, t.err)


def test_follow_sees_lines_appended_on_each_host(tree, logs):
    t = Tool(tree, "ptail", "-f", "-n", "0", logs)
    try:
        time.sleep(1.5)
        for n in tree.names:
            append(tree.file(n, logs), "%s new 1\n%s new 2\n" % (n, n))
        for n in tree.names:
            t.wait_out("%s: %s new 2" % (n, n))
        assert not [ln for ln in t.out if " old " in ln], t.out      # -n 0
        for n in tree.names:        # in each host's order
            mine = [ln for ln in t.out if ln.startswith(n + ":")]
            assert mine == ["%s: %s new 1" % (n, n), "%s: %s new 2" % (n, n)], t.out
        # a burst larger than one piece of the stream arrives whole, in order
        append(tree.file("node3", logs), "".join("burst %05d\n" % i for i in range(4000)))
        t.wait_out("node3: burst 03999")
        burst = [ln for ln in t.out if "burst" in ln]
        assert burst == ["node3: burst %05d" % i for i in range(4000)]
    finally:
        t.stop()
    assert not t.err, t.err


def test_fold_prints_a_line_of_many_hosts_once(tree, logs):
    t = Tool(tree, "ptail", "-f", "-n", "0", "--fold", "1", logs)
    try:
        time.sleep(1.5)
        for n in ("node1", "node2", "node3"):
            append(tree.file(n, logs), "disk full\n")
        append(tree.file("node4", logs), "all well\n")
        t.wait_out("node[1-3] (3): disk full")
        t.wait_out("node4: all well")
        time.sleep(1.5)
        assert sorted(t.out) == ["node4: all well", "node[1-3] (3): disk full"], t.out
    finally:
        t.stop()


def test_fold_prints_a_line_every_host_sent_without_waiting_for_the_window(tree, logs):
    """A line that every followed host has sent is printed at once, long before a 60 s
    window closes; a line only some hosts sent waits for its window, and no host's lines
    are reordered (node1's "everyone again" comes after its "only the first", folded
    with the others' or, when theirs arrived before node1's first line, on its own)."""
    t = Tool(tree, "ptail", "-f", "-n", "0", "--fold", "60", logs)
    try:
        time.sleep(1.5)
        for n in tree.names:
            append(tree.file(n, logs), "everyone says this\n")
        t.wait_out("%s: everyone says this" % headline(tree.names), timeout=30)
        append(tree.file(tree.names[0], logs), "only the first\n")
        for n in tree.names:
            append(tree.file(n, logs), "everyone again\n")
        time.sleep(3)
        assert t.out == ["%s: everyone says this" % headline(tree.names)], t.out
        os.killpg(t.proc.pid, signal.SIGINT)     # Ctrl-C prints what is held, in order
        t.finish()
        first, rest = tree.names[0], tree.names[1:]
        assert t.out[1:] in (
            ["%s: only the first" % first, "%s: everyone again" % headline(tree.names)],
            ["%s: everyone again" % headline(rest), "%s: only the first" % first,
             "%s: everyone again" % first]), t.out
    finally:
        t.stop()


def test_grep_at_the_leaves(tree, logs):
    t = Tool(tree, "ptail", "-f", "-n", "5", "--grep", "ERR[0-9]", logs)
    try:
        time.sleep(1.5)
        for n in tree.names:
            append(tree.file(n, logs), "ok\nERR1 on %s\nfine\n" % n)
        for n in tree.names:
            t.wait_out("%s: ERR1 on %s" % (n, n))
        time.sleep(1)
        assert len(t.out) == 4, t.out        # the old lines do not match
    finally:
        t.stop()


def test_rotation_by_truncation_and_by_rename(tree, logs):
    t = Tool(tree, "ptail", "-f", "-n", "1", "-w", "node1,node2", logs)
    try:
        t.wait_out("node1: node1 old 20")
        t.wait_out("node2: node2 old 20")
        # copytruncate: the file is copied away, then cut to nothing, and written again
        path = tree.file("node1", logs)
        (tree.data / "node1" / (logs + ".1")).write_bytes(path.read_bytes())
        with open(path, "w") as f:
            f.write("after truncation\n")
        t.wait_out("node1: after truncation")
        # rename and create: the old name now names a new file
        path = tree.file("node2", logs)
        os.rename(path, str(path) + ".1")
        path.write_text("a new file\n")
        t.wait_out("node2: a new file")
        append(path, "more in the new file\n")
        t.wait_out("node2: more in the new file")
        append(str(path) + ".1", "late line in the old file\n")
        append(tree.file("node1", logs), "node1 goes on\n")
        t.wait_out("node1: node1 goes on")
        time.sleep(1.5)
        assert not [ln for ln in t.out if "late line" in ln], t.out
        assert t.out.count("node1: after truncation") == 1, t.out
    finally:
        t.stop()
    assert not t.err, t.err


def test_restarted_leaf_is_followed_on(tree, logs):
    t = Tool(tree, "ptail", "-f", "-n", "0", logs)
    try:
        time.sleep(1.5)
        append(tree.file("node2", logs), "before\n")
        t.wait_out("node2: before")
        tree.kill("node2")
        t.wait_err(r"^nine ptail: node2 gone: ")
        append(tree.file("node2", logs), "while down\n")
        append(tree.file("node1", logs), "node1 meanwhile\n")
        t.wait_out("node1: node1 meanwhile")       # the others go on
        t0 = time.time()
        tree.restart("node2")
        t.wait_out("node2: while down", timeout=20)
        took = time.time() - t0
        print("restarted leaf followed on after %.1f s" % took)
        t.wait_err(r"^nine ptail: node2 back$")
        append(tree.file("node2", logs), "after\n")
        t.wait_out("node2: after")
        # followed on from where it was: nothing twice
        mine = [ln for ln in t.out if ln.startswith("node2:")]
        assert mine == ["node2: before", "node2: while down", "node2: after"], t.out
        assert took < 15, took       # (about 2 s here; much more on a loaded machine)
    finally:
        t.stop()


def test_down_host_at_start_and_a_stopped_host(tree, logs):
    tree.kill("node3")
    t = None
    try:
        t = Tool(tree, "ptail", "-f", "-n", "1", logs)
        t.wait_err(r"^nine ptail: node3 gone: ")
        for n in ("node1", "node2", "node4"):
            t.wait_out("%s: %s old 20" % (n, n))
        append(tree.file("node3", logs), "node3 while down\n")
        tree.restart("node3")
        t.wait_err(r"^nine ptail: node3 back$", timeout=15)
        t.wait_out("node3: node3 while down")      # its last line, then what came
        # a stopped leaf (its requests time out) holds nobody else up
        tree.stop("node4")
        time.sleep(0.5)
        append(tree.file("node4", logs), "node4 while stopped\n")
        t0 = time.time()
        append(tree.file("node1", logs), "node1 while node4 stopped\n")
        t.wait_out("node1: node1 while node4 stopped", timeout=5)
        assert time.time() - t0 < 3
        assert "node4: node4 while stopped" not in t.out
        tree.cont("node4")
        t.wait_out("node4: node4 while stopped", timeout=30)
    finally:
        if t is not None:
            t.stop()
        if "node3" not in tree.extra:
            tree.restart("node3")


def test_the_script(tree, logs):
    t = Tool(tree, None, argv=[os.path.join(ROOT, "cmd", "nine-ptail"), "-a", tree.addr,
                               "-n", "1", "-w", "node4", logs])
    assert t.finish() == 0, t.err
    assert t.out == ["node4: node4 old 20"], t.out


# --- files of any size: the tail aggregator reads each file from its end, at the leaf ---

def gnu_tail(path, *args):
    return subprocess.run(["tail"] + list(args) + [str(path)], check=True,
                          stdout=subprocess.PIPE).stdout


def ptail_bytes(tree, *args):
    """`nine ptail ARGS`: (status, stdout bytes, stderr text)."""
    r = subprocess.run([sys.executable, "-m", "nine", "ptail", "-a", tree.addr] +
                       list(args), env=ENV_ROOT, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=120)
    return r.returncode, r.stdout, r.stderr.decode()


def prefixed(host, text):
    """ptail's output of a host's lines (each printed with its newline)."""
    return b"".join(b"%s: %s\n" % (host.encode(), ln) for ln in text.splitlines())


@pytest.fixture(scope="module")
def biglog(tree):
    """A 20 MiB log (lines of varying length, no two alike), the same file on every
    host (hard links into each leaf's export)."""
    name = "big20.log"
    first = tree.file(tree.names[0], name)
    with open(first, "wb") as f:
        i = 0
        while f.tell() < 20 << 20:
            f.write(b"%08d %s\n" % (i, b"abcdefghij" * (i % 17)))
            i += 1
    for n in tree.names[1:]:
        os.link(first, tree.file(n, name))
    return name


def test_last_lines_of_a_20mib_log_as_gnu_tail(tree, biglog):
    for n in (5, 1000):
        want = gnu_tail(tree.file("node1", biglog), "-n", str(n))
        assert want.count(b"\n") == n
        t0 = time.time()
        rc, out, err = ptail_bytes(tree, "-n", str(n), biglog)
        print("ptail -n %d of 20 MiB on %d hosts: %.2f s" % (n, len(tree.names),
                                                            time.time() - t0))
        assert rc == 0 and err == "", err
        assert out == b"".join(prefixed(h, want) for h in tree.names)
        # the group read itself: each host's bytes exactly as GNU tail's
        c = Client(tree.addr)
        try:
            g = c.gopen(None, "r", members=[(h, "/nodes/%s/files/%s" % (h, biglog))
                                            for h in tree.names],
                        aggregator="tail", n=n)
            p = g.read_partial()
            g.close()
        finally:
            c.close()
        assert p.errors == {}
        assert p.value == {want: set(tree.names)}


def tail_read(tree, name, hosts=("node1", "node3"), **params):
    """The tail aggregator's group read of NAME on hosts (under both muxes)."""
    c = Client(tree.addr)
    try:
        g = c.gopen(None, "r", members=[(h, "/nodes/%s/files/%s" % (h, name))
                                        for h in hosts], aggregator="tail", **params)
        p = g.read_partial()
        g.close()
        return p
    finally:
        c.close()


def test_no_trailing_newline_long_lines_and_edges_as_gnu_tail(tree):
    from nine.group.textagg import TAIL_BLOCK, TAIL_CUT
    long1 = b"L" * (3 * TAIL_BLOCK + 123)          # lines longer than a read block
    files = {
        "nonl.log": b"".join(b"line %d\n" % i for i in range(50000)) + b"the last, no newline",
        "longline.log": b"first\n" + long1 + b"\nshort\n" + b"M" * (TAIL_BLOCK + 1) + b"\n",
        "longnonl.log": b"a\n" + b"N" * (2 * TAIL_BLOCK + 7),
        "empty.log": b"",
        "newlines.log": b"\n\n\n",
        "few.log": b"one\ntwo\nthree\n",
    }
    for name, data in files.items():
        for h in ("node1", "node3"):
            tree.file(h, name).write_bytes(data)
    for name in files:
        path = tree.file("node1", name)
        for n in (0, 1, 2, 3, 5, 100000):
            want = gnu_tail(path, "-n", str(n))
            p = tail_read(tree, name, n=n)
            assert p.errors == {} and p.value == {want: {"node1", "node3"}}, (name, n)
        for k in (1, 2, 50001):
            want = gnu_tail(path, "-n", "+%d" % k)
            p = tail_read(tree, name, start=k)
            assert p.errors == {} and p.value == {want: {"node1", "node3"}}, (name, k)
    # ptail shows the last line that has no newline (with one, as every line)
    rc, out, err = ptail_bytes(tree, "-n", "2", "-w", "node1,node3", "nonl.log")
    assert rc == 0 and err == "", err
    assert out == prefixed("node1", b"line 49999\nthe last, no newline") + \
        prefixed("node3", b"line 49999\nthe last, no newline")
    rc, out, err = ptail_bytes(tree, "-n", "2", "-w", "node3", "longline.log")
    assert rc == 0 and out == prefixed("node3", b"short\n" + b"M" * (TAIL_BLOCK + 1))
    # more than `limit` bytes of lines: the last whole lines that fit, and the host named
    p = tail_read(tree, "longline.log", n=3, limit=TAIL_BLOCK + 100)
    assert p.value == {b"short\n" + b"M" * (TAIL_BLOCK + 1) + b"\n": {"node1", "node3"}}
    assert list(p.errors) == ["%s %d bytes: only the last lines that fit were kept" %
                              (TAIL_CUT, TAIL_BLOCK + 100)]
    # a directory is not a file: named, and the others answer
    (tree.data / "node3" / "adir.log").mkdir(exist_ok=True)
    tree.file("node1", "adir.log").write_bytes(b"x\n")
    p = tail_read(tree, "adir.log", n=1)
    assert p.value == {b"x\n": {"node1"}}
    assert [ms for ms in p.errors.values()] == [{"node3"}], p.errors
    assert "directory" in list(p.errors)[0], p.errors


def test_follow_goes_on_where_the_last_lines_of_a_20mib_log_end(tree, biglog):
    for h in ("node2", "node4"):            # files of their own, to append to
        os.unlink(tree.file(h, biglog))
        with open(tree.file("node1", biglog), "rb") as src, \
                open(tree.file(h, biglog), "wb") as dst:
            while True:
                b = src.read(1 << 20)
                if not b:
                    break
                dst.write(b)
    last = gnu_tail(tree.file("node2", biglog), "-n", "5").decode().splitlines()
    t = Tool(tree, "ptail", "-f", "-n", "5", "-w", "node2,node4", biglog)
    try:
        for h in ("node2", "node4"):
            t.wait_out("%s: %s" % (h, last[-1]), timeout=60)
        for h in ("node2", "node4"):
            append(tree.file(h, biglog), "".join("appended %d on %s\n" % (i, h)
                                                 for i in range(3)))
        for h in ("node2", "node4"):
            t.wait_out("%s: appended 2 on %s" % (h, h), timeout=30)
        time.sleep(1.5)
        for h in ("node2", "node4"):
            mine = [ln for ln in t.out if ln.startswith(h + ":")]
            assert mine == ["%s: %s" % (h, ln) for ln in last] + \
                ["%s: appended %d on %s" % (h, i, h) for i in range(3)], t.out
    finally:
        t.stop()
    assert not t.err, t.err


class GrowingNode:
    """A Node (the calls the tail aggregator makes) whose file grows by a line on each
    of its first 40 reads, or is cut shorter at its second: a log being written."""

    def __init__(self, data, shrink=False):
        from nine.protocol.codec import Qid
        self.data = bytearray(data)
        self.iounit = 8192
        self.qid = Qid(0, 0, 1)
        self.shrink = shrink
        self.reads = 0

    def getattr(self, ctx):
        import types
        return types.SimpleNamespace(size=len(self.data))

    def read(self, ctx, offset, n):
        self.reads += 1
        out = bytes(self.data[offset:offset + n])
        if self.shrink and self.reads == 2:
            del self.data[len(self.data) // 3:]          # truncated under the reader
        elif self.reads <= 40:          # (a writer that stops: a forward read ends)
            self.data += b"grown %d\n" % self.reads
        return out


def test_a_file_that_grows_or_shrinks_while_read():
    from nine.group.member import MemberFile
    from nine.group.textagg import TAIL_BLOCK
    base = b"".join(b"entry %06d %s\n" % (i, b"y" * (i % 300)) for i in range(4000))
    for n in (1, 10, 2000):
        node = GrowingNode(base)
        p = A.get("tail", n=n).leaf_file("h", MemberFile(node, None, 0))
        (text, ms), = p.value.items()
        want = b"".join(base.splitlines(keepends=True)[-n:])
        assert text == want and not p.errors     # the file as it was at its size
        # read backwards: about the bytes of those lines, not the file (150 kB)
        assert node.reads * node.iounit <= len(want) + 2 * TAIL_BLOCK
    node = GrowingNode(base, shrink=True)
    p = A.get("tail", n=10).leaf_file("h", MemberFile(node, None, 0))
    (text, ms), = p.value.items()
    lines = text.splitlines(keepends=True)
    assert len(lines) == 10 and not p.errors
    assert all(re.fullmatch(rb"(entry \d{6} y*|grown \d+)\n", ln) for ln in lines), lines


def test_folder_never_reorders_a_hosts_lines():
    """The folding itself, without a tree: a host's line joins another host's pending
    entry only if that entry is newer than the host's own latest one."""
    from nine.tools.ptail import Folder
    out = []
    f = Folder(60, out.append, expected=lambda: {"a", "b"})
    f.add("b", b"x", 0.0)            # b's x arrives before a's "only"
    f.add("a", b"only", 0.0)
    f.add("a", b"x", 0.0)            # joining b's x would print it before a's "only"
    f.flush(1.0)
    assert out == []                 # nothing complete at the head, no window closed
    f.flush()
    assert out == [b"b: x\n", b"a: only\n", b"a: x\n"]
    out.clear()
    f.add("a", b"only", 0.0)
    f.add("a", b"y", 0.0)
    f.add("b", b"y", 0.0)            # complete, but held behind a's "only"
    f.flush(1.0)
    assert out == []
    f.flush(61.0)                    # "only"'s window closes: both go, in order
    assert out == [b"a: only\n", b"a,b (2): y\n"]
    out.clear()
    f.add("a", b"z", 2.0)
    f.add("b", b"z", 2.0)            # complete at the head: printed at once
    f.flush(2.0)
    assert len(out) == 1 and out[0].endswith(b": z\n")
