"""nine tree --slurm (nine.launch.slurm) against a real Slurm: the test starts
slurmctld and three slurmd (Slurm's multiple-slurmd mode: nodes n1-n3 on this machine,
each slurmd on a port of its own, all with NodeAddr 127.0.0.1) from a slurm.conf in a
temporary directory, with MUNGE from a munged of the test's own (tests/munged.py;
Slurm's AuthInfo=socket= names its socket, so the machine's /run stays untouched).
Inside allocations, the tree comes up with one leaf per node, the root lists every
node, a group read gathers a file of every node, and once the tree stops squeue lists
none of its steps; a start that fails on some nodes says why and leaves no step either.
Needs root (slurmd starts tasks as their user) and Debian's slurm-wlm 22.05 and munge.
"""

import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile

import pytest

from conftest import ENV_ROOT
from munged import Munged
from nine.launch.slurm import SlurmTree, allocation
from nine.netwait import free_port, scaled, wait_for, wait_port

NODES = ["n1", "n2", "n3"]
DAEMONS = ("slurmctld", "slurmd", "salloc", "srun", "squeue", "scancel", "scontrol",
           "munged")

CONF = """ClusterName=ninetest
SlurmctldHost={host}
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={socket}
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool/%n
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd-%n.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
MpiDefault=none
ReturnToService=2
KillWait=5
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
{nodes}
PartitionName=debug Nodes={nodeset} Default=YES MaxTime=INFINITE State=UP
"""


def _tail(path, lines=8):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


class Slurm:
    """slurmctld -D and one slurmd -D -N NODE per node, on this machine (see the
    module's text); run() runs a Slurm command against it; stop() cancels every job,
    ends the daemons by their PIDs and removes the directory."""

    def __init__(self, munged, nodes=NODES):
        self.nodes = nodes
        self.dir = tempfile.mkdtemp(prefix="nine-slurm-test-")
        self.procs = []
        host = socket.gethostname().split(".")[0]
        os.makedirs(os.path.join(self.dir, "state"))
        for n in nodes:
            os.makedirs(os.path.join(self.dir, "spool", n))
        lines = ["NodeName=%s NodeHostname=%s NodeAddr=127.0.0.1 Port=%d CPUs=1 State=UNKNOWN"
                 % (n, host, free_port()) for n in nodes]
        self.conf = os.path.join(self.dir, "slurm.conf")
        with open(self.conf, "w") as f:
            f.write(CONF.format(host=host, ctld_port=free_port(), slurmd_port=free_port(),
                                socket=munged.socket, dir=self.dir, nodes="\n".join(lines),
                                nodeset="n[1-%d]" % len(nodes)))
        # the commands see this cluster only, whatever Slurm job runs the tests
        self.env = {k: v for k, v in ENV_ROOT.items() if not k.startswith("SLURM_")}
        self.env["SLURM_CONF"] = self.conf

    def _daemon(self, argv, log):
        with open(os.path.join(self.dir, log), "ab") as f:
            self.procs.append(subprocess.Popen(argv, env=self.env, stdin=subprocess.DEVNULL,
                                               stdout=f, stderr=f))

    def start(self):
        """Start the daemons; returns None once every node is idle, else why not (the
        daemons' last words)."""
        self._daemon(["slurmctld", "-D"], "slurmctld.out")
        for n in self.nodes:
            self._daemon(["slurmd", "-D", "-N", n], "slurmd-%s.out" % n)
        try:
            wait_for(self._idle, 30, "%d idle Slurm nodes" % len(self.nodes), interval=0.3)
            return None
        except (TimeoutError, RuntimeError) as ex:
            logs = ["slurmctld.out", "slurmctld.log"] + [
                "slurmd-%s.%s" % (n, x) for n in self.nodes[:1] for x in ("out", "log")]
            return "%s\n%s" % (ex, "".join("--- %s\n%s" % (log, _tail(os.path.join(
                self.dir, log))) for log in logs))

    def _idle(self):
        for p in self.procs:
            if p.poll() is not None:
                raise RuntimeError("%s exited with %d" % (" ".join(p.args), p.returncode))
        r = self.run("sinfo", "-h", "-N", "-o", "%N %t")
        return sorted(line.split()[0] for line in r.stdout.splitlines()
                      if line.split()[1:] == ["idle"]) == self.nodes

    def run(self, *argv, env=None, timeout=120):
        return subprocess.run(list(argv), env=env or self.env, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=scaled(timeout))

    def allocate(self, n):
        """salloc --no-shell: (job id, the environment of a process inside it)."""
        r = self.run("salloc", "--no-shell", "-N", str(n), "-J", "nine-test")
        m = re.search(r"Granted job allocation (\d+)", r.stderr)
        assert m, r.stderr
        job = m.group(1)
        nodes = self.run("squeue", "-h", "-j", job, "-o", "%N").stdout.strip()
        return job, dict(self.env, SLURM_JOB_ID=job, SLURM_JOB_NODELIST=nodes)

    def steps(self, job):
        """[(step id, name)] of job's steps that squeue lists."""
        out = self.run("squeue", "-h", "-s", "-j", job, "-o", "%i %j").stdout
        return [tuple(line.split()) for line in out.splitlines() if line.strip()]

    def stop(self):
        jobs = self.run("squeue", "-h", "-o", "%i").stdout.split()
        if jobs:
            self.run("scancel", *jobs)
            try:
                wait_for(lambda: not self.run("squeue", "-h").stdout.strip(), 20,
                         "Slurm jobs to end", interval=0.3)
            except TimeoutError:
                pass
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def slurm():
    missing = [d for d in DAEMONS if shutil.which(d) is None]
    if missing:
        pytest.skip("not installed: %s (apt-get install slurm-wlm munge)" % " ".join(missing))
    if os.geteuid() != 0:
        pytest.skip("slurmd needs root here (it starts the tasks as their user)")
    munged = Munged().start()
    cluster = Slurm(munged)
    try:
        why = cluster.start()
        if why is not None:
            pytest.skip("Slurm does not run here: " + why)
        yield cluster
    finally:
        cluster.stop()
        munged.stop()


def nine_args(*args):
    """`nine tree --slurm ...` with the session's key for every server."""
    return [sys.executable, "-m", "nine", "tree", "--slurm", "--auth",
            "key=" + os.environ["NINE_KEY"]] + list(args)


def test_allocation_from_the_environment():
    job, nodes = allocation({"SLURM_JOB_ID": "42", "SLURM_JOB_NODELIST": "n[1-3,10],io7"})
    assert job == "42" and nodes == ["io7", "n1", "n2", "n3", "n10"]
    with pytest.raises(ValueError, match="not inside a Slurm allocation"):
        allocation({"SLURM_JOB_ID": "42"})
    with pytest.raises(ValueError, match=r"inside job step 42\.0, which has n1 of"):
        allocation({"SLURM_JOB_ID": "42", "SLURM_JOB_NODELIST": "n1", "SLURM_STEP_ID": "0",
                    "SLURM_NODELIST": "n[1-3]"})
    with pytest.raises(ValueError, match="root's node"):
        SlurmTree(["n1", "n2"], job_id="42", root_host="n3")


def test_tree_in_an_allocation(slurm):
    """The tree as steps of an allocation: three leaves, two muxes (fanout 2), the root
    in the launcher; ls and a group read through the root; SIGTERM ends every step."""
    job, env = slurm.allocate(3)
    port = free_port()
    addr = "127.0.0.1:%d" % port
    p = subprocess.Popen(nine_args("--fanout", "2", "--port", "0", "--listen", addr),
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_port(port, timeout=90, proc=p)
        names = sorted(name for _, name in slurm.steps(job))
        prefix = "nine-%d-" % p.pid
        assert names == [prefix + s for s in ("leaves", "mux1-0", "mux1-1")]
        r = slurm.run(sys.executable, "-m", "nine", "ls", "-a", addr, "/nodes")
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == NODES
        r = slurm.run(sys.executable, "-m", "nine", "gread", "-a", addr, "/host/hostname",
                      "--agg", "equiv")
        assert r.returncode == 0, r.stderr
        hostname = socket.gethostname()
        assert "n[1-3] (3)" in r.stdout and "hostname %s" % hostname in r.stdout, r.stdout
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=scaled(60))
        assert p.returncode == 0, err
        assert "3 leaves in Slurm job %s" % job in out
        assert re.search(r"leaves: +n1=127\.0\.0\.1:\d+ n2=\S+ n3=\S+ \(step %s\.\d+\)" % job,
                         out), out
        assert slurm.steps(job) == []
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        slurm.run("scancel", job)


def test_a_killed_launcher_leaves_no_step(slurm):
    """SIGKILL of `nine tree --slurm`: each srun gets SIGTERM from the kernel (parent
    death signal) and ends its step."""
    job, env = slurm.allocate(2)
    port = free_port()
    p = subprocess.Popen(nine_args("--port", "0", "--listen", "127.0.0.1:%d" % port),
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_port(port, timeout=90, proc=p)
        assert len(slurm.steps(job)) == 1
        p.kill()
        p.wait()
        wait_for(lambda: slurm.steps(job) == [], 30, "the steps to end", interval=0.3)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        slurm.run("scancel", job)
        for d in glob.glob(os.path.join(tempfile.gettempdir(), "nine-slurm-%d-*" % p.pid)):
            shutil.rmtree(d)        # its srun outputs, which only down() removes


def test_salloc_runs_the_tree(slurm):
    """`salloc -N 3 nine tree --slurm --once`, as a user types it: up and down."""
    r = slurm.run("salloc", "-N", "3", "-J", "nine-once",
                  *nine_args("--port", "0", "--listen", "127.0.0.1:0", "--once"))
    assert r.returncode == 0, r.stderr
    assert re.search(r"3 leaves in Slurm job \d+, 1 levels of muxes", r.stdout), r.stdout
    assert "root=127.0.0.1:" in r.stdout


def test_a_failed_start_leaves_no_step(slurm):
    """One port for every leaf, and all nodes on one machine: two leaves cannot listen;
    the launcher names them and the reason, ends the step, and exits 1."""
    job, env = slurm.allocate(3)
    try:
        r = slurm.run(*nine_args("--port", str(free_port()), "--listen", "127.0.0.1:0"),
                      env=env)
        assert r.returncode == 1, (r.stdout, r.stderr)
        assert "could not start" in r.stderr and "Address already in use" in r.stderr, r.stderr
        assert slurm.steps(job) == []
    finally:
        slurm.run("scancel", job)
