"""Many hosts on this machine, for the tests and benchmarks that need real hosts
reached through ssh: each host is a Linux network namespace with its own address,
host name, files, /etc/hosts and sshd, all on one bridge.  Needs root.

    with Cluster(8) as c:                       # hosts node1 .. node8
        c.ssh("node2", "hostname")              # -> CompletedProcess, stdout "node2\\n"
        subprocess.run(["ssh", "-F", c.ssh_config, "node3", "cat /srv/x"])
        c.run_in("node4", ["nine", "serve", ...])   # a process in that host, no ssh
        c.kill_host("node4"); c.boot_host("node4")  # crash and reboot

Layout.  Cluster ``ID`` (``<owner pid>-<sequence>``) is made of:

- namespace ``nine-ID``: the switch, a bridge ``br0`` with a veth port per host and
  one to this machine;
- namespace ``nine-ID-NAME`` per host: ``eth0`` (its port on the bridge) with the
  host's address, loopback up;
- ``n9-ID`` in the namespace that made the cluster (the root one): its port on the
  bridge, with the last address of the subnet, so that ``ssh`` and clients run
  here reach every host directly: the head node is this machine, where a launcher
  (``nine tree``) runs ``ssh -F CLUSTER/ssh_config HOST ...``;
- per host, a holder process (``sleep``) that owns the host's UTS and mount
  namespaces (``ip netns exec NS unshare --uts --mount``): its host name, its
  directory ``hosts/NAME`` of the cluster directory bind-mounted over ``/srv``
  (``mount_at``), its own ``/etc/hosts`` naming every host, its own ``/run`` (a
  tmpfs: pid files, sockets, sshd's ``/run/sshd``); the host's sshd and
  whatever run_in starts enter those namespaces and the network one
  (``nsenter -t HOLDER -n -u -m``);
- per host, ``/usr/sbin/sshd -D -f run/NAME/sshd_config``: listening on the host's
  address only, key-only root login with the cluster's client key (``id_ed25519``,
  ``authorized_keys``), one host key for the whole cluster, ``UsePAM no`` (so
  root's password must not be locked with ``!``), and ``PATH`` set to this
  process's, so that commands over ssh find the same ``python3`` and ``nine``;
- the cluster directory (a temporary one): keys, ``ssh_config`` (``Host NAME`` /
  ``HostName ADDRESS`` per host; batch mode, no host key checks), ``hosts/``,
  ``run/`` (per host sshd_config, hosts file, logs);
- ``/run/nine-hosts/ID.json``: the owner process and the cluster directory, for
  clean_stale.

What the hosts share with this machine: the rest of the file system (``/root``
and its shell start-up files, ``/tmp``, the cluster directory), the process
table (no PID namespace: ``ps`` in a host lists every process), users.  This
machine's own ``/etc/hosts`` is left alone: here the host names resolve only
through ``ssh_config``; give other programs ``Host.address``.

Addresses: a free /16 in 10.160-250.0.0 (``base`` picks one; either way a subnet
that overlaps a route or address of this machine is refused), hosts from .0.1
on, skipping last octets 0 and 255; at most 1,023 hosts (a bridge's port limit).

Cleaning up: stop() (or leaving the ``with``) kills by PID every process in the
cluster's namespaces (the holders and sshds, whatever ssh sessions and run_in
started, and their children), deletes the namespaces (which takes the bridge and
veths along) and the cluster directory.  The bind mounts live only in the
holders' private mount namespaces, which vanish with their processes.  A
finalizer does the same at interpreter exit if stop() was not called; a run
killed outright leaves its cluster behind until clean_stale(), which every new
Cluster calls first, finds that its owner is dead.

Link rate: ``rate`` (a tc rate: "200mbit", "1gbit", "50mbps") shapes every link of
the cluster with the kernel's token bucket filter (``tc qdisc ... tbf``), in both
directions: each host's ``eth0`` (what it sends) and its bridge port ``hN`` (what it
receives), and this machine's link, ``n9-ID`` (what the head sends to every host)
and its bridge port ``head`` (what the head receives).  As on a switched network, a
host that sends to several hosts shares its one link's rate between them: the
head's egress is the bottleneck of a copy from here to every host.  Each filter's
burst is 5 ms of its rate, and at least 68 KiB: a whole 64 KiB GSO segment passes
unsplit at any rate, as a real NIC's segmentation offload sends it without costing the
host's CPU (with a smaller burst tbf cuts every segment into frames in software: at
50 Mbit/s a copy to 64 hosts cost three times the CPU it costs at 200 Mbit/s, which
on this machine's few cores bounded the time more than the links did); its queue
50 ms of its rate (beyond that it drops, and TCP backs off).
Counted on the wire (Ethernet, IP and TCP headers included): a TCP stream gets
about 95% of the rate.  Default None: unshaped veths (several Gbit/s, bounded by
this machine's CPU).

Link delay: ``delay_ms`` is a hook only.  This kernel has no ``sch_netem`` (nor
loadable modules), so ``tc ... netem`` cannot delay the veths; a delay would need
a user-space switch over TAP devices instead of the bridge.  Not implemented
here: a value other than None raises NotImplementedError.

Starting processes in a host over ssh: ``ssh HOST 'cmd &'`` hangs (the
background job holds the session's output open) and ``$!`` is not the daemon's
pid; detach with ``setsid cmd </dev/null >LOG 2>&1 & echo $! > PIDFILE``.

``python -m interop.hosts -k 64`` brings a cluster up and down and prints the
times (``--hold`` keeps it until Ctrl-C).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import ipaddress
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import weakref
from pathlib import Path

from nine.netwait import scaled, wait_for, wait_port

SSHD = "/usr/sbin/sshd"
NETNS_DIR = Path("/run/netns")
REGISTRY = Path("/run/nine-hosts")
#: second octets tried for an automatic subnet 10.N.0.0/16
AUTO_OCTETS = range(160, 251)
MAX_HOSTS = 1023
_NS_RE = re.compile(r"^nine-(\d+-\d+)(?:-.+)?$")
_LINK_RE = re.compile(r"^n9-(\d+-\d+)$")
_NAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_sequence = itertools.count()
_RATE_RE = re.compile(r"^(\d+(?:\.\d+)?)(bit|kbit|mbit|gbit|tbit|bps|kbps|mbps|gbps|tbps)$")
_RATE_UNITS = {"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "tbit": 1e12,
               "bps": 8, "kbps": 8e3, "mbps": 8e6, "gbps": 8e9, "tbps": 8e12}
#: a shaped link's burst (seconds of its rate; at least RATE_MIN_BURST bytes) and queue
RATE_BURST_S = 0.005
RATE_MIN_BURST = 68 * 1024
RATE_LATENCY_MS = 50

#: the holder of a host's UTS and mount namespaces: $1 name, $2 host directory,
#: $3 where it shows, $4 the host's hosts file; says "ready" once set up
_HOLDER = ('hostname "$1" && mount --bind "$2" "$3" && mount --bind "$4" /etc/hosts'
           ' && mount -t tmpfs -o mode=755,size=16m nine-run /run && mkdir /run/sshd'
           ' && echo ready && exec sleep infinity >/dev/null')


class HostsError(RuntimeError):
    """A cluster could not be made, or its processes would not die."""


@dataclasses.dataclass(eq=False)
class Host:
    """One host: ``dir`` (on this machine) is what the host sees at ``/srv`` (the
    cluster's ``mount_at``); ``run`` holds its sshd's config and logs; ``holder``
    and ``sshd`` are its processes while it is up (None after kill_host)."""
    name: str
    address: str
    index: int
    ns: str
    dir: Path
    run: Path
    holder: subprocess.Popen | None = None
    sshd: subprocess.Popen | None = None
    unplugged: bool = False


@dataclasses.dataclass
class _Resources:
    """What a cluster holds on this machine, apart from its Cluster object, so that
    a finalizer (and clean_stale, for a dead owner) can remove it."""
    cid: str
    namespaces: list[str]
    head: str
    dir: Path | None
    procs: list[subprocess.Popen] = dataclasses.field(default_factory=list)

    @property
    def registry(self) -> Path:
        return REGISTRY / f"{self.cid}.json"


def available() -> str | None:
    """Why clusters cannot be made here, or None if they can."""
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("ip", "unshare", "nsenter", "mount", "hostname", "ssh", "ssh-keygen", "sleep"):
        if shutil.which(tool) is None:
            return f"no {tool} (iproute2, util-linux, hostname, openssh-client)"
    if not os.access(SSHD, os.X_OK):
        return f"no {SSHD} (openssh-server)"
    if subprocess.run(["unshare", "--net", "--uts", "--mount", "true"],
                      stderr=subprocess.DEVNULL).returncode:
        return "cannot make namespaces (unshare --net --uts --mount)"
    return None


class Cluster:
    """K hosts named ``prefix1`` .. ``prefixK``, or named by ``names`` (any host
    names: they need not fold into ranges).  ``base``: the subnet (e.g.
    "10.77.0.0/16"), else a free one.  ``root``: where the cluster directory is
    made (the system's temporary directory by default).  ``mount_at``: where each
    host sees its directory.  ``rate``: shape every link, both directions, to this tc
    rate ("200mbit"; module docstring), else None (unshaped).  ``delay_ms``: not
    implemented (module docstring).  A context manager; start() and stop() otherwise."""

    def __init__(self, k: int | None = None, prefix: str = "node", base: str | None = None,
                 names: list[str] | None = None, root: str | None = None,
                 mount_at: str = "/srv", delay_ms: float | None = None,
                 rate: str | None = None):
        if delay_ms is not None:
            raise NotImplementedError(
                "link delay: this kernel has no sch_netem; a user-space TAP switch would be "
                "needed (interop/hosts.py docstring)")
        if names is None:
            if not k or k < 1:
                raise ValueError("k: a positive number of hosts, or names")
            names = [f"{prefix}{i}" for i in range(1, k + 1)]
        elif k is not None and k != len(names):
            raise ValueError(f"k={k} but {len(names)} names")
        bad = [n for n in names if not _NAME_RE.match(n)]
        if bad or len(set(names)) != len(names):
            raise ValueError(f"host names must be distinct host name labels: {bad or names}")
        if len(names) > MAX_HOSTS:
            raise ValueError(f"at most {MAX_HOSTS} hosts on one bridge")
        if not os.path.isdir(mount_at):
            raise ValueError(f"mount_at {mount_at}: not a directory of this machine")
        self.rate_bits = None if rate is None else parse_rate(rate)
        self.rate = rate
        self.names = list(names)
        self.base = base
        self.root = root
        self.mount_at = mount_at
        self.cid = f"{os.getpid()}-{next(_sequence) % 10000}"
        self.switch = f"nine-{self.cid}"
        self.hosts: list[Host] = []
        self.dir: Path | None = None
        self.subnet: ipaddress.IPv4Network | None = None
        self.head_address: str | None = None
        self._res: _Resources | None = None
        self._finalizer = None

    # -- life cycle --------------------------------------------------------------

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> Cluster:
        """Make the cluster and wait until every host's sshd accepts connections."""
        reason = available()
        if reason:
            raise HostsError(f"cannot make hosts here: {reason}")
        clean_stale()
        self.dir = Path(tempfile.mkdtemp(prefix=f"nine-hosts-{self.cid}-", dir=self.root))
        res = self._res = _Resources(self.cid, [self.switch], f"n9-{self.cid}", self.dir)
        self._finalizer = weakref.finalize(self, _finalize, res, os.getpid())
        REGISTRY.mkdir(parents=True, exist_ok=True)
        res.registry.write_text(json.dumps(
            {"pid": os.getpid(), "start": _start_time(os.getpid()), "dir": str(self.dir)}))
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Remove everything of the cluster (module docstring); again is a no-op."""
        if self._finalizer is not None:
            self._finalizer()

    def _start(self) -> None:
        for key in ("id_ed25519", "ssh_host_ed25519_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"nine-{self.cid}",
                            "-f", str(self.dir / key)], stdin=subprocess.DEVNULL, check=True)
        with _lock():
            self.subnet = _pick_subnet(self.base)
            head = self.subnet.broadcast_address - 1
            self.head_address = str(head)
            addresses = _addresses(self.subnet, len(self.names))
            for i, (name, addr) in enumerate(zip(self.names, addresses), 1):
                self.hosts.append(Host(name, str(addr), i, f"{self.switch}-{name}",
                                       self.dir / "hosts" / name, self.dir / "run" / name))
            self._res.namespaces += [h.ns for h in self.hosts]
            prefixlen = self.subnet.prefixlen
            _ip_batch([f"netns add {ns}" for ns in self._res.namespaces] + [
                f"link add {self._res.head} type veth peer name head netns {self.switch}",
                f"addr add {head}/{prefixlen} dev {self._res.head}",
                f"link set {self._res.head} up"])
        _ip_batch(["link add br0 type bridge forward_delay 0", "link set br0 up",
                   "link set head master br0", "link set head up"]
                  + [line for h in self.hosts for line in (
                      f"link add h{h.index} type veth peer name eth0 netns {h.ns}",
                      f"link set h{h.index} master br0", f"link set h{h.index} up")],
                  netns=self.switch)
        _wait_all([_ip_batch_popen(["link set lo up", f"addr add {h.address}/{prefixlen} dev eth0",
                                    "link set eth0 up"], netns=h.ns) for h in self.hosts], "host network")
        if self.rate is not None:
            self._shape()
        shutil.copyfile(self.dir / "id_ed25519.pub", self.dir / "authorized_keys")
        self._write_configs()
        self._boot(self.hosts)

    def _shape(self) -> None:
        """Put a token bucket filter of self.rate on the egress of every link: the
        head's port here and on the bridge, each host's eth0 and bridge port."""
        tbf = tbf_args(self.rate_bits)

        def line(dev: str) -> str:
            return f"qdisc replace dev {dev} root tbf {tbf}"
        _wait_all([_batch_popen("tc", [line(self._res.head)]),
                   _batch_popen("tc", [line("head")] + [line(f"h{h.index}") for h in self.hosts],
                                netns=self.switch)]
                  + [_batch_popen("tc", [line("eth0")], netns=h.ns) for h in self.hosts],
                  "link rate")

    def _write_configs(self) -> None:
        hosts_file = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n" + "".join(
            f"{h.address}\t{h.name}\n" for h in self.hosts)
        path = os.environ.get("PATH", os.defpath)
        for h in self.hosts:
            h.dir.mkdir(parents=True)
            h.run.mkdir(parents=True)
            (h.run / "hosts").write_text(hosts_file)
            (h.run / "sshd_config").write_text(f"""\
ListenAddress {h.address}:22
HostKey {self.dir}/ssh_host_ed25519_key
PidFile {h.run}/sshd.pid
AuthorizedKeysFile {self.dir}/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
UseDNS no
PrintMotd no
PrintLastLog no
X11Forwarding no
MaxStartups 200:30:400
Subsystem sftp internal-sftp
SetEnv "PATH={path}"
""")
        (self.dir / "ssh_config").write_text("".join(
            f"Host {h.name}\n  HostName {h.address}\n" for h in self.hosts) + f"""\
Host *
  User root
  IdentityFile {self.dir}/id_ed25519
  IdentitiesOnly yes
  UserKnownHostsFile /dev/null
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking no
  LogLevel ERROR
  BatchMode yes
  ConnectTimeout 15
""")

    def _boot(self, hosts: list[Host]) -> None:
        """Start the holders and sshds of hosts (all at once), wait for their sshds."""
        for h in hosts:
            with open(h.run / "holder.log", "ab") as log:
                h.holder = self._popen(
                    ["ip", "netns", "exec", h.ns, "unshare", "--uts", "--mount", "sh", "-c", _HOLDER,
                     "holder", h.name, str(h.dir), self.mount_at, str(h.run / "hosts")],
                    stdout=subprocess.PIPE, stderr=log)
        for h in hosts:
            ready = h.holder.stdout.readline()
            h.holder.stdout.close()
            if ready != b"ready\n":
                raise HostsError(f"{h.name}: holder failed: {(h.run / 'holder.log').read_text()}")
        for h in hosts:
            h.sshd = self._popen(self._enter(h) + [SSHD, "-D", "-f", str(h.run / "sshd_config"),
                                                   "-E", str(h.run / "sshd.log")],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for h in hosts:
            try:
                wait_port((h.address, 22), timeout=30, proc=h.sshd)
            except Exception as e:
                log = h.run / "sshd.log"
                raise HostsError(f"{h.name}: sshd: {e}: {log.read_text() if log.exists() else ''}") from e

    def _popen(self, argv: list[str], **kw) -> subprocess.Popen:
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw.setdefault("start_new_session", True)
        p = subprocess.Popen(argv, **kw)
        self._res.procs.append(p)
        return p

    @staticmethod
    def _enter(h: Host, cwd: str | None = None) -> list[str]:
        if h.holder is None:
            raise HostsError(f"{h.name} is down")
        # not nsenter's --wd: it opens the directory before entering the mount namespace
        return ["nsenter", "-t", str(h.holder.pid), "-n", "-u", "-m", "--"] + (
            ["sh", "-c", 'cd "$0" && exec "$@"', cwd] if cwd else [])

    # -- use ---------------------------------------------------------------------

    @property
    def ssh_config(self) -> Path:
        """The ssh client configuration: ``ssh -F THIS NAME cmd`` reaches host NAME."""
        return self.dir / "ssh_config"

    def host(self, host: Host | str) -> Host:
        """The Host called host (a name), or host itself."""
        if isinstance(host, Host):
            return host
        for h in self.hosts:
            if h.name == host:
                return h
        raise KeyError(host)

    def ssh_argv(self, host: Host | str, cmd: str) -> list[str]:
        """The ssh command line that runs shell command cmd on host."""
        return ["ssh", "-F", str(self.ssh_config), self.host(host).name, cmd]

    def ssh(self, host: Host | str, cmd: str, timeout: float = 60, check: bool = False,
            input: str | None = None) -> subprocess.CompletedProcess:
        """Run shell command cmd on host through ssh; its output as text."""
        return subprocess.run(self.ssh_argv(host, cmd), input=input, capture_output=True, text=True,
                              timeout=scaled(timeout), check=check,
                              stdin=None if input is not None else subprocess.DEVNULL)

    def run_in(self, host: Host | str, argv: list[str], cwd: str | None = None, **kw) -> subprocess.Popen:
        """Start argv in host's namespaces (network, host name, files), without ssh;
        cwd is a path inside the host ("/" by default).  kw go to Popen (stdin is
        /dev/null and the process leads a session of its own unless kw say
        otherwise).  Returns once the process is in the host (so kill_host ends it)
        or has ended."""
        h = self.host(host)
        p = self._popen(self._enter(h, cwd) + list(argv), **kw)
        inode = _ns_inode(h.ns)
        wait_for(lambda: p.poll() is not None or _net_inode(p.pid) == inode, 10,
                 f"{argv[0]} entering {h.name}", interval=0.002)
        return p

    def kill_host(self, host: Host | str, unplug: bool = False) -> None:
        """Crash host: SIGKILL every process in its network namespace (holder,
        sshd, sessions, whatever run_in started), which drops its host name and
        mounts too.  Its address stays, so peers get refusals; unplug=True also
        takes its port on the bridge down, so peers get silence (timeouts)."""
        h = self.host(host)
        _kill_in({_ns_inode(h.ns)}, self._res.procs)
        h.holder = h.sshd = None
        if unplug:
            _ip_batch([f"link set h{h.index} down"], netns=self.switch)
            h.unplugged = True

    def boot_host(self, host: Host | str) -> None:
        """Start a killed host again (its files are kept), plugged in."""
        h = self.host(host)
        if h.holder is not None:
            raise HostsError(f"{h.name} is up")
        if h.unplugged:
            _ip_batch([f"link set h{h.index} up"], netns=self.switch)
            h.unplugged = False
        self._boot([h])

    def pids(self, host: Host | str | None = None) -> list[int]:
        """The processes now in host's network namespace, or in the whole cluster's."""
        names = [self.host(host).ns] if host is not None else self._res.namespaces
        return sorted(_pids_in({_ns_inode(n) for n in names}))


# -- cleaning up -----------------------------------------------------------------

def _finalize(res: _Resources, owner: int) -> None:
    """stop(), or the safety net at exit: tear res down, unless this is a child that
    forked from the owner (its exit must not take the owner's hosts)."""
    if os.getpid() == owner:
        _teardown(res)


def _teardown(res: _Resources) -> None:
    """Kill every process in res's namespaces, then delete them, the link to this
    namespace, the cluster directory and the registry entry.  What another
    cleaner removed meanwhile is no error; what remains is."""
    present = [n for n in res.namespaces if (NETNS_DIR / n).exists()]
    _kill_in({_ns_inode(n) for n in present}, res.procs)
    subprocess.run(["ip", "link", "del", res.head], stderr=subprocess.DEVNULL)
    if present:
        _ip_batch([f"netns del {n}" for n in present], force=True, check=False)
        remaining = [n for n in present if (NETNS_DIR / n).exists()]
        if remaining:
            raise HostsError(f"namespaces {remaining} could not be deleted")
    if res.dir is not None:
        shutil.rmtree(res.dir, ignore_errors=True)
    res.registry.unlink(missing_ok=True)


def clean_stale() -> list[str]:
    """Remove the clusters whose owner process is dead (a run killed before it
    could stop them): their processes, namespaces, links, directories.  Returns
    their ids."""
    with _lock():
        return _clean_stale()


def _clean_stale() -> list[str]:
    found: dict[str, dict | None] = {}
    if REGISTRY.is_dir():
        for entry in REGISTRY.glob("*.json"):
            try:
                found[entry.stem] = json.loads(entry.read_text())
            except (OSError, ValueError):
                found[entry.stem] = None
    namespaces: dict[str, list[str]] = {}
    for ns in os.listdir(NETNS_DIR) if NETNS_DIR.is_dir() else ():
        m = _NS_RE.match(ns)
        if m:
            namespaces.setdefault(m.group(1), []).append(ns)
            found.setdefault(m.group(1), None)
    for link in os.listdir("/sys/class/net"):
        m = _LINK_RE.match(link)
        if m:
            found.setdefault(m.group(1), None)
    removed = []
    for cid, entry in sorted(found.items()):
        start = _start_time(int(cid.split("-")[0]))
        if start is not None and (entry is None or entry.get("start") == start):
            continue
        directory = (entry or {}).get("dir")
        _teardown(_Resources(cid, namespaces.get(cid, []), f"n9-{cid}",
                             Path(directory) if directory else None))
        removed.append(cid)
    return removed


def _kill_in(inodes: set[int], procs: list[subprocess.Popen], timeout: float = 10) -> None:
    """SIGKILL every process in the network namespaces inodes until none is left
    (a process may fork while it is being killed), reaping the ones in procs."""
    deadline = time.monotonic() + scaled(timeout)
    while True:
        for p in procs:
            p.poll()
        procs[:] = [p for p in procs if p.returncode is None]
        pids = _pids_in(inodes)
        if not pids:
            return
        if time.monotonic() > deadline:
            raise HostsError(f"processes {sorted(pids)} survive SIGKILL")
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)


def _pids_in(inodes: set[int]) -> set[int]:
    """The live processes whose network namespace is one of inodes (a zombie has
    none left)."""
    if not inodes:
        return set()
    return {int(e) for e in os.listdir("/proc") if e.isdigit() and _net_inode(e) in inodes}


def _net_inode(pid: int | str) -> int | None:
    """The inode of process pid's network namespace, or None (no such process,
    or a zombie)."""
    try:
        link = os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return None
    return int(link[link.index("[") + 1:-1])


def _ns_inode(ns: str) -> int | None:
    """The inode that names network namespace ns, or None if it is gone."""
    try:
        return os.stat(NETNS_DIR / ns).st_ino
    except FileNotFoundError:
        return None


def _start_time(pid: int) -> int | None:
    """When process pid started (clock ticks since boot), or None if there is none
    (or only its zombie): with the pid, it names a process even after the pid is
    reused."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else int(fields[19])


# -- addresses and ip ------------------------------------------------------------

@contextlib.contextmanager
def _lock():
    """Serialize the choice of subnets between the clusters of this machine."""
    REGISTRY.mkdir(parents=True, exist_ok=True)
    with open(REGISTRY / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _used_networks() -> list[ipaddress.IPv4Network]:
    """The IPv4 routes (all tables, but not default ones) and addresses here."""
    nets = []
    routes = json.loads(subprocess.run(["ip", "-j", "-4", "route", "show", "table", "all"],
                                       capture_output=True, text=True, check=True).stdout or "[]")
    for r in routes:
        if r.get("dst") not in (None, "default"):
            nets.append(ipaddress.ip_network(r["dst"], strict=False))
    addrs = json.loads(subprocess.run(["ip", "-j", "-4", "addr", "show"],
                                      capture_output=True, text=True, check=True).stdout or "[]")
    for link in addrs:
        for a in link.get("addr_info", []):
            nets.append(ipaddress.ip_network(f"{a['local']}/{a['prefixlen']}", strict=False))
    return nets


def _pick_subnet(base: str | None) -> ipaddress.IPv4Network:
    used = _used_networks()
    if base is not None:
        net = ipaddress.IPv4Network(base)
        clash = [str(u) for u in used if u.overlaps(net)]
        if clash:
            raise HostsError(f"subnet {net} overlaps {', '.join(clash)} here")
        return net
    octets = list(AUTO_OCTETS)
    start = os.getpid() % len(octets)
    for octet in octets[start:] + octets[:start]:
        net = ipaddress.IPv4Network(f"10.{octet}.0.0/16")
        if not any(u.overlaps(net) for u in used):
            return net
    raise HostsError("no free subnet 10.N.0.0/16 here")


def _addresses(net: ipaddress.IPv4Network, k: int) -> list[ipaddress.IPv4Address]:
    """k host addresses of net from its start, none ending in .0 or .255, leaving
    the last one (the head's) free."""
    out = []
    for a in net.hosts():
        if len(out) == k:
            return out
        if a.packed[-1] not in (0, 255) and a != net.broadcast_address - 1:
            out.append(a)
    raise HostsError(f"subnet {net} has no room for {k} hosts")


def parse_rate(rate: str) -> float:
    """Bits per second of a tc rate: "200mbit", "1gbit", "12.5mbps" (bytes); ValueError
    otherwise."""
    m = _RATE_RE.match(str(rate).strip().lower())
    bits = float(m.group(1)) * _RATE_UNITS[m.group(2)] if m else 0
    if not m or bits < 8000:
        raise ValueError(f"rate {rate!r}: a tc rate of at least 8kbit, e.g. 200mbit, 1gbit, 50mbps")
    return bits


def tbf_args(bits: float) -> str:
    """tc's arguments after ``tbf`` for a link of bits per second (module docstring)."""
    burst = max(int(bits / 8 * RATE_BURST_S), RATE_MIN_BURST)
    return f"rate {int(bits)}bit burst {burst} latency {RATE_LATENCY_MS}ms"


def _batch_popen(tool: str, lines: list[str], netns: str | None = None,
                 force: bool = False) -> tuple[subprocess.Popen, list[str]]:
    """Start tool (ip or tc) on lines (one command a line), in netns if given."""
    argv = [tool] + (["-n", netns] if netns else []) + (["-force"] if force else []) + ["-batch", "-"]
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    p.stdin.write("".join(line + "\n" for line in lines))
    p.stdin.close()
    return p, lines


def _ip_batch_popen(lines: list[str], netns: str | None = None,
                    force: bool = False) -> tuple[subprocess.Popen, list[str]]:
    """Start ip on lines (one command a line), in netns if given."""
    return _batch_popen("ip", lines, netns, force)


def _wait_all(runs: list[tuple[subprocess.Popen, list[str]]], what: str, check: bool = True) -> None:
    """Wait for the ip (or tc) processes _batch_popen started; HostsError if one failed
    (and check)."""
    for p, lines in runs:
        err = p.stderr.read()
        p.stderr.close()
        if p.wait() and check:
            raise HostsError(f"{what}: {p.args[0]} -batch failed: {err.strip()}\n" + "\n".join(lines))


def _ip_batch(lines: list[str], netns: str | None = None, force: bool = False,
              check: bool = True) -> None:
    """Run ip commands (one a line) in one process, in netns if given."""
    _wait_all([_ip_batch_popen(lines, netns, force)], "ip", check)


def main() -> None:
    ap = argparse.ArgumentParser(description="bring a cluster of namespace hosts up and down, timed")
    ap.add_argument("-k", type=int, default=8, help="hosts (default 8)")
    ap.add_argument("--hold", action="store_true", help="keep it up until Ctrl-C")
    ap.add_argument("--rate", help="shape every link to this tc rate (200mbit)")
    args = ap.parse_args()

    def interrupt(*_):
        raise KeyboardInterrupt
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    t0 = time.monotonic()
    c = Cluster(args.k, rate=args.rate).start()
    try:
        up = time.monotonic() - t0
        print(f"{args.k} hosts up in {up:.2f} s; subnet {c.subnet}; links {c.rate or 'unshaped'}; "
              f"ssh -F {c.ssh_config} {c.hosts[0].name}", flush=True)
        if args.hold:
            with contextlib.suppress(KeyboardInterrupt):
                signal.pause()
    finally:
        t1 = time.monotonic()
        c.stop()
        print(f"down in {time.monotonic() - t1:.2f} s")


if __name__ == "__main__":
    main()
