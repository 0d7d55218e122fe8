"""Start a tree of leaves and muxes inside a Slurm allocation as job steps beside the
job (the way HPC tools start their daemons next to a job), and stop exactly those steps.

    tree = SlurmTree(fanout=8)      # the nodes of $SLURM_JOB_NODELIST, job $SLURM_JOB_ID
    addr = tree.start()             # leaves and muxes at once, the root; its address
    tree.down()                     # ends the steps; checks that squeue lists none

Placement: one leaf server per node, named after it (/nodes/NODE at the root), all of
them one step:

    srun --jobid=J --nodes=N --ntasks=N --ntasks-per-node=1 --nodelist=NODES --overlap
         --label ... nine serve --listen 0.0.0.0:PORT ...

and each mux a step of its own on one node (`--nodelist=NODE`), started at the same
time (without its children's addresses, told over 9P once every step serves:
nine.launch.ssh.tell_children), grouped and placed as
over ssh (nine.launch.ssh.place: on the first node of each group of `fanout` children,
or where a topology file's [muxes] puts them).  The root runs in the calling process
(start() builds it and listens on topo.listen), or as a step on root_host, a node of
the allocation, on root_port.  `--overlap` (Slurm 20.11 and later; since 22.05 it
shares CPUs, memory and GRES) lets the steps start in an allocation whose resources
the job's own steps hold, and take none of them away; `--kill-on-bad-exit=0` keeps the
other leaves when one dies (its mux reports it, and reconnects when it is back).

A step's task is `sh -c 'echo nine-step NODE JOB.STEP; exec PYTHON -m nine ...'`: the
first line names its node and step, the server's "nine: serving ... on ADDR" line (on
its stderr) says that it listens, and on which port (PORT 0: one the kernel picks; the
default 5640 suits firewalls, 0 suits nodes shared with other trees).  srun gathers
both from every task (--label: the task's number first) into a file per step here
(TMPDIR/nine-slurm-PID-*/STEP.out, removed by down()), so no shared file system is
needed for them.  A server's address is its node's NodeAddr
(`scontrol show node`: the address slurmctld reaches it at; the node's name by
default) and that port.

The servers run `PYTHON -m nine` (default: this Python) with PYTHONPATH = python_path
(default: this checkout; "" for nodes with nine installed), through srun, which gives
the tasks this process's environment: $NINE_KEY and $NINE_AUTH too (a key must be at
that path on the nodes; MUNGE, which Slurm runs anyway, needs nothing: --auth munge).

The srun processes are children of the caller, in a process group of their own (a
Ctrl-C at the terminal reaches the launcher, which then stops the tree), and each gets
SIGTERM when the caller dies (nine.launch.local).  Their steps are named
nine-PID-{leaves,MUX,root}.  down() closes the root, sends SIGTERM to every srun (srun
passes it to its tasks), waits, scancels the tree's steps that squeue still lists, and
confirms with `squeue -s` that none is left.  The end of the allocation ends them too.

Tested against slurmctld and slurmd of Debian's slurm-wlm 22.05 (tests/test_launch_slurm.py).
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from .local import _die_with_parent
from .ssh import (CHECKOUT, DEFAULT_PORT, LaunchError, child_args, node_list, place,
                  tell_children)
from .topology import FINAL_LEAF_MUX, FINAL_UP, Topology

#: what a task prints first: "nine-step NODE JOB.STEP"
_WRAP = 'echo "nine-step $SLURMD_NODENAME $SLURM_JOB_ID.$SLURM_STEP_ID"; exec "$@"'
_LABELED = re.compile(r"^\s*(\d+): (.*)$")
_SERVING = re.compile(r"^nine: serving .* on (\S+)$")
_EXITED = re.compile(r"^srun: error: (\S+): tasks? [\d,-]+: (.*)$")


def allocation(environ=None):
    """(job id, [node names]) of the allocation this process runs in: $SLURM_JOB_ID
    and $SLURM_JOB_NODELIST (Slurm's syntax, node[1-4,7], expanded by ClusterShell).
    Raises ValueError outside an allocation, and in a step's task that does not see all
    of it."""
    env = os.environ if environ is None else environ
    job = env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID")
    nodes = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not job or not nodes:
        raise ValueError("not inside a Slurm allocation (no $SLURM_JOB_ID and "
                         "$SLURM_JOB_NODELIST): run it under salloc or sbatch")
    whole = env.get("SLURM_NODELIST")
    if env.get("SLURM_STEP_ID") and whole and node_list(whole) != node_list(nodes):
        # a step's task (srun nine tree) sees its step's nodes as the job's, and an srun
        # it runs may use those only (Slurm 22.05)
        raise ValueError("inside job step %s.%s, which has %s of the job's nodes %s: start "
                         "the tree from the allocation's shell or batch script instead" % (
                             job, env["SLURM_STEP_ID"], nodes, whole))
    return job, node_list(nodes)


class Step:
    """One srun of the tree: `name` (its step's name without the prefix), the nodes of
    its tasks, its process and output file; what its tasks said (tasks: number ->
    {"node", "step", "listen"}) and its other lines."""

    def __init__(self, name, nodes, proc, out):
        self.name = name
        self.nodes = nodes
        self.proc = proc
        self.out = out
        self.tasks = {}
        self.other = []
        self.exited = []            # srun's word of tasks that ended: "NODE: why"

    def read(self):
        """Parse its output file again (it only grows)."""
        with open(self.out, errors="replace") as f:
            lines = f.read().splitlines()
        self.tasks, self.other, self.exited = {}, [], []
        for line in lines:
            m = _LABELED.match(line)
            if m is None:
                x = _EXITED.match(line)
                if x is not None:
                    self.exited.append("%s: %s" % x.groups())
                self.other.append(line)
                continue
            task = self.tasks.setdefault(int(m.group(1)), {})
            text = m.group(2)
            w = text.split()
            if len(w) == 3 and w[0] == "nine-step":
                task["node"], task["step"] = w[1], w[2]
            elif _SERVING.match(text) and "listen" not in task:
                task["listen"] = _SERVING.match(text).group(1)
            else:
                self.other.append("%s: %s" % (task.get("node", "task " + m.group(1)), text))

    def serving(self):
        """{node: port} of the tasks that listen."""
        return {t["node"]: int(t["listen"].rpartition(":")[2])
                for t in self.tasks.values() if "node" in t and "listen" in t}

    def step_id(self):
        """JOB.STEP, once a task said it."""
        for t in self.tasks.values():
            if "step" in t:
                return t["step"]
        return None

    def why(self):
        """The last words of its tasks and of srun, for an error message."""
        return "\n    ".join(self.other[-10:]) or "(no output)"


class SlurmTree:
    """A tree in a Slurm allocation (see the module's text).  nodes: names or a node set
    (default: the allocation's); topology: a Topology for the leaves' arguments and
    export, the FiNAL rules, the authentication, the root's address and [muxes]
    placement (its leaves are ignored: the nodes are the leaves); without one, the
    defaults with `fanout`."""

    def __init__(self, nodes=None, fanout=4, topology=None, *, job_id=None, port=DEFAULT_PORT,
                 root_host=None, root_port=0, python=None, python_path=CHECKOUT,
                 start_timeout=60.0, srun="srun"):
        if job_id is None or nodes is None:
            job, allocated = allocation()
            job_id = job_id or job
            nodes = allocated if nodes is None else nodes
        if isinstance(nodes, str):
            nodes = node_list(nodes)
        self.nodes = list(nodes)
        if not self.nodes:
            raise ValueError("a tree needs at least one node")
        self.job_id = str(job_id)
        self.topo = topology or Topology([(n, "slurm") for n in self.nodes], fanout=fanout)
        if self.topo.tls:
            raise ValueError("TLS links are not launched in Slurm allocations yet "
                             "(certificates per node)")
        if {"-q", "--quiet"} & set(self.topo.leaf_args.split()):
            raise ValueError("leaf-args: -q hides the line that says where a leaf listens")
        if root_host is not None and root_host not in self.nodes:
            raise ValueError("the root's node %s is not one of the tree's" % root_host)
        self.members = place(self.nodes, self.topo.fanout, self.topo.muxes, root_host)
        self.port = port
        self.root_port = root_port
        self.python = python or sys.executable
        self.python_path = python_path
        self.start_timeout = start_timeout
        self.srun = srun
        self.prefix = "nine-%d-" % os.getpid()  # the names of this tree's steps
        self.steps = []
        self.root = None            # the root's Mux, when it runs in this process
        self.address = None
        self._node_addr = {}
        self._tmp = None

    # -- Slurm's commands --------------------------------------------------------

    def _slurm(self, argv):
        """Run a Slurm client command; its stdout (LaunchError when it fails)."""
        try:
            r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                               timeout=60)
        except (OSError, subprocess.TimeoutExpired) as ex:
            raise LaunchError("%s: %s" % (argv[0], ex)) from None
        if r.returncode != 0:
            raise LaunchError("%s: %s" % (" ".join(argv[:3]), r.stderr.strip()
                                          or "exit status %d" % r.returncode))
        return r.stdout

    def _node_addresses(self):
        """{node: NodeAddr} of the tree's nodes (scontrol)."""
        from ClusterShell.NodeSet import NodeSet
        out = self._slurm(["scontrol", "-o", "show", "node", str(NodeSet.fromlist(self.nodes))])
        addrs = {}
        for line in out.splitlines():
            fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
            if "NodeName" in fields:
                addrs[fields["NodeName"]] = fields.get("NodeAddr") or fields["NodeName"]
        return {n: addrs.get(n, n) for n in self.nodes}

    def _listed_steps(self):
        """{step id: name} of this tree's steps that squeue lists."""
        out = self._slurm(["squeue", "-h", "-s", "-j", self.job_id, "-o", "%i|%j"])
        listed = {}
        for line in out.splitlines():
            sid, _, name = line.strip().partition("|")
            if name.startswith(self.prefix):
                listed[sid] = name
        return listed

    # -- start -------------------------------------------------------------------

    def _launch(self, name, nodes, args):
        """Start step `name`: `nine ARGS` on each of nodes, one task per node."""
        from ClusterShell.NodeSet import NodeSet
        if self._tmp is None:
            self._tmp = tempfile.mkdtemp(prefix="nine-slurm-%d-" % os.getpid())
        out = os.path.join(self._tmp, name + ".out")
        n = len(nodes)
        cmd = [self.srun, "--jobid=" + self.job_id, "--job-name=" + self.prefix + name,
               "--nodes=%d" % n, "--ntasks=%d" % n, "--ntasks-per-node=1",
               "--nodelist=" + str(NodeSet.fromlist(nodes)), "--overlap",
               "--kill-on-bad-exit=0", "--mpi=none", "--label", "--input=none", "--quiet",
               "sh", "-c", _WRAP, "nine-" + name, self.python, "-m", "nine"] + args
        env = dict(os.environ)
        if self.python_path:
            env["PYTHONPATH"] = self.python_path + (
                os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        die = _die_with_parent()

        def preexec():
            os.setpgid(0, 0)        # not in the terminal's foreground group
            if die is not None:
                die()
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=fd,
                                    stderr=fd, preexec_fn=preexec)
        except OSError as ex:
            raise LaunchError("cannot run %s: %s" % (self.srun, ex)) from None
        finally:
            os.close(fd)
        step = Step(name, list(nodes), proc, out)
        self.steps.append(step)
        return step

    def _wait(self, steps):
        """Wait until every task of steps listens; {node-or-member: address} per step."""
        deadline = time.monotonic() + self.start_timeout
        while True:
            pending, failed = [], []
            for s in steps:
                s.read()
                ready = s.serving()
                if len(ready) == len(s.nodes):
                    continue
                if s.proc.poll() is not None or s.exited:
                    gone = "srun exited with status %s" % s.proc.returncode \
                        if s.proc.poll() is not None else "; ".join(s.exited)
                    failed.append("%s (%s): %s:\n    %s" % (
                        s.name, ",".join(n for n in s.nodes if n not in ready), gone, s.why()))
                else:
                    pending.append(s)
            if failed:
                raise LaunchError("could not start:\n  " + "\n  ".join(failed))
            if not pending:
                return
            if time.monotonic() > deadline:
                raise LaunchError("not serving after %g s:\n  " % self.start_timeout
                                  + "\n  ".join("%s (%s):\n    %s" % (
                                      s.name, ",".join(n for n in s.nodes
                                                       if n not in s.serving()), s.why())
                                      for s in pending))
            time.sleep(0.1)

    def _mux_args(self, m, addrs):
        topo = self.topo
        first = m.level == 1
        if m.kind == "root":
            final = topo.final_root or (FINAL_LEAF_MUX if first else FINAL_UP)
        else:
            final = (topo.final_leaf_mux or FINAL_LEAF_MUX) if first else \
                (topo.final_mid or FINAL_UP)
        args = ["mux", "--final-text", final, "--child-aname", "nine" if first else ""]
        return args + child_args(m.children, addrs)

    def _common_args(self, port):
        args = ["--listen", "0.0.0.0:%d" % port, "--auth", self.topo.auth]
        if self.topo.aggregators:
            args += ["--aggregators", self.topo.aggregators]
        return args

    def start(self):
        """Start the tree; returns the root's address once it answers an attach.
        Raises LaunchError (call down() then: what started may still run)."""
        from ..final import FinalError, parse
        topo = self.topo
        for prog in (topo.final_leaf_mux, topo.final_mid, topo.final_root):
            if prog is not None:
                try:
                    parse(prog)
                except FinalError as ex:
                    raise LaunchError("FiNAL rules: %s" % ex) from None
        self._node_addr = self._node_addresses()
        args = ["serve"] + topo.leaf_args.split()
        if topo.leaf_export:
            args += ["--export", topo.leaf_export]
        # every step at once: the muxes start without their children's addresses and
        # are told them over 9P once all serve (one round of srun, whatever the depth)
        leaves = [m for m in self.members if m.kind == "leaf"]
        root = self.members[-1]
        muxes = [m for m in self.members if m.kind != "leaf" and m.host is not None]
        steps = [(self._launch("leaves", [m.host for m in leaves],
                               args + self._common_args(self.port)), leaves)]
        steps += [(self._launch(m.name, [m.host], self._mux_args(m, {})
                                + self._common_args(self.root_port if m is root else 0)),
                   [m]) for m in muxes]
        self._wait([s for s, _ in steps])
        addrs = {}
        for s, ms in steps:
            self._settle(s, ms, addrs)
        tell_children(muxes, addrs, self.start_timeout)
        if root.host is None:
            self._build_root(root, addrs)
        else:
            self.address = root.address
        self._wait_root()
        return self.address

    def _settle(self, step, members, addrs):
        """Record the addresses of members (leaves by node, a mux by name)."""
        ports = step.serving()
        for m in members:
            m.address = "%s:%d" % (self._node_addr[m.host], ports[m.host])
            addrs[m.name] = m.address

    def _build_root(self, root, addrs):
        from ..assembly import MuxConfig, build_mux
        topo = self.topo
        first = root.level == 1
        if topo.aggregators:
            from ..group.aggregate import load
            load(topo.aggregators)
        self.root = build_mux(MuxConfig(
            [(c, addrs[c]) for c in root.children],
            final_text=topo.final_root or (FINAL_LEAF_MUX if first else FINAL_UP),
            child_aname="nine" if first else "", name="root", auth=topo.root_auth))
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
            try:
                Client(self.address, connect_timeout=5).close()
                return
            except (OSError, ValueError) as ex:
                if time.monotonic() > deadline:
                    raise LaunchError("the root %s does not answer: %s" % (self.address, ex))
            gevent.sleep(0.1)       # (an in-process root serves meanwhile)

    def describe(self):
        """Lines saying where each server runs, and in which step."""
        steps = {s.name: s.step_id() for s in self.steps}
        lines = []
        for level in sorted({m.level for m in self.members}):
            ms = [m for m in self.members if m.level == level]
            if level == 0:
                lines.append("%-18s %s (step %s)" % ("leaves:", " ".join(
                    "%s=%s" % (m.name, m.address) for m in ms), steps.get("leaves")))
                continue
            kind = "root" if ms[0].kind == "root" else "muxes (level %d)" % level
            lines.append("%-18s %s" % (kind + ":", " ".join(
                "%s=%s (%s)" % (m.name, m.address, "this process" if m.host is None
                                else "on %s, step %s" % (m.host, steps.get(m.name)))
                for m in ms)))
        return "\n".join(lines)

    # -- down --------------------------------------------------------------------

    def down(self, wait=10.0):
        """End every step of the tree and confirm with squeue that none is left.
        Returns the lines of what was done; raises LaunchError naming the steps that
        may still run."""
        if self.root is not None:
            self.root.close()
            self.root = None
        report = []
        for s in self.steps:
            if s.proc.poll() is None:
                s.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and any(s.proc.poll() is None for s in self.steps):
            time.sleep(0.1)
        for s in self.steps:
            s.read()
            sid = s.step_id() or "not started"
            if s.proc.poll() is None:
                report.append("%s (step %s): srun still runs after SIGTERM" % (s.name, sid))
            else:
                report.append("%s (step %s): ended" % (s.name, sid))
        left = self._confirm(wait) if self.steps else {}
        for s in self.steps:
            if s.proc.poll() is None:
                s.proc.kill()       # its step is gone (confirmed): srun only lingers
                s.proc.wait()
        if left:
            raise LaunchError("may still run: " + ", ".join(
                "step %s (%s)" % (sid, name) for sid, name in sorted(left.items())))
        self.steps = []
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        return report

    def _confirm(self, wait):
        """Wait until squeue lists none of the tree's steps; scancel those left after
        `wait` seconds, and wait as long again.  Returns {step id: name} still listed."""
        cancelled = False
        deadline = time.monotonic() + wait
        while True:
            try:
                listed = self._listed_steps()
            except LaunchError as ex:
                if "Invalid job id" in str(ex):
                    return {}       # the allocation has ended, and every step with it
                raise
            if not listed:
                return {}
            if time.monotonic() > deadline:
                if cancelled:
                    return listed
                self._slurm(["scancel"] + sorted(listed))
                cancelled = True
                deadline = time.monotonic() + wait
            time.sleep(0.2)
