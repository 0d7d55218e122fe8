"""Start a tree of leaves and muxes on real hosts over ssh, through ClusterShell, and
stop exactly that tree again, from the shell that started it or from another one.

    tree = SshTree(["node1", ..., "node8"], fanout=4, ssh_options="-F cluster/ssh_config")
    addr = tree.start()     # leaves and muxes in one ssh round, the root; its address
    tree.down()             # stops what start() started (also after a failed start)

Placement: one leaf server per host, named after it (/nodes/HOST at the root), with
the topology's leaf arguments, exporting the host's own topo.leaf_export directory
(the same path on every host; /nodes/HOST/files at the root).  Muxes
go automatically over groups of `fanout` children (the local tree's grouping,
nine.launch.local), each on the first host under it that runs no other mux, or where a topology file's [muxes] section puts
them (NAME = HOST: CHILDREN, nine.launch.topology).  The root runs in the calling
process (start() builds it and listens on topo.listen), or as a daemon on this machine
(root_daemon: `nine mux --daemon`, listening on topo.listen), or on root_host.

Every server on a host is a daemon (`nine serve|mux --daemon`, nine.launch.daemon):
the ssh command that starts it returns once it listens and prints its pid and address,
so no ssh session stays open.  Every server of the tree starts in ONE ClusterShell task
(task_self().shell per host, `ssh_fanout` sessions at a time, ssh_options such as
"-F FILE"), a host's leaf before its muxes: one ssh round, whatever the depth.  A leaf
listens on the host's address, the one its sshd was reached at ($SSH_CONNECTION), at
`port` (5640 by default; 0: one the kernel picks, read back from the address file);
muxes on a picked port; a root on root_host on topo.listen's port (0 when it names
none).  A mux starts without its children's addresses (`--child NAME`); once the round
is over, the launcher writes them to every mux's ctl (`retarget NAME ADDR`, over 9P,
all muxes at once): a second ssh round per level would cost more than the servers'
start (on 64 namespace hosts, 1.4 s for the muxes' round).

On each host: `cd` to the home directory, then `PYTHONPATH=REMOTE_PATH REMOTE_PYTHON -m
nine ...`.  REMOTE_PATH defaults to this checkout (the directory that holds the nine
package here), so hosts that share the file system (NFS homes, the namespace hosts of
interop/hosts.py) run this very code; "" leaves PYTHONPATH alone, for hosts with nine
installed.  REMOTE_PYTHON defaults to "python3" (its PATH is the ssh session's).
$NINE_KEY and $NINE_AUTH, when set here, are set there too: the key must be at that
path on the hosts (a shared file system, or copy_key()).  The pid, log and address
files of a server go to REMOTE_WORKDIR/HOST/NAME.{pid,log,addr} (relative to the home
directory; default .cache/nine/tree-TREE); the logs stay after down().

The state file (default ~/.cache/nine/tree-TREE.json) records the hosts, the ssh
settings, the settings servers are started with (the topology's, the remote Python),
each server's host, role, pid and address (and where a mux was before it was adopted:
nine.launch.watch), the pid of a foreground launcher (the process whose root runs in
itself) and that of the process that watches the tree; it is written before the round
starts (so an interrupted start can be taken down too) and removed once the tree is
down.  down() stops the watching process first (SIGTERM; it may have moved a mux since
the state was read, so the state is read again), and asks a live foreground launcher
to stop its tree (SIGTERM); then, on each host at once, it sends SIGTERM to every
process whose command line names the pid file of one of the tree's servers there (so
never to a process that reused a pid, and also to a server still starting, before its
pid file exists), waits up to 10 s for them to go, SIGKILLs what is left then, and
reports what still runs.
"""

import json
import logging
import os
import shlex
import signal
import time
from dataclasses import asdict, dataclass, field

from .topology import FINAL_LEAF_MUX, FINAL_UP, Topology

DEFAULT_PORT = 5640
log = logging.getLogger("nine.launch")
#: the key of this machine in a ClusterShell task (never a host name)
LOCAL = "(local)"
#: what of a Topology the state file keeps (what starting a server again needs)
_TOPOLOGY = ("listen", "fanout", "leaf_args", "leaf_export", "final_root", "final_mid",
             "final_leaf_mux", "aggregators", "auth")
#: nine's checkout here: the directory that holds the nine package
CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class LaunchError(RuntimeError):
    """The tree could not be started or stopped; the message says where and why."""


def child_args(children, addrs):
    """`nine mux` arguments naming children: --child NAME=ADDR, or --child NAME for one
    whose address is not known yet (tell_children gives it once the mux runs)."""
    args = []
    for c in children:
        args += ["--child", "%s=%s" % (c, addrs[c]) if c in addrs else c]
    return args


def tell_children(muxes, addrs, timeout):
    """Write `retarget CHILD ADDR` for every child of each of muxes (Members started
    with `--child NAME` alone) to its ctl (aname mux), all at once; LaunchError naming
    the muxes that did not take it."""
    import gevent
    from ..client import Client

    def tell(m):
        text = "".join("retarget %s %s\n" % (c, addrs[c]) for c in m.children if c in addrs)
        try:
            with Client(m.address, aname="mux", connect_timeout=timeout,
                        timeout=timeout) as c:
                c.write_file("ctl", text.encode())
            return None
        except (OSError, ValueError) as ex:
            return "%s (%s on %s): %s" % (m.name, m.address, m.host or "this machine",
                                          getattr(ex, "strerror", None) or ex)
    jobs = [gevent.spawn(tell, m) for m in muxes]
    gevent.joinall(jobs)
    failed = [j.value for j in jobs if j.value]
    if failed:
        raise LaunchError("could not tell muxes their children's addresses:\n" +
                          "\n".join(failed))


def state_path(name):
    """The default state file of tree `name`."""
    return os.path.join(os.path.expanduser("~"), ".cache", "nine", "tree-%s.json" % name)


@dataclass
class Member:
    """One server of the tree: a leaf, a mux or the root, on `host` (None: this
    machine), with the names of its children; pid and address once it runs."""
    name: str
    kind: str                   # "leaf", "mux" or "root"
    host: str = None
    level: int = 0              # 0: leaves; a mux is one above its highest child
    children: list = field(default_factory=list)
    pid: int = None
    address: str = None
    #: where it ran before, one record per adoption (nine.launch.watch): host, address,
    #: pid, lost (when it was found gone), on (the host it runs on since), at, now
    adopted: list = field(default_factory=list)

    @property
    def stem(self):
        """Its files' name on its host: leaf.pid, NAME.pid."""
        return "leaf" if self.kind == "leaf" else self.name


def node_list(text):
    """The names of a node set ("node[1-4] edge1"), in order."""
    from ClusterShell.NodeSet import NodeSet, NodeSetParseError
    try:
        return list(NodeSet(",".join(text.replace(",", " ").split())))
    except NodeSetParseError as ex:
        raise ValueError("bad node set %r: %s" % (text, ex)) from None


def place(hosts, fanout, muxes=(), root_host=None):
    """Members from the leaves up: one leaf per host, then the muxes (automatic
    grouping, or muxes [(name, host, children text)] from a topology file), the root
    last.  Raises ValueError for a placement that is not a tree."""
    if len(set(hosts)) != len(hosts):
        raise ValueError("a host is named twice")
    leaves = [Member(h, "leaf", h) for h in hosts]
    if not muxes:
        # a mux runs on the first host under it that runs no mux yet: a host's link
        # then carries one mux's copies (a pcp block goes out once per child), not those
        # of a mux at every level, as when each mux took its first child's host
        out = list(leaves)
        level = [(m, [m.host]) for m in leaves]     # (member, the hosts under it)
        busy = set()
        while len(level) > fanout:
            nxt = []
            for i in range(0, len(level), fanout):
                group = level[i:i + fanout]
                under = [h for _, hs in group for h in hs]
                host = next((h for h in under if h not in busy), under[0])
                busy.add(host)
                nxt.append((Member("mux%d-%d" % (group[0][0].level + 1, i // fanout), "mux",
                                   host, group[0][0].level + 1,
                                   [c.name for c, _ in group]), under))
            out += [m for m, _ in nxt]
            level = nxt
        level = [m for m, _ in level]
        out.append(Member("root", "root", root_host, level[0].level + 1,
                          [c.name for c in level]))
        return out
    by_name = {m.name: m for m in leaves}
    placed = []
    for name, host, children in muxes:
        if name in by_name or name in ("leaf",):
            raise ValueError("[muxes] %s: the name of a host or of another mux" % name)
        if name == "root" and root_host is not None:
            raise ValueError("[muxes] root: the root's host is given twice (--root-host)")
        m = Member(name, "root" if name == "root" else "mux",
                   None if host == "local" and name == "root" else host,
                   children=node_list(children))
        by_name[name] = m
        placed.append(m)
    parent = {}
    for m in placed:
        for c in m.children:
            if c not in by_name or c == "root":
                raise ValueError("[muxes] %s: no host or mux %s" % (m.name, c))
            if c in parent:
                raise ValueError("[muxes] %s is a child of %s and of %s" % (c, parent[c], m.name))
            parent[c] = m.name
    if "root" not in by_name:
        top = [n for n in by_name if n not in parent]
        parent.update((n, "root") for n in top)
        root = Member("root", "root", root_host, children=top)
        by_name["root"] = root
        placed.append(root)

    def level(m, seen=()):
        if m.kind == "leaf":
            return 0
        if m.name in seen:
            raise ValueError("[muxes] %s is its own descendant" % m.name)
        kids = [level(by_name[c], seen + (m.name,)) for c in m.children]
        if (0 in kids) != (min(kids) == max(kids) == 0):
            raise ValueError("[muxes] %s: its children are all hosts or all muxes" % m.name)
        return 1 + max(kids)
    for m in placed:
        m.level = level(m)
    orphans = [n for n in by_name if n != "root" and n not in parent]
    if orphans:
        raise ValueError("[muxes]: not under the root: %s" % ",".join(orphans))
    placed.sort(key=lambda m: (m.kind == "root", m.level))
    return leaves + placed


class SshTree:
    """A tree on hosts (see the module's text).  topology: a Topology for the leaves'
    arguments and export, the FiNAL rules, the authentication, the root's address and
    [muxes] placement (its leaves are ignored: the hosts are the leaves); without one,
    the defaults with `fanout`."""

    #: interrupt()s while starting (a class default: from_state() makes trees too)
    interrupted = 0

    def __init__(self, hosts, fanout=4, topology=None, *, ssh_options=None, ssh_fanout=None,
                 connect_timeout=None, remote_python="python3", remote_path=CHECKOUT,
                 remote_workdir=None, state_file=None, name="default", port=DEFAULT_PORT,
                 root_host=None, root_port=0, root_daemon=False, start_timeout=60.0):
        if isinstance(hosts, str):
            hosts = node_list(hosts)
        self.hosts = list(hosts)
        if not self.hosts:
            raise ValueError("a tree needs at least one host")
        self.topo = topology or Topology([(h, "ssh") for h in self.hosts], fanout=fanout)
        if self.topo.tls:
            raise ValueError("TLS links are not launched over ssh yet (certificates per host)")
        self.name = name
        self.ssh_options = ssh_options
        self.ssh_fanout = ssh_fanout
        self.connect_timeout = connect_timeout
        self.remote_python = remote_python
        self.remote_path = remote_path
        self.remote_workdir = remote_workdir or ".cache/nine/tree-%s" % name
        self.state_file = os.path.abspath(state_file or state_path(name))
        self.port = port
        self.root_port = root_port
        self.start_timeout = start_timeout
        self.members = place(self.hosts, self.topo.fanout, self.topo.muxes, root_host)
        self.root_daemon = root_daemon or self.members[-1].host is not None
        self.root = None            # the root's Mux, when it runs in this process
        self.address = None
        self.launcher = None        # this process's pid while it holds the root
        self.watcher = None         # the pid of the process that watches the tree
        self.recorded = False       # whether the state file is this tree's

    # -- the state file ------------------------------------------------------------

    def _save(self):
        d = os.path.dirname(self.state_file)
        os.makedirs(d, mode=0o700, exist_ok=True)
        state = {"name": self.name, "hosts": self.hosts, "ssh_options": self.ssh_options,
                 "ssh_fanout": self.ssh_fanout, "connect_timeout": self.connect_timeout,
                 "remote_workdir": self.remote_workdir, "launcher": self.launcher,
                 "watcher": self.watcher, "address": self.address,
                 "settings": {"topology": {k: getattr(self.topo, k) for k in _TOPOLOGY},
                              "remote_python": self.remote_python,
                              "remote_path": self.remote_path, "port": self.port,
                              "root_port": self.root_port,
                              "start_timeout": self.start_timeout},
                 "members": [asdict(m) for m in self.members]}
        tmp = self.state_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump(state, f, indent=1)
            f.write("\n")
        os.rename(tmp, self.state_file)

    @classmethod
    def from_state(cls, path):
        """The tree a state file records (for down(), and the watch that restarts
        its servers elsewhere)."""
        with open(path) as f:
            st = json.load(f)
        self = cls.__new__(cls)
        self.state_file = os.path.abspath(path)
        self.name = st["name"]
        self.hosts = st["hosts"]
        self.ssh_options = st["ssh_options"]
        self.ssh_fanout = st["ssh_fanout"]
        self.connect_timeout = st["connect_timeout"]
        self.remote_workdir = st["remote_workdir"]
        self.launcher = st["launcher"]
        self.watcher = st["watcher"]
        self.address = st["address"]
        settings = st["settings"]
        self.topo = Topology([(h, "ssh") for h in self.hosts], **settings["topology"])
        for k in ("remote_python", "remote_path", "port", "root_port", "start_timeout"):
            setattr(self, k, settings[k])
        self.members = [Member(**m) for m in st["members"]]
        self.root = None
        self.recorded = True
        return self

    # -- running commands on hosts -------------------------------------------------

    def _run(self, scripts, timeout, interruptible=False):
        """Run sh scripts {host or None (this machine): text} at once (ClusterShell);
        returns {host: (status or None after the timeout, stdout, stderr)}.
        The scripts run in a session of their own (setsid), so that a Ctrl-C at the
        terminal reaches this process only: a start script that ssh's death cut halfway
        would leave a server that no state records.  interruptible (starting): after
        interrupt() the scripts still end (what they start is then recorded, to be
        stopped); after a second one they are killed.  Nothing is raised from inside
        ClusterShell's loop (an exception there can leave its task unusable): the
        caller checks `interrupted` once this returns."""
        from ClusterShell.Event import EventHandler
        from ClusterShell.Task import task_self
        tree = self

        class Interrupt(EventHandler):
            def ev_timer(self, timer):
                if tree.interrupted > 1:
                    timer.task.abort(kill=True)
        task = task_self()
        try:
            if self.ssh_options:
                task.set_info("ssh_options", self.ssh_options)
            if self.ssh_fanout:
                task.set_info("fanout", self.ssh_fanout)
            if self.connect_timeout:
                task.set_info("connect_timeout", self.connect_timeout)
            ssh = task.info("ssh_path") or "ssh"
            if not ssh.startswith("setsid "):
                task.set_info("ssh_path", "setsid " + ssh)
            for host, script in scripts.items():
                if host is None:
                    task.shell("exec setsid sh -c %s" % shlex.quote(script), key=LOCAL,
                               stderr=True, timeout=timeout, stdin=False)
                else:           # the login shell may be any: sh runs the script
                    task.shell("cd && exec sh -c %s" % shlex.quote(script), nodes=host,
                               stderr=True, timeout=timeout, stdin=False, tree=False)
            if interruptible:
                task.timer(0.1, Interrupt(), interval=0.1, autoclose=True)
            task.resume()
        except BaseException:
            task.abort(kill=True)
            raise
        out = {}
        for host in scripts:
            key = LOCAL if host is None else host
            try:
                rc = task.key_retcode(key)
            except KeyError:
                rc = None
            out[host] = (rc, task.key_buffer(key).decode(errors="replace"),
                         task.key_error(key).decode(errors="replace"))
        return out

    def interrupt(self):
        """Ask start() or copy_key() to stop (from a signal handler: it only counts):
        they raise KeyboardInterrupt at their next safe point, with every server that
        started recorded, for down().  See _run."""
        self.interrupted += 1

    def _check(self):
        if self.interrupted:
            raise KeyboardInterrupt

    def _dir(self, host):
        """The shell word of host's directory of pid, log and address files."""
        d = os.path.join(self.remote_workdir, host or "_local")      # (no host's name)
        return d if os.path.isabs(d) else '"$HOME"/' + shlex.quote(d)

    def _start_script(self, m, addrs):
        """sh text that starts member m as a daemon and prints "nine-started NAME PID
        ADDR" once it listens, or "nine-failed NAME" when it did not start."""
        topo = self.topo
        if m.kind == "leaf":
            args = ["serve"] + topo.leaf_args.split()
            if topo.leaf_export:
                args += ["--export", topo.leaf_export]
            port = self.port
        else:
            first = m.level == 1
            if m.kind == "root":
                final = topo.final_root or (FINAL_LEAF_MUX if first else FINAL_UP)
            else:
                final = (topo.final_leaf_mux or FINAL_LEAF_MUX) if first else \
                    (topo.final_mid or FINAL_UP)
            args = ["mux", "--final-text", final, "--child-aname", "nine" if first else ""]
            args += child_args(m.children, addrs)
            port = self.root_port if m.kind == "root" else 0
        args += ["--auth", topo.auth]
        if topo.aggregators:
            args += ["--aggregators", topo.aggregators]
        f = '"$d"/' + shlex.quote(m.stem)
        if m.host is None:
            listen = shlex.quote(topo.listen)
        else:
            listen = '"$a":%d' % port
        env = ["PYTHONPATH=%s${PYTHONPATH:+:$PYTHONPATH}" % shlex.quote(self.remote_path)
               ] if self.remote_path else []
        env += ["%s=%s" % (k, shlex.quote(os.environ[k])) for k in ("NINE_KEY", "NINE_AUTH")
                if os.environ.get(k)]
        cmd = " ".join(env + [shlex.quote(self.remote_python), "-m", "nine"]
                       + [shlex.quote(a) for a in args]
                       + ["--daemon", "--pid-file", f + ".pid", "--log-file", f + ".log",
                          "--address-file", f + ".addr", "--listen", listen])
        # (read, a shell builtin: no process per file read on a host of the round)
        return ('rm -f %(f)s.addr\n'
                'if %(cmd)s; then read -r _p _ < %(f)s.pid; read -r _a < %(f)s.addr; '
                'echo "nine-started %(name)s $_p $_a"'
                '; else echo "nine-failed %(name)s"; fi\n' % {"f": f, "cmd": cmd, "name": m.name})

    def _header(self, host):
        """The start of every start script on host: $d, its directory; $a, its address."""
        text = "d=%s\nmkdir -p \"$d\" || exit 1\n" % self._dir(host)
        if host is not None:
            text += ('set -- $SSH_CONNECTION; a=$3\n'
                     '[ -n "$a" ] || { echo "nine: no \\$SSH_CONNECTION: cannot tell this '
                     'host\'s address" >&2; exit 1; }\n')
        return text

    # -- start ---------------------------------------------------------------------

    def start(self):
        """Start the tree; returns the root's address once it answers an attach.
        Raises LaunchError (what started is still running: call down())."""
        from ..final import FinalError, parse
        for prog in (self.topo.final_leaf_mux, self.topo.final_mid, self.topo.final_root):
            if prog is not None:
                try:
                    parse(prog)
                except FinalError as ex:
                    raise LaunchError("FiNAL rules: %s" % ex) from None
        if os.path.exists(self.state_file):
            raise LaunchError("%s records a tree already: `nine tree down --state %s` first "
                              "(or another --name)" % (self.state_file, self.state_file))
        self.recorded = True
        in_process = not self.root_daemon
        if in_process:
            self.launcher = os.getpid()
        addrs = {}
        # every server in one ssh round (a host's leaf first): a mux starts before its
        # children's addresses are known, and is told them over 9P right after
        batch = [m for m in self.members if not (m.kind == "root" and in_process)]
        self._save()                # before: an interrupted start can be taken down
        self._check()
        t0 = time.monotonic()
        self._start_batch(batch, addrs)
        muxes = [m for m in batch if m.kind != "leaf"]
        log.info("launch: %d leaves and %d muxes on %d hosts%s in %.3f s (one ssh round)",
                 len(batch) - len(muxes), len(muxes),
                 len({m.host for m in batch if m.host is not None}),
                 " and this machine" if any(m.host is None for m in batch) else "",
                 time.monotonic() - t0)
        t0 = time.monotonic()
        self._tell_children(muxes, addrs)
        log.info("launch: %d muxes told their children's addresses in %.3f s",
                 len(muxes), time.monotonic() - t0)
        t0 = time.monotonic()
        root = self.members[-1]
        if in_process:
            self._build_root(root, addrs)
        else:
            self.address = root.address
        self._save()
        self._check()
        self._wait_root()
        log.info("launch: the root answers after %.3f s more", time.monotonic() - t0)
        return self.address

    def _start_batch(self, batch, addrs):
        scripts = {}
        for m in batch:
            scripts.setdefault(m.host, self._header(m.host))
            scripts[m.host] += self._start_script(m, addrs)
        results = self._run(scripts, self.start_timeout, interruptible=True)
        started, refused = {}, set()
        for host, (rc, out, err) in results.items():
            if rc == 255 and not out:       # ssh reached no host: nothing ran there
                refused.update(m.name for m in batch if m.host == host)
            for line in out.splitlines():
                w = line.split()
                if len(w) == 4 and w[0] == "nine-started":
                    started[w[1]] = (int(w[2]), w[3])
                elif len(w) == 2 and w[0] == "nine-failed":
                    refused.add(w[1])
        failed = {}                 # why: [names] (one line for many hosts, as clush -b)
        for m in batch:
            if m.name in started:
                m.pid, m.address = started[m.name]
                addrs[m.name] = m.address
                continue
            rc, out, err = results[m.host]
            why = "no answer in %g s" % self.start_timeout if rc is None else \
                (err.strip() or out.strip() or "exit status %s" % rc)
            if m.host:              # (its files' paths name it)
                why = why.replace("/%s/" % m.host, "/%h/")
            failed.setdefault(why, []).append(m.name)
        if self.interrupted:
            self._save()            # what started is recorded: down() stops it
            raise KeyboardInterrupt
        if failed:
            from ClusterShell.NodeSet import NodeSet
            # what its starter says did not start, or what ssh did not reach, does not
            # run: down() leaves it be (a pid file refused may name another tree's server)
            self.members = [m for m in self.members if m.name not in refused]
            self._save()
            raise LaunchError("could not start:\n" + "\n".join(
                "%s: %s" % (NodeSet.fromlist(names), why) for why, names in failed.items()))

    def _tell_children(self, muxes, addrs):
        tell_children(muxes, addrs, self.start_timeout)
        self._check()

    def _build_root(self, root, addrs):
        from ..assembly import MuxConfig, build_mux
        topo = self.topo
        first = root.level == 1
        final = topo.final_root or (FINAL_LEAF_MUX if first else FINAL_UP)
        if topo.aggregators:
            from ..group.aggregate import load
            load(topo.aggregators)
        self.root = build_mux(MuxConfig([(c, addrs[c]) for c in root.children],
                                        final_text=final, child_aname="nine" if first else "",
                                        name="root", auth=topo.root_auth))
        try:
            srv = self.root.server.listen(topo.listen)
        except (OSError, ValueError) as ex:
            raise LaunchError("cannot listen on %s: %s" % (topo.listen, ex)) from None
        host, port = srv.address[:2]
        self.address = root.address = "%s:%d" % (host, port)

    def _wait_root(self):
        """Attach to the root until it answers (start_timeout)."""
        import gevent
        from ..client import Client
        deadline = time.monotonic() + self.start_timeout
        while True:
            self._check()
            try:
                Client(self.address, connect_timeout=5).close()
                return
            except (OSError, ValueError) as ex:
                if time.monotonic() > deadline:
                    raise LaunchError("the root %s does not answer: %s" % (self.address, ex))
            gevent.sleep(0.1)       # (an in-process root serves meanwhile)

    def describe(self):
        """Lines saying where each server runs."""
        lines = []
        for level in sorted({m.level for m in self.members}):
            ms = [m for m in self.members if m.level == level]
            kind = "leaves" if level == 0 else "root" if ms[0].kind == "root" else \
                "muxes (level %d)" % level
            lines.append("%-18s %s" % (kind + ":", " ".join(
                "%s=%s" % (m.name, m.address) + ("" if m.kind == "leaf" else
                                                 " (on %s)" % (m.host or "this machine"))
                for m in ms)))
        lines.append("%-18s %s (`nine tree down --state %s` stops it)" % (
            "state:", self.state_file, self.state_file))
        return "\n".join(lines)

    # -- copy the key --------------------------------------------------------------

    def copy_key(self, path):
        """Copy the key file at path to the same path on the hosts that lack it or hold
        another (mode 0600, its directory made 0700), with ClusterShell's copy; hosts
        that have it already (a shared file system: the very file) are left alone.
        Returns the hosts it was copied to."""
        import hashlib
        from ClusterShell.NodeSet import NodeSet
        from ClusterShell.Task import task_self
        path = os.path.abspath(path)
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        q = shlex.quote(path)
        have = self._run({h: "sha256sum %s 2>/dev/null" % q for h in self.hosts},
                         self.start_timeout, interruptible=True)
        self._check()
        bad = ["%s: %s" % (h, err.strip() or "no answer")
               for h, (rc, _, err) in have.items() if rc in (None, 255)]
        need = [h for h, (rc, out, _) in have.items()
                if rc not in (None, 255) and out.split()[:1] != [digest]]
        if need:
            made = self._run({h: "mkdir -p -m 700 %s" % shlex.quote(os.path.dirname(path))
                              for h in need}, self.start_timeout)
            task = task_self()
            task.copy(path, path, nodes=NodeSet.fromlist(need), preserve=True, stderr=True,
                      timeout=self.start_timeout, tree=False)
            task.resume()
            copied = {}
            for h in need:
                try:
                    copied[h] = (task.key_retcode(h), task.key_error(h))
                except KeyError:
                    copied[h] = (None, b"no answer in %g s" % self.start_timeout)
            done = self._run({h: "chmod 600 %s" % q for h in need}, self.start_timeout)
            for h in need:
                for rc, err in (made[h][0::2], copied[h], done[h][0::2]):
                    if rc != 0:
                        err = err.decode(errors="replace") if isinstance(err, bytes) else err
                        bad.append("%s: %s" % (h, err.strip() or "exit status %s" % rc))
                        break
        if bad:
            raise LaunchError("could not copy the key %s:\n  %s" % (path, "\n  ".join(bad)))
        return need

    # -- down ----------------------------------------------------------------------

    def down(self, wait=10.0):
        """Stop every server the state records and confirm that each is gone; remove
        the state file when all are.  Returns the lines of what was done; raises
        LaunchError naming the servers that may still run (the state file then keeps
        them, for another try)."""
        if self.root is not None:
            self.root.close()
            self.root = None
        if not self.recorded:
            return []               # start() refused: nothing of ours runs
        report = []
        if self.watcher not in (None, os.getpid(), self.launcher):
            # (it ends what it does first: a server it starts is recorded, then stopped)
            if self._stop_process(self.watcher, self.start_timeout + wait * 3):
                report.append("the watch (pid %d) stopped" % self.watcher)
            if not os.path.exists(self.state_file):
                return report
            self.members = SshTree.from_state(self.state_file).members
        if self.launcher not in (None, os.getpid()) and self._stop_process(self.launcher,
                                                                           wait * 3):
            report.append("the foreground nine tree (pid %d) stopped its tree" % self.launcher)
            if not os.path.exists(self.state_file):
                return report
        in_process = self.launcher is not None
        self.launcher = None
        scripts = {}
        for m in self.members:
            if m.kind == "root" and m.host is None and in_process:
                continue            # the root of a foreground launcher: gone with it
            scripts.setdefault(m.host, "d=%s\n%s" % (self._dir(m.host),
                                                       _STOP % int(wait * 10)))
            scripts[m.host] += "stop %s\n" % shlex.quote(m.stem)
        results = self._run(scripts, wait + 30) if scripts else {}
        left = []
        for m in self.members:
            if m.host not in results:
                continue
            rc, out, err = results[m.host]
            said = [w for w in (line.split() for line in out.splitlines())
                    if len(w) >= 2 and w[0].startswith("nine-") and w[1] == m.stem]
            if said and said[0][0] in ("nine-stopped", "nine-gone"):
                report.append("%s: %s" % (_where(m), "stopped" if said[0][0] == "nine-stopped"
                                          else "not running"))
            else:
                why = ("still running (pid %s)" % " ".join(said[0][2:])) if said else \
                    "no answer" if rc is None else (err.strip() or "exit status %s" % rc)
                left.append((m, why))
        if left:
            self.members = [m for m, _ in left]
            self._save()
            raise LaunchError("may still run (%s keeps them: `nine tree down` again):\n  "
                              % self.state_file + "\n  ".join(
                                  "%s: %s" % (_where(m), why) for m, why in left))
        try:
            os.unlink(self.state_file)
        except FileNotFoundError:
            pass
        return report

    def _stop_process(self, pid, wait):
        """SIGTERM the foreground launcher or watch recorded, if it is one (a `nine tree`
        process); wait for it."""
        if not tree_process(pid):
            return False            # gone, or a reused pid: not our nine tree
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return False
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not tree_process(pid):   # (gone, or a zombie its parent did not reap yet)
                return True
            time.sleep(0.1)
        return False


#: sh: `stop STEM` stops the daemon of pid file $d/STEM.pid: every process whose command
#: line names that file (the daemon, and its starter while it starts: never a process
#: that reused a pid), SIGTERM first and SIGKILL after %d tenths of seconds; it says
#: nine-stopped STEM PIDS, nine-gone STEM (none ran) or nine-left STEM PIDS.  The process
#: the pid file names is checked first (its /proc/PID/cmdline); only without one that
#: names the file is the process table listed (`ps`, which on a loaded host with many
#: processes costs far more than the stop itself), and once more to confirm at the end.
#: A zombie is gone (it has exited: no port, no file; a daemon's parent is init, which
#: may reap it a second later).
_STOP = r'''ours() {
  q=$(cat "$d/$1.pid" 2>/dev/null)
  case "$q" in
    ''|*[!0-9]*) ;;
    *) if tr '\0' ' ' < "/proc/$q/cmdline" 2>/dev/null | grep -qF -- "--pid-file $d/$1.pid "
       then echo "$q"; return; fi ;;
  esac
  ps -eo pid=,args= | F="--pid-file $d/$1.pid " awk 'index($0, ENVIRON["F"]) { print $1 }'
}
live() {
  for q in "$@"; do
    kill -0 "$q" 2>/dev/null || continue
    case "$(sed -n 's/^State:[[:space:]]*//p' "/proc/$q/status" 2>/dev/null)" in
      Z*) ;;
      *) return 0 ;;
    esac
  done
  return 1
}
stop() {
  p=$(ours "$1")
  if [ -z "$p" ]; then echo "nine-gone $1"; rm -f "$d/$1.addr" "$d/$1.pid"; return; fi
  kill $p 2>/dev/null
  i=0
  while live $p && [ $i -lt %d ]; do sleep 0.1; i=$((i+1)); done
  live $p && { kill -9 $p 2>/dev/null; sleep 0.2; }
  left=$(ours "$1")
  if [ -n "$left" ]; then echo "nine-left $1" $left; return; fi
  echo "nine-stopped $1" $p
  rm -f "$d/$1.addr" "$d/$1.pid"
}
'''


def tree_process(pid):
    """Whether process pid runs and is a `nine tree` (a launcher, a watch); a zombie
    has no command line: it is not."""
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return b"tree" in f.read().split(b"\0")
    except OSError:
        return False


def _where(m):
    """"leaf node3", "mux mux1-0 on node1", "root on this machine"."""
    if m.kind == "leaf":
        return "leaf " + m.name
    return "%s on %s" % ("root" if m.kind == "root" else "mux " + m.name,
                         m.host or "this machine")


def down(state_file):
    """Stop the tree a state file records (`nine tree down`); see SshTree.down."""
    return SshTree.from_state(state_file).down()
