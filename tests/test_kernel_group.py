"""The distributed debugger through the Linux kernel's 9P client (issue 6).

examples/debugger.py runs the seed's debugger through the Python API; this is the
same through v9fs in the QEMU/TCG guest of interop/ (see interop/README.md), with
nothing but busybox's shell tools in the guest: examples/debugger.sh, sourced with
DBG_LIB=1, one guest check per step.

Host side: tests/progs/dbg.c compiled non-PIE (the addresses of step() and `value`
from nm, as examples/debugger.py does), `python -m nine tree` with 8 leaves serving
--proc under muxes of fanout 4 (the root -> 2 muxes -> 8 leaves; node1 also exports
a scratch directory as files/, for run_check's working directories), and 32 dbg
processes, process i (member pi) on leaf node(i mod 8 + 1) with seed i mod 3.

The guest mounts node1's scratch directory on /mnt (aname nodes/node1/files) and the
root of the tree (aname "", the merged name space with /groups) on /mnt/tree,
9p2000.L, cache=none, then:

- groups: mkdir /mnt/tree/groups/dbg-{ctl,mem,wait,regs}, one `ln -s
  ../../nodes/LEAF/proc/PID/KIND pK` per process in each; `ls` of a group lists the
  32 symlinks and ctl data errors partial relay status;
- stop: echo stop > dbg-ctl/data (every process's ctl says state=stopped);
- breakpoint: the byte at step() read as one class (equiv format=u8 at `seek STEP
  count 1`), then an int3 written with dd at file offset STEP of dbg-mem/data;
- run: exec 4< dbg-wait/data, echo start > dbg-ctl/data, cat <&4: every process
  reports `breakpoint STEP` (one equivalence class of 32);
- read: `seek VALUE count 8`, `agg equiv format=i64`, cat dbg-mem/data: the classes,
  which the host parses and compares with what every process holds, read on its own
  through a nine Client at the root (test_classes);
- abs_links: a group whose symlinks are absolute (/mnt/tree/nodes/...) reads the same
  classes; rmdir of the group (with its members) removes it;
- ownership: users alice and bob of the guest (each its own attach, access=user):
  alice's group (mkdir, ln -s, ctl as alice) shows uid 4001, 0755 and ctl 0644; bob reads
  its data (the members, status files, read as bob) but cannot write its ctl, add or
  remove members or rmdir it (the kernel refuses on the attributes the server gives);
  bob's own group of ctl files (root's, 0600) names each member `Permission denied`;
- resume: the byte back, `rip STEP` into dbg-regs/data, detach: the processes run on
  untraced (test_processes_after looks at them on the host);
- clean: rmdir of the groups;
- example: `sh /mnt/debugger.sh /mnt/tree STEP VALUE LEAF:PID...`, the whole example
  as a user runs it (the host copied it into node1's directory), a second session on
  the same processes.

    python -m pytest -q tests/test_kernel_group.py
    NINE_VM_KEEP=1 ...   keep the work directory (console and tree logs)
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from interop import vm  # noqa: E402
from nine.netwait import wait_for  # noqa: E402
sys.path.insert(0, str(ROOT / "tests"))
import vmhost  # noqa: E402

pytestmark = vmhost.PTRACE_VM_MARKS

N_PROCS = 32
N_LEAVES = 8
FANOUT = 4
N_CLASSES = 3
TREE_MNT = "/mnt/tree"
LEAVES = ["node%d" % (i + 1) for i in range(N_LEAVES)]
BAR = "-" * 15


def _load_debugger():
    """examples/debugger.py as a module (build, Target, start_targets, check)."""
    spec = importlib.util.spec_from_file_location("nine_example_debugger", ROOT / "examples" / "debugger.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# --------------------------------------------------------------------------
# the guest side: examples/debugger.sh (its steps) and the checks that call them
# (run_check: `set -e`, cwd /mnt/NAME in node1's scratch directory)

CHECKS_LIB = r'''
dbg_init "$TREE_MNT" "$STEP_ADDR" "$VALUE_ADDR" $TARGETS

proc_dir() { echo "$DBG_MNT/nodes/${1%%:*}/proc/${1##*:}"; }

# every_ctl STATE: each process's own ctl file says state=STATE
every_ctl() {
    for _t in $TARGETS; do
        _c=$(cat "$(proc_dir $_t)/ctl")
        case $_c in *"state=$1 "*) ;; *) fail "$_t: ctl says '$_c', want state=$1" ;; esac
    done
    echo "$DBG_N processes: state=$1"
}

check_mount_root() {
    mkdir -p "$TREE_MNT"
    mount -t 9p -o "trans=tcp,port=$NINE_PORT,version=9p2000.L,cache=none" 10.0.2.2 "$TREE_MNT"
    grep " $TREE_MNT " /proc/mounts
    ls "$TREE_MNT"
    expect_eq features "$(cat "$TREE_MNT/groups/features")" "nine-groups 1"
    expect_eq leaves "$(ls "$TREE_MNT/nodes" | tr '\n' ' ')" "$LEAVES "
}

check_targets() {
    for t in $TARGETS; do
        expect_eq "name of $t" "$(awk '{ print $1 }' "$(proc_dir $t)/status")" dbg
    done
    every_ctl untraced
}

check_groups() {
    dbg_groups
    g=$DBG_G/$DBG_P-mem
    ls "$g" | tr '\n' ' '
    echo
    want=$( (for f in ctl data errors partial relay status; do echo $f; done
             i=0; while [ $i -lt $DBG_N ]; do echo p$i; i=$((i + 1)); done) | sort | tr '\n' ' ')
    expect_eq "ls $g" "$(ls "$g" | sort | tr '\n' ' ')" "$want"
    expect_eq "symlinks in $g" "$(find "$g" -type l | wc -l)" "$DBG_N"
    t5=$(echo $TARGETS | cut -d' ' -f6)
    ls -l "$g/p5"
    expect_eq "readlink p5" "$(readlink "$g/p5")" "../../nodes/${t5%%:*}/proc/${t5##*:}/mem"
    [ -e "$g/p5" ] || fail "p5 does not resolve in the guest"
    cat "$g/ctl"
    expect_eq "ls $DBG_G" "$(ls "$DBG_G" | tr '\n' ' ')" \
        "clone $DBG_P-ctl $DBG_P-mem $DBG_P-regs $DBG_P-wait features "
}

check_stop() {
    dbg_stop
    every_ctl stopped
}

check_breakpoint() {
    dbg_break
}

check_run() {
    dbg_run
    every_ctl stopped
}

check_read() {
    dbg_read
}

check_abs_links() {
    g=$DBG_G/$DBG_P-abs
    mkdir "$g"
    i=0
    for t in $TARGETS; do
        ln -s "$(proc_dir $t)/mem" "$g/p$i"
        i=$((i + 1))
    done
    readlink "$g/p0"
    echo "seek $DBG_VALUE count 8" > "$g/ctl"
    echo "agg equiv format=i64" > "$g/ctl"
    got=$(cat "$g/data")
    echo "$got"
    cat "$g/status"
    expect_eq "classes through absolute symlinks" "$got" "$(cat "$DBG_STATE/classes")"
    rmdir "$g"
    [ ! -e "$g" ] || fail "$g still there after rmdir"
    if ls "$DBG_G" | grep -qx "$DBG_P-abs"; then fail "$DBG_P-abs still listed"; fi
}

check_ownership() {
    # two users of the guest, each on its own attach (access=user): a group is its
    # maker's; others read it (members read as themselves), cannot change or remove it
    mkdir -p /etc
    grep -q '^root:' /etc/passwd 2>/dev/null || echo 'root:x:0:0:root:/:/bin/sh' >> /etc/passwd
    echo 'alice:x:4001:4001:alice:/tmp:/bin/sh' >> /etc/passwd
    echo 'bob:x:4002:4002:bob:/tmp:/bin/sh' >> /etc/passwd
    g=$DBG_G/$DBG_P-own
    i=0
    links=""
    for t in $TARGETS; do
        [ $i -lt 4 ] || break
        links="$links ln -s ../../nodes/${t%%:*}/proc/${t##*:}/status $g/p$i;"
        i=$((i + 1))
    done
    su alice -c "mkdir $g && $links echo 'agg count' > $g/ctl" || fail "alice could not make $g"
    ls -ln "$g" | head -n 3
    expect_eq "owner of $g" "$(stat -c '%u %a' "$g")" "4001 755"
    expect_eq "owner of $g/ctl" "$(stat -c '%u %a' "$g/ctl")" "4001 644"
    expect_eq "bob reads alice's group" "$(su bob -c "cat $g/data")" "4"
    if su bob -c "echo 'agg concat' > $g/ctl" 2>/dev/null; then fail "bob wrote alice's ctl"; fi
    if su bob -c "ln -s ../../nodes/x $g/px" 2>/dev/null; then fail "bob added a member"; fi
    if su bob -c "rm $g/p0" 2>/dev/null; then fail "bob removed a member"; fi
    if su bob -c "rmdir $g" 2>/dev/null; then fail "bob removed alice's group"; fi
    expect_eq "ctl after bob" "$(head -n 1 "$g/ctl")" "agg count"
    # bob's own group of the processes' ctl files (0600, root's): bob may make it, and
    # reading it fails member by member (each is opened as bob)
    b=$DBG_G/$DBG_P-bob
    su bob -c "mkdir $b && ln -s ../../nodes/${t%%:*}/proc/${t##*:}/ctl $b/c0 && cat $b/data" \
        > /tmp/bob.out 2>&1 || true
    cat /tmp/bob.out
    grep -q "errors: c0: open: Permission denied" /tmp/bob.out || fail "bob read a ctl file"
    su alice -c "rmdir $g" || fail "alice could not remove her group"
    su bob -c "rmdir $b" || fail "bob could not remove his group"
    expect_eq "ls $DBG_G" "$(ls "$DBG_G" | grep -c -e '-own$' -e '-bob$' || true)" 0
}

check_resume() {
    dbg_resume
    every_ctl untraced
}

check_clean() {
    dbg_clean
    expect_eq "ls $DBG_G" "$(ls "$DBG_G" | tr '\n' ' ')" "clone features "
}

check_example() {
    # the whole example as a user runs it (the host put it into node1's directory,
    # which is /mnt): a second session on the same processes, groups ex-*
    DBG_LIB= DBG_PREFIX=ex DBG_STATE=/tmp/ex sh /mnt/debugger.sh "$TREE_MNT" "$STEP_ADDR" \
        "$VALUE_ADDR" $TARGETS > /tmp/ex.out 2>&1 || { cat /tmp/ex.out; fail "debugger.sh failed"; }
    cat /tmp/ex.out
    expect_eq "last line" "$(tail -n 1 /tmp/ex.out)" ok
    expect_eq "ls $DBG_G" "$(ls "$DBG_G" | tr '\n' ' ')" "clone features "
}

check_umount_root() {
    umount "$TREE_MNT"
    expect_eq mounts "$(grep -c " $TREE_MNT " /proc/mounts || true)" 0
}
'''

CHECKS = ["mount_root", "targets", "groups", "stop", "breakpoint", "run", "read", "abs_links",
          "ownership", "resume", "clean", "example", "umount_root"]

SCRIPT = "".join(f"run_check {c}\n" for c in CHECKS) + (
    # after a failed check: the tree's mount must not keep /mnt busy
    f"if grep -q ' {TREE_MNT} ' /proc/mounts; then umount {TREE_MNT} || umount -l {TREE_MNT}; fi\n")


def guest_lib() -> str:
    return "DBG_LIB=1\n" + (ROOT / "examples" / "debugger.sh").read_text() + CHECKS_LIB


def parse_classes(lines: list[str]) -> dict[int, set[str]]:
    """The classes debugger.sh's read step printed after `classes of value at ADDR:`,
    as the group service renders them (bar, `FOLDED (N)`, bar, value, a class):
    {value: members}."""
    from ClusterShell.NodeSet import NodeSet
    marks = [i for i, ln in enumerate(lines) if re.fullmatch(r"classes of value at 0x[0-9a-f]+:", ln)]
    assert len(marks) == 1, "want one read of value in:\n" + "\n".join(lines)
    out: dict[int, set[str]] = {}
    i = marks[0] + 1
    while i + 3 < len(lines) and lines[i] == BAR:
        assert lines[i + 2] == BAR, lines[i:i + 4]
        m = re.fullmatch(r"(\S+) \((\d+)\)", lines[i + 1])
        assert m and re.fullmatch(r"-?\d+", lines[i + 3]), lines[i:i + 4]
        members = set(NodeSet(m.group(1)))
        assert len(members) == int(m.group(2)), lines[i + 1]
        value = int(lines[i + 3])
        assert value not in out, f"class {value} shown twice"
        out[value] = members
        i += 4
    return out


# --------------------------------------------------------------------------
# the host side

_ptrace_ok = vmhost.ptrace_ok
_proc_field = vmhost.proc_field


def _peek8(pid: int, addr: int) -> int:
    return vmhost.peek8(pid, addr, signed=True)


TOPOLOGY = """[tree]
fanout = {fanout}
leaf-args = --proc

[leaves]
{leaves}
"""


class Run:
    """Compile dbg.c, start the tree and the 32 targets, boot the guest once."""

    def __init__(self, work: Path):
        self.work = work
        self.error = None
        self.result: vm.GuestResult | None = None
        self.tree = None
        self.tree_log = work / "tree.log"
        self.targets = []
        self.seconds = 0.0
        self.dbg = _load_debugger()

    def start_tree(self):
        export = self.work / "export"
        export.mkdir()
        leaves = "\n".join(f"{n} = local:{export}" if n == "node1" else f"{n} = local" for n in LEAVES)
        topo = self.work / "topology.ini"
        topo.write_text(TOPOLOGY.format(fanout=FANOUT, leaves=leaves))
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        with open(self.tree_log, "wb") as log:
            # -v: the leaves' and muxes' stderr goes to the log too; a session of its own,
            # so that stop() ends every process of the tree
            self.tree = subprocess.Popen(
                [sys.executable, "-m", "nine", "-v", "tree", "--topology", str(topo),
                 "--listen", "127.0.0.1:0", "--no-auth"],   # the kernel cannot Tauth
                cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        def started():
            m = re.search(r"^nine tree: .* root on 127\.0\.0\.1:(\d+)$", self.log(), re.M)
            if m and re.search(r"^muxes \(level 1\):.*$", self.log(), re.M):
                return m
            if self.tree.poll() is not None:
                raise RuntimeError(f"nine tree exited with {self.tree.returncode}:\n{self.log()}")
            return None
        try:
            m = wait_for(started, 90, "nine tree started", interval=0.1)
        except TimeoutError as e:
            raise RuntimeError(f"{e}:\n{self.log()}") from None
        self.port = int(m.group(1))
        self.addr = f"127.0.0.1:{self.port}"

    def start(self):
        vm.ensure_initramfs()  # the kernel: a VMError here means the host cannot boot it
        exe, syms = self.dbg.build(str(self.work))
        self.step_addr, self.value_addr = syms["step"], syms["value"]
        self.iter_addr = syms["iterations"]
        self.start_tree()
        shutil.copy(ROOT / "examples" / "debugger.sh", self.work / "export" / "debugger.sh")
        self.targets = self.dbg.start_targets(exe, N_PROCS, LEAVES, N_CLASSES)
        for t in self.targets:
            assert (t.step_addr, t.value_addr) == (self.step_addr, self.value_addr), t.label
        env = {"TREE_MNT": TREE_MNT, "STEP_ADDR": "%#x" % self.step_addr,
               "VALUE_ADDR": "%#x" % self.value_addr, "LEAVES": " ".join(LEAVES),
               "TARGETS": " ".join(f"{t.leaf}:{t.pid}" for t in self.targets)}
        t0 = time.monotonic()
        self.result = vm.run_guest(self.port, "version=9p2000.L,cache=none,aname=nodes/node1/files",
                                   SCRIPT, lib=guest_lib(), env=env,
                                   timeout=float(os.environ.get("NINE_VM_TIMEOUT", "900")),
                                   check_timeout=180, log_path=self.work / "console.log")
        self.seconds = time.monotonic() - t0

    def log(self) -> str:
        try:
            return self.tree_log.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self):
        for t in self.targets:
            t.kill()
        if self.tree is not None and self.tree.poll() is None:
            # SIGINT first: `nine tree` then stops its children and removes its scratch
            # directory itself (SIGTERM would leave that behind)
            self.tree.send_signal(signal.SIGINT)
            try:
                self.tree.wait(10)
            except subprocess.TimeoutExpired:
                pass
        if self.tree is not None:
            # then whatever is left of its session (its leaves and muxes)
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(self.tree.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.tree.wait(10)
                    break
                except subprocess.TimeoutExpired:
                    pass


@pytest.fixture(scope="module")
def run():
    yield from vmhost.run_fixture(Run, "nine-vm-group-", skip_unbootable=True)


def _get(run) -> vm.GuestResult:
    return vmhost.guest_result(run, "tree")


_tail = vmhost.tail


def test_tree(run):
    """The tree: 8 leaves under 2 muxes under the root."""
    _get(run)
    log = run.log()
    m = re.search(r"^nine tree: (\d+) leaves", log, re.M)
    assert m and m.group(1) == str(N_LEAVES), log[:2000]
    assert re.search(r"^muxes \(level 1\):\s+mux1-0=\S+ mux1-1=\S+$", log, re.M), log[:2000]


def test_boot(run):
    """The guest booted, mounted, ran every check, unmounted and powered off."""
    vmhost.check_booted(_get(run), CHECKS, run.seconds)


@pytest.mark.parametrize("check", CHECKS)
def test_check(run, check):
    vmhost.check_result(_get(run), check)


@pytest.mark.parametrize("check", ["read", "example"])
def test_classes(run, check):
    """The classes the guest read through the group (in the read step, and in the run
    of the whole example) are the values the processes hold (each read on its own
    through a nine Client at the root): {seed * 1000 + 7: the members started with
    that seed}."""
    r = _get(run)
    res = r.checks.get(check)
    assert res is not None and res.passed, f"the guest's {check} failed"
    classes = parse_classes(res.output)
    print(classes)
    from nine.client import Client
    c = Client(run.addr)
    try:
        good, held = run.dbg.check(c, run.targets, classes)
    finally:
        c.close()
    want = {}
    for t in run.targets:
        want.setdefault(t.seed * 1000 + 7, set()).add(t.label)
    assert held == want
    assert good, f"the guest read {classes}, the processes hold {held}"
    assert len(classes) == N_CLASSES


def test_wait_events(run):
    """The group read of the wait files: one class, every process at step()."""
    r = _get(run)
    res = r.checks.get("run")
    assert res is not None and res.passed, "the guest's run failed"
    i = res.output.index(BAR)
    assert res.output[i:i + 4] == [BAR, f"p[0-{N_PROCS - 1}] ({N_PROCS})", BAR,
                                   "breakpoint %#x" % run.step_addr], res.detail


def test_processes_after(run):
    """The processes outlived the session: running, untraced, calling step() again
    (the int3 is gone, rip was rewound), `value` holding their class."""
    _get(run)
    a = {t.pid: _peek8(t.pid, run.iter_addr) for t in run.targets if t.p.poll() is None}
    for t in run.targets:
        assert t.p.poll() is None, f"{t.label} (pid {t.pid}) exited with {t.p.returncode}"
        state = _proc_field(t.pid, "State")
        assert state[:1] in ("R", "S"), f"{t.label}: State {state}"
        assert _proc_field(t.pid, "TracerPid") == "0", f"{t.label}: still traced"
        wait_for(lambda: _peek8(t.pid, run.iter_addr) > a[t.pid], 5, f"{t.label}: step() called again")
        assert _peek8(t.pid, run.iter_addr) > a[t.pid] > 0, f"{t.label}: step() is not called"
        assert _peek8(t.pid, run.value_addr) == t.seed * 1000 + 7, t.label


def test_server_after(run):
    """The tree is still up and logged no traceback."""
    _get(run)
    assert run.tree.poll() is None, f"tree exited with {run.tree.returncode}\n{run.log()[-3000:]}"
    assert "Traceback" not in run.log(), run.log()[-3000:]


def test_error_replies(run):
    """No request of the guest was answered with an unexpected error."""
    vmhost.check_error_replies(_get(run))
