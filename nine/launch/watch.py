"""Keep a tree on hosts whole when one of its muxes is lost: the watch of a tree that
nine.launch.ssh started (MRNet's failure recovery, IPDPS 2010, is the model: the orphans
of a lost inner node re-attach to a new parent, and the tree goes on).

    w = Watcher(tree)           # an SshTree that runs (start(), or SshTree.from_state)
    w.start()                   # in a thread of its own (the foreground `nine tree`)
    w.stop()
    Watcher(tree).run(stopped)  # in this thread until stopped() (`nine tree watch`: a
                                # flag its signal handlers set) or stop()

Every `interval` seconds (1) the watch reads the status file of every mux of the tree,
the root included (aname "mux", `status`: one line per child, nine.mux.mux), top level
first, over one connection per mux that it keeps.  A child is lost when its parent has
tried it and has not had it up for `grace` seconds (2; a child the parent never tried
yet: when the watch itself cannot connect to it for as long).

A lost MUX is adopted: the watch starts a replacement of it (the same name, children,
level and so FiNAL rules, the same code path as the first start: SshTree._start_batch)
on another host, then tells the parent to reach that child at the replacement's address
(`retarget NAME ADDR NOTE` in the parent's mux/ctl).  Its mux children that take no
connections either (a host that ran several levels of muxes) are replaced first, bottom
up, so that no replacement starts over a child that is not there (a FiNAL union settles
its layers when it is attached).  The parent's reconnect loop dials the new address at
once; the subtree's name space is whole again, and open groups over it heal by
themselves (nine.group: members whose child connection failed are resolved again).  The
host: that of a live sibling mux (the one that runs the fewest muxes first), else the
parent's, else a host of the tree, never one found lost (a lost mux's, a down leaf's),
never one a replacement of this mux failed to start on (until every host has).  The
state file records it (Member.adopted: where it ran, when it was found lost, where it
runs now) before the replacement starts, so that `nine tree down` stops the replacement
too; the old one is stopped on its host (a mux cut off from its parent but alive), in
the background, where ssh still reaches it.  The parent's status then says, on that
child's line, `retargeted at T: was OLD (adopted on HOST: OLDHOST lost at T0)`.

A lost LEAF is not adopted (its files are on its host): it stays named under its
parent, down in its status, until it returns.  The watch says so once, tries to start
it again on its host every LEAF_RETRY seconds (a host that was rebooted: the leaf comes
back; a leaf that still runs there refuses to start twice), and tells the parent to
dial it at once (`retry NAME`; `retarget` when it listens on another port).  A parent
whose child address is not the one the state records (a retarget that did not reach
it) is told again.

Each event is a line to `log` (stderr by default).  ssh (ClusterShell) blocks: the watch
runs outside the gevent hub of a root served in the same process, and speaks 9P over
blocking connections.
"""

import ast
import re
import socket
import sys
import threading
import time

from .ssh import _STOP, LaunchError, Member, _where

DEFAULT_GRACE = 2.0
POLL_EVERY = 1.0
#: seconds between two attempts to start a lost leaf again on its host
LEAF_RETRY = 10.0
#: seconds a status read or a ctl write may take (a silent mux is passed over)
IO_TIMEOUT = 3.0

_LINE = re.compile(r"(?P<name>\S+) (?P<addr>\S+)(?: aname=\S*)? "
                   r"(?P<state>up|down|connecting|hung) since=\S+ \((?P<for>[\d.]+)s\)")
_COUNTS = re.compile(r" connects=(\d+) failures=(\d+)")
_ERROR = re.compile(r" error=('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")")


class ChildView:
    """One child as its parent's status line shows it."""
    __slots__ = ("name", "addr", "state", "down_for", "tried", "error")

    def __init__(self, name, addr, state, down_for, tried, error):
        self.name = name
        self.addr = addr
        self.state = state
        self.down_for = down_for    # seconds since it was last up (or since the mux began)
        self.tried = tried          # whether the parent has tried to connect to it
        self.error = error


def parse_status(text):
    """{child name: ChildView} of a mux's status file (nine.mux: Child.status_line)."""
    out = {}
    for line in text.splitlines():
        m = _LINE.match(line)
        if not m:
            continue                # (a FiNAL failure line)
        counts = _COUNTS.findall(line.split(" retargeted at ", 1)[0])
        e = _ERROR.search(line)
        try:
            error = ast.literal_eval(e.group(1)) if e else None
        except (ValueError, SyntaxError):
            error = e.group(1)
        tried = bool(counts) and (int(counts[-1][0]) + int(counts[-1][1])) > 0
        out[m["name"]] = ChildView(m["name"], m["addr"], m["state"], float(m["for"]),
                                   tried, error)
    return out


def reaches(addr, timeout=1.0):
    """Whether a connection to addr (HOST:PORT, tcp!HOST!PORT, unix!PATH) is taken."""
    from ..addr import parse_addr
    try:
        kind, where = parse_addr(addr)
        family = socket.AF_UNIX if kind == "unix" else \
            socket.AF_INET6 if ":" in where[0] else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(where)
        return True
    except (OSError, ValueError):
        return False


def _clock(t):
    return time.strftime("%H:%M:%S", time.localtime(t))


class Watcher:
    """The watch of `tree` (a running nine.launch.ssh.SshTree; see the module's text).
    restart_leaves: start a lost leaf again on its host when it can be.  log(text): one
    line per event."""

    def __init__(self, tree, grace=DEFAULT_GRACE, interval=POLL_EVERY, restart_leaves=True,
                 log=None):
        self.tree = tree
        self.grace = grace
        self.interval = interval
        self.restart_leaves = restart_leaves
        self.log = log or (lambda text: (sys.stderr.write("nine: %s\n" % text),
                                         sys.stderr.flush()))
        self.clients = {}           # mux address -> Client on its aname "mux"
        self.unreached = {}         # child never tried by its parent -> when the watch
                                    # first failed to connect to it (monotonic)
        self.lost_hosts = set()     # hosts of the muxes found lost
        self.down_leaves = set()    # leaves reported lost (and not back yet)
        self.leaf_tries = {}        # leaf -> when to try starting it again (monotonic)
        self.failed_on = {}         # mux -> hosts its replacement did not start on
        self._stop = threading.Event()
        self._stopped = self._stop.is_set
        self._thread = None

    # -- running -------------------------------------------------------------------

    def start(self):
        """Watch in a thread of its own (a daemon thread) until stop()."""
        self._thread = threading.Thread(target=self.run, name="nine-watch", daemon=True)
        self._thread.start()

    def stop(self, wait=None, sleep=time.sleep):
        """Stop watching; wait (at most `wait` seconds) for an adoption in progress to
        end and be recorded.  sleep: how to wait (gevent.sleep where this process
        serves the root: the watch may be reading its status)."""
        self._stop.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            deadline = None if wait is None else time.monotonic() + wait
            while t.is_alive() and (deadline is None or time.monotonic() < deadline):
                sleep(0.02)

    def run(self, stopped=None):
        """Poll until stop(), or until stopped() says so (checked often: a signal
        handler may set what it reads, never a lock: an Event.set() in a handler can
        deadlock the thread it interrupts)."""
        if stopped is not None:
            self._stopped = lambda: stopped() or self._stop.is_set()
        try:
            while not self._stopped():
                t0 = time.monotonic()
                try:
                    self.poll()
                except (OSError, ValueError) as ex:     # (a state file not written)
                    self.log("watch: %s" % ex)
                while not self._stopped() and time.monotonic() - t0 < self.interval:
                    time.sleep(0.05)
        finally:
            self._close()

    def _close(self):
        for c in list(self.clients.values()):
            try:
                c.close()
            except OSError:
                pass
        self.clients.clear()

    # -- one round -------------------------------------------------------------------

    def members(self):
        """{name: Member} of the tree as it is now."""
        return {m.name: m for m in self.tree.members}

    def poll(self):
        """One round: read every mux's status, top level first, and act on it."""
        parents = [m.name for m in sorted(self.tree.members, key=lambda m: -m.level)
                   if m.kind != "leaf"]
        due = []
        ms = self.members()
        for name in parents:
            if self._stopped():
                return
            p = ms.get(name)
            if p is None or not p.address:
                continue
            status = self._status(p)
            if status is None:
                continue
            for c in p.children:
                m = ms.get(c)
                view = status.get(c)
                if m is None or view is None or not m.address:
                    continue
                if view.addr != m.address:      # a retarget that did not reach it
                    self._tell(p, "retarget %s %s %s" % (c, m.address, self._note(m)))
                    continue
                lost = self._lost(m, view)
                if m.kind == "leaf":
                    self._leaf(m, p, view, lost, due)
                elif lost:
                    self._adopt(m, p, status, self._down_for(m, view), self._why(m, view))
                    ms = self.members()
        if due:
            self._restart_leaves(due)

    def _lost(self, m, view):
        """Whether child m, as its parent sees it, is lost."""
        if view.state == "up":
            self.unreached.pop(m.name, None)
            return False
        if view.tried:
            return view.down_for >= self.grace
        if reaches(m.address):
            self.unreached.pop(m.name, None)
            return False
        first = self.unreached.setdefault(m.name, time.monotonic())
        return time.monotonic() - first >= self.grace

    def _down_for(self, m, view):
        """Seconds since child m was last up (or the watch first failed to reach it)."""
        if view.tried:
            return view.down_for
        return time.monotonic() - self.unreached.get(m.name, time.monotonic())

    @staticmethod
    def _why(m, view):
        """What the parent says of lost child m (or that it does not take connections)."""
        if view.error:
            return view.error
        return view.state if view.tried else "no connection taken at %s" % m.address

    # -- talking to the muxes -----------------------------------------------------------

    def _client(self, p):
        c = self.clients.get(p.address)
        if c is None:
            from ..client import Client
            c = Client(p.address, aname="mux", blocking=True, timeout=IO_TIMEOUT,
                       connect_timeout=IO_TIMEOUT)
            self.clients[p.address] = c
        return c

    def _drop(self, p):
        c = self.clients.pop(p.address, None)
        if c is not None:
            try:
                c.close()
            except OSError:
                pass

    def _status(self, p):
        """{child: ChildView} of mux p, or None when it does not answer (its own parent
        sees to it)."""
        try:
            return parse_status(self._client(p).read_file("status").decode(
                "utf-8", "replace"))
        except (OSError, ValueError):
            self._drop(p)
            return None

    def _tell(self, p, command):
        """Write a command to mux p's ctl file; whether it took it."""
        try:
            self._client(p).write_file("ctl", command.encode() + b"\n")
            return True
        except (OSError, ValueError) as ex:
            self._drop(p)
            self.log("watch: %s: ctl %r: %s" % (_where(p), command.split()[0], ex))
            return False

    # -- adopting a lost mux ---------------------------------------------------------------

    @staticmethod
    def _note(m):
        """The note a parent shows beside a retargeted child."""
        if not m.adopted:
            return "restarted"
        rec = m.adopted[-1]
        return "adopted on %s: %s lost at %s" % (rec["on"], rec["host"] or "this machine",
                                                 _clock(rec["lost"]))

    def _hosts_for(self, d, p, status):
        """Where a replacement of lost mux d (a child of p, if known; status: p's) may
        run, best first."""
        ms = self.members()
        load = {}
        for m in ms.values():
            if m.kind != "leaf":
                load[m.host] = load.get(m.host, 0) + 1
        order = []
        if p is not None:
            sibs = [ms[c] for c in p.children if c != d.name and c in ms and ms[c].kind !=
                    "leaf" and getattr(status.get(c), "state", None) == "up"]
            order += [m.host for m in sorted(sibs, key=lambda m: load.get(m.host, 0))]
            order.append(p.host)
        order += [c for c in d.children if c in ms and ms[c].kind == "leaf"]
        order += self.tree.hosts + [m.host for m in ms.values()]
        bad = self.lost_hosts | self.down_leaves | {d.host}
        tried = self.failed_on.setdefault(d.name, set())
        ok = [h for h in order if h is not None and h not in bad]
        if ok and not [h for h in ok if h not in tried]:
            tried.clear()           # every host failed once: from the top again
        out = []
        for h in ok:
            if h not in tried and h not in out:
                out.append(h)
        return out

    def _adopt(self, d, p, status, down_for, why):
        """Start a replacement of lost mux d on another host and point its parent p at
        it (p None: d's parent is being replaced too, with d's new address).  d's mux
        children that are lost with it (muxes of the same host) are replaced first, so
        that d's replacement never composes a child that is not there."""
        self.log("watch: %s lost (%s, down %.1f s)" % (_where(d), why, down_for))
        self.lost_hosts.add(d.host)
        for c in d.children:
            m = self.members().get(c)
            if m is not None and m.kind != "leaf" and not reaches(m.address):
                self._adopt(m, None, {}, 0.0, "lost with its parent %s" % d.name)
        hosts = self._hosts_for(d, p, status)
        if not hosts:
            self.log("watch: %s lost: no host left to adopt it on" % _where(d))
            return
        host = hosts[0]
        now = time.time()
        t_lost = time.monotonic() - down_for
        new = Member(d.name, d.kind, host, d.level, list(d.children),
                     adopted=d.adopted + [{"host": d.host, "address": d.address,
                                           "pid": d.pid, "lost": now - down_for, "on": host,
                                           "at": now, "now": None}])
        tree = self.tree
        ms = self.members()
        addrs = {c: ms[c].address for c in d.children if c in ms}
        i = next(k for k, m in enumerate(tree.members) if m is d)
        tree.members[i] = new
        try:
            tree._save()            # first: `nine tree down` stops it while it starts
            tree._start_batch([new], addrs)
        except LaunchError as ex:
            self.failed_on.setdefault(d.name, set()).add(host)
            k = next((k for k, m in enumerate(tree.members) if m is new), None)
            if k is not None:
                self._fence(new)    # it may run (no answer in time): stop it
                tree.members[k] = d
            else:                   # refused: _start_batch dropped it
                tree.members.insert(i, d)
            tree._save()
            self.log("watch: %s: adoption on %s failed: %s" % (d.name, host, ex))
            return
        new.adopted[-1]["now"] = new.address
        tree._save()
        self.unreached.pop(d.name, None)
        self.failed_on.pop(d.name, None)
        told = p is None or self._tell(p, "retarget %s %s %s" % (d.name, new.address,
                                                                 self._note(new)))
        self.log("watch: %s adopted: was %s on %s, now %s on %s (%.1f s after it was lost%s)"
                 % (d.name, d.address, d.host or "this machine", new.address, host,
                    time.monotonic() - t_lost,
                    "" if told else "; its parent is told at the next round"))
        self._fence(d)

    def _fence(self, m):
        """Stop m on its host, in the background, where ssh reaches it (a mux cut off
        from its parent, or a replacement that did not answer in time)."""
        if m.host is None:
            return
        tree = self.tree
        script = "d=%s\n%sstop %s\n" % (tree._dir(m.host), _STOP % 50, m.stem)

        def run():
            try:
                tree._run({m.host: script}, 30)
            except Exception as ex:          # (nothing waits for this thread)
                self.log("watch: stopping %s: %s" % (_where(m), ex))
        threading.Thread(target=run, name="nine-fence", daemon=True).start()

    # -- lost leaves -------------------------------------------------------------------------

    def _leaf(self, m, p, view, lost, due):
        if view.state == "up":
            if m.name in self.down_leaves:
                self.down_leaves.discard(m.name)
                self.leaf_tries.pop(m.name, None)
                self.log("watch: leaf %s is back" % m.name)
            return
        if not lost:
            return
        if m.name not in self.down_leaves:
            self.down_leaves.add(m.name)
            self.log("watch: leaf %s lost (%s, down %.1f s): named under %s, down, until it "
                     "returns" % (m.name, self._why(m, view), self._down_for(m, view),
                                  p.name))
        if self.restart_leaves and time.monotonic() >= self.leaf_tries.get(m.name, 0):
            self.leaf_tries[m.name] = time.monotonic() + LEAF_RETRY
            due.append((m, p))

    def _restart_leaves(self, due):
        """Start lost leaves again on their hosts (those that are back)."""
        tree = self.tree
        before = list(tree.members)
        old = {m.name: (m.pid, m.address) for m, _ in due}
        try:
            tree._start_batch([m for m, _ in due], {})
        except LaunchError:
            pass                    # hosts still down (or leaves that still run there)
        tree.members = before       # (what did not start is not dropped from the tree)
        tree._save()
        for m, p in due:
            pid, addr = old[m.name]
            if (m.pid, m.address) == (pid, addr):
                continue            # not started
            self.log("watch: leaf %s started again on its host (%s)" % (m.name, m.address))
            self._tell(p, "retry %s" % m.name if m.address == addr else
                       "retarget %s %s %s" % (m.name, m.address, self._note(m)))
