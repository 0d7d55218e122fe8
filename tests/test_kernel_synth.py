"""The synthetic trees (proc, exec, host) through the Linux kernel's 9P client.

One QEMU/TCG boot (the interop/ harness, see interop/README.md) against
`python -m nine serve --proc --exec --host --export DIR`: the guest mounts the
export on /mnt (so that run_check has its working directories) and the anames
proc, exec and host on /mnt/proc, /mnt/exec, /mnt/host (cache=none), then uses
nothing but busybox's sh, echo, cat, dd, od, sed, timeout on them.  Each guest check
is its own test, test_check[NAME]; the host then looks at the traced process
itself (test_host_process_after) and at the server (test_server_after).

- proc: the breakpoint cycle of tests/test_proc.py on a host process (counter.c,
  compiled and started here; the addresses of `counter` and `tick` come from
  nm): stop, peek the counter through mem, poke an int3 at tick, start, read the
  `breakpoint ADDR` event, rip = ADDR+1 in regs, restore the byte, rewind rip by
  writing regs, step, start, and the counter counts again.
- exec: an Xcpu-style session (as the VM test of tests/test_exec.py, here on the
  server the CLI builds, with all three anames mounted side by side).
- flush: Ctrl-C (SIGINT) on a `cat` blocked in a read of proc/PID/wait, of an
  exec session's wait and of its stdout: the kernel sends Tflush (counted by the
  9p tracepoints), cat ends within about a second, and the process and the
  session still work afterwards.
- host: load parses, proc/cpuinfo's first line is the host's.

Two facts of the Linux client shape the guest commands:
- With cache=none, v9fs satisfies a read(2) by sending Treads until the user's
  buffer is full or a Tread returns 0 bytes (net/9p/client.c p9_client_read).
  proc/PID/wait gives one event per Tread and then blocks until the next one, so
  `cat wait` or `head -n1 wait` never return while the process stays stopped:
  the guest reads an event with `dd bs=LEN count=1`, LEN being the length of the
  expected line (exec's wait is fine: EOF follows its one line).
- The last clunk of the process's control files releases it unless it is held
  stopped: after `echo start > ctl` with nothing else open, a breakpoint hit after
  the release is a plain SIGTRAP that kills the process (it races with the clunk).
  The guest holds wait open (`exec 4< wait`) from before the start until the event.
- A non-interactive shell starts background commands with SIGINT ignored, so
  `cat wait & kill -INT $!` cannot interrupt it; `timeout -s INT 1 cat wait` runs
  cat in the foreground and sends it SIGINT after a second (a Ctrl-C).

    python -m pytest -q tests/test_kernel_synth.py
    NINE_VM_KEEP=1 ...   keep the work directory (console and server logs)
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from interop import vm  # noqa: E402
from nine.netwait import ServerExited, free_port, wait_for, wait_port  # noqa: E402
sys.path.insert(0, str(ROOT / "tests"))
import vmhost  # noqa: E402

pytestmark = vmhost.PTRACE_VM_MARKS

# --------------------------------------------------------------------------
# the guest side: checks (run by run_check, `set -e`, cwd /mnt/NAME on the export)

LIB = r'''
P=/mnt/proc/$PID
now() { cut -d' ' -f1 /proc/uptime; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
hex() { printf '0x%x' $(($1)); }
# the 8-byte long at address $1 (decimal), the byte at $1 (3 octal digits), write the
# byte given in octal $2 at $1: mem's file offset is the virtual address
peek8() { dd if=$P/mem bs=8 count=1 iflag=skip_bytes skip=$(($1)) 2>/dev/null | od -An -td8 | tr -d ' \n'; }
peek1() { dd if=$P/mem bs=1 count=1 iflag=skip_bytes skip=$(($1)) 2>/dev/null | od -An -to1 | tr -d ' \n'; }
poke1() { printf "\\$2" | dd of=$P/mem bs=1 oflag=seek_bytes seek=$(($1)) conv=notrunc 2>/dev/null; }
reg() { sed -n "s/^$1 //p" $P/regs; }
state() { awk '{ print $3 }' $P/status; }  # Plan 9 status: padded fields
ctl_has() {
    _c=$(cat $P/ctl)
    echo "ctl: $_c"
    case $_c in *"$1"*) ;; *) fail "ctl says '$_c', want $1" ;; esac
}
counting() {  # the counter moves (and is at least $1)
    _a=$(peek8 $CADDR); sleep ${2:-1}; _b=$(peek8 $CADDR)
    echo "counter: $1 -> $_a -> $_b"
    [ -n "$_a" ] && [ -n "$_b" ] && [ "$_a" -ge "$1" ] && [ "$_b" -gt "$_a" ] || fail "not counting"
}
# interrupt FILE: `cat FILE` blocks; SIGINT after 1 s must end it (rc 130, no output)
# within 3 s in all
interrupt() {
    _t0=$(now)
    _rc=0
    # (cd / and 3<&-: timeout's watcher processes outlive cat by up to a second; they
    # must not keep the mount busy nor the exec session's clone open)
    (cd / && exec timeout -s KILL 10 timeout -s INT 1 cat "$1" 3<&- >/tmp/int.out 2>&1) || _rc=$?
    _el=$(since $_t0)
    echo "cat $1: rc $_rc after ${_el}s, output '$(cat /tmp/int.out)'"
    expect_eq "cat's status (killed by SIGINT)" "$_rc" 130
    expect_eq "cat's output" "$(cat /tmp/int.out)" ""
    awk "BEGIN { exit !($_el < 3) }" || fail "cat took ${_el}s to end"
}

check_mount_anames() {
    for a in proc exec host; do
        mkdir -p /mnt/$a
        mount -t 9p -o "trans=tcp,port=$NINE_PORT,version=9p2000.L,aname=$a,cache=none" 10.0.2.2 /mnt/$a
    done
    grep ' /mnt/' /proc/mounts
    expect_eq mounts "$(grep -c ' /mnt/[a-z]* 9p ' /proc/mounts)" 3
}

check_proc_listed() {
    ls /mnt/proc | grep -qx "$PID" || fail "$PID not in /mnt/proc"
    for f in ctl mem regs note wait status cmdline maps task; do
        [ -e $P/$f ] || fail "no $P/$f"
    done
    cat $P/status
    expect_eq name "$(awk '{ print $1 }' $P/status)" counter
    expect_eq ctl "$(cat $P/ctl)" "pid=$PID state=untraced focus=$PID hang=0 threads=0"
}

check_proc_stop() {
    echo stop > $P/ctl
    ctl_has state=stopped
    expect_eq state "$(state)" Stopped
    c1=$(peek8 $CADDR)
    sleep 0.3
    c2=$(peek8 $CADDR)
    echo "counter: $c1, 0.3 s later $c2"
    [ -n "$c1" ] && [ "$c1" -gt 0 ] || fail "counter unreadable: '$c1'"
    expect_eq "counter while stopped" "$c2" "$c1"
    echo $c1 > /tmp/c1
}

check_proc_poke() {
    orig=$(peek1 $FADDR)
    echo "byte at $FADDR: 0$orig"
    [ -n "$orig" ] && [ "$orig" != 314 ] || fail "bad original byte '$orig'"
    echo $orig > /tmp/orig
    poke1 $FADDR 314
    expect_eq "byte after the poke" "$(peek1 $FADDR)" 314
}

check_proc_breakpoint() {
    # plain shell: the int3 written through mem keeps the process attached after the
    # clunk of ctl, and a read of wait ends after one event (head gets its line at once)
    echo start > $P/ctl
    want="breakpoint $(hex $FADDR)"
    ev=$(timeout 20 head -n1 $P/wait) || fail "no event in 20 s"
    expect_eq event "$ev" "$want"
    expect_eq rip "$(reg rip)" "$(hex $((FADDR + 1)))"
    expect_eq state "$(state)" Stopped
    ctl_has state=stopped
    c=$(peek8 $CADDR)
    sleep 0.3
    expect_eq "counter at the breakpoint" "$(peek8 $CADDR)" "$c"
    [ "$c" -ge "$(cat /tmp/c1)" ] || fail "counter went back: $c"
    grep -v '^rip ' $P/regs > /tmp/regs1
}

check_proc_restore() {
    poke1 $FADDR $(cat /tmp/orig)
    expect_eq "byte after the restore" "$(peek1 $FADDR)" "$(cat /tmp/orig)"
    echo "rip $FADDR" > $P/regs
    expect_eq rip "$(reg rip)" "$(hex $FADDR)"
    grep -v '^rip ' $P/regs > /tmp/regs2
    cmp /tmp/regs1 /tmp/regs2 || fail "other registers changed"
}

check_proc_step() {
    echo step > $P/ctl
    rip=$(reg rip)
    echo "rip after the step: $rip"
    [ $((rip)) -gt $((FADDR)) ] && [ $((rip)) -le $((FADDR + 15)) ] ||
        fail "rip $rip is not one instruction past $FADDR"
    expect_eq state "$(state)" Stopped
}

check_proc_resume() {
    echo start > $P/ctl
    counting $(cat /tmp/c1)
    ctl_has state=running     # still attached: a breakpoint was planted through mem
    echo detach > $P/ctl
    ctl_has state=untraced
    counting $(cat /tmp/c1)
}

check_flush_proc_wait() {
    interrupt $P/wait
    echo stop > $P/ctl
    ctl_has state=stopped
    c=$(peek8 $CADDR)
    sleep 0.3
    expect_eq "counter while stopped" "$(peek8 $CADDR)" "$c"
    echo start > $P/ctl
    counting $c 0.5
    ctl_has state=untraced
}

check_exec_session() {
    exec 3< /mnt/exec/clone
    read n <&3
    d=/mnt/exec/$n
    echo "session $n"
    echo "exec sh -c 'read x; echo got \$x; exit 3'" > $d/ctl
    echo hello > $d/stdin
    expect_eq stdout "$(cat $d/stdout)" "got hello"
    expect_eq wait "$(cat $d/wait)" "exited 3"
    expect_eq status "$(cat $d/status)" "exited 3"
    exec 3<&-
    [ ! -e $d ] || fail "session $n still there"
}

check_flush_exec() {
    exec 3< /mnt/exec/clone
    read n <&3
    d=/mnt/exec/$n
    echo "exec sh -c 'read x; echo got \$x; exit 4'" > $d/ctl
    interrupt $d/wait
    interrupt $d/stdout
    case $(cat $d/status) in "running "*) ;; *) fail "status: $(cat $d/status)" ;; esac
    echo hi > $d/stdin
    expect_eq stdout "$(cat $d/stdout)" "got hi"
    expect_eq wait "$(cat $d/wait)" "exited 4"
    exec 3<&-
}

check_host_load() {
    cat /mnt/host/load
    expect_eq keys "$(cut -d' ' -f1 /mnt/host/load | tr '\n' ' ')" "load1 load5 load15 "
    expect_eq "well-formed lines" "$(grep -cE '^load(1|5|15) [0-9]+\.[0-9][0-9]$' /mnt/host/load)" 3
}

check_host_cpuinfo() {
    expect_eq "first line" "$(head -n 1 /mnt/host/proc/cpuinfo)" "$HOST_CPUINFO1"
}

check_umount_anames() {
    for a in proc exec host; do
        umount /mnt/$a
    done
    expect_eq mounts "$(grep -c ' /mnt/[a-z]* 9p ' /proc/mounts || true)" 0
}
'''

CHECKS = ["mount_anames", "proc_listed", "proc_stop", "proc_poke", "proc_breakpoint",
          "proc_restore", "proc_step", "proc_resume", "flush_proc_wait", "exec_session",
          "flush_exec", "host_load", "host_cpuinfo", "umount_anames"]
#: checks whose interrupted reads must have made the kernel send a Tflush
FLUSHES = {"flush_proc_wait": 1, "flush_exec": 2}


# --------------------------------------------------------------------------
# the host side

_ptrace_ok = vmhost.ptrace_ok
_proc_field = vmhost.proc_field


def _peek8(pid: int, addr: int) -> int:
    return vmhost.peek8(pid, addr, signed=False)


class Run:
    """Compile and start counter.c, start the server, boot the guest once."""

    def __init__(self, work: Path):
        self.work = work
        self.error = None
        self.result: vm.GuestResult | None = None
        self.counter = None
        self.server = None
        self.server_log = work / "server.log"
        self.seconds = 0.0

    def start(self):
        exe = self.work / "counter"
        subprocess.run(["gcc", "-O1", "-g", "-no-pie", "-pthread", "-o", str(exe),
                        str(ROOT / "tests" / "progs" / "counter.c")], check=True)
        syms = {}
        for line in subprocess.run(["nm", str(exe)], check=True, capture_output=True,
                                   text=True).stdout.splitlines():
            parts = line.split()
            if len(parts) == 3:
                syms[parts[2]] = int(parts[0], 16)
        self.caddr, self.faddr = syms["counter"], syms["tick"]
        self.counter = subprocess.Popen([str(exe)], stdout=subprocess.PIPE)
        first = self.counter.stdout.readline().split()
        self.pid = int(first[0])
        assert (int(first[1], 16), int(first[2], 16)) == (self.caddr, self.faddr), first
        export = self.work / "export"
        export.mkdir()
        self.port = free_port()
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        with open(self.server_log, "wb") as log:
            self.server = subprocess.Popen(
                [sys.executable, "-m", "nine", "serve", "--listen", f"127.0.0.1:{self.port}",
                 "--proc", "--exec", "--host", "--export", str(export), "-q",
                 # the kernel mounts with trans=tcp: no Tauth (the authenticated path is
                 # tests/test_kernel_auth.py); its first attach claims `nobody`, and
                 # without authentication proc and exec serve the server's own user
                 # only, unless everyone is squashed to one user: root, as the checks
                 # stop, poke and run processes as root
                 "--no-auth", "--squash", "root"],
                cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_port(self.port, 30, proc=self.server)
        except (ServerExited, TimeoutError) as e:
            raise RuntimeError(f"{e}:\n{self.log()}") from None
        with open("/proc/cpuinfo") as f:
            cpu1 = f.readline().rstrip("\n")
        env = {"PID": str(self.pid), "CADDR": "%#x" % self.caddr, "FADDR": "%#x" % self.faddr,
               "HOST_CPUINFO1": cpu1}
        script = "".join(f"run_check {c}\n" for c in CHECKS)
        t0 = time.monotonic()
        self.result = vm.run_guest(self.port, "version=9p2000.L", script, lib=LIB, env=env,
                                   timeout=float(os.environ.get("NINE_VM_TIMEOUT", "600")),
                                   check_timeout=60, log_path=self.work / "console.log")
        self.seconds = time.monotonic() - t0

    def log(self) -> str:
        try:
            return self.server_log.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self):
        if self.counter and self.counter.poll() is None:
            self.counter.kill()
            self.counter.wait(10)
        if self.server and self.server.poll() is None:
            self.server.terminate()
            try:
                self.server.wait(10)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()


@pytest.fixture(scope="module")
def run():
    yield from vmhost.run_fixture(Run, "nine-vm-synth-")


def _get(run) -> vm.GuestResult:
    return vmhost.guest_result(run, "server")


_tail = vmhost.tail


def test_boot(run):
    """The guest booted, mounted, ran every check, unmounted and powered off."""
    vmhost.check_booted(_get(run), CHECKS, run.seconds)


@pytest.mark.parametrize("check", CHECKS)
def test_check(run, check):
    reqs = vmhost.check_result(_get(run), check)
    if check in FLUSHES:
        assert reqs.get("Tflush", 0) >= FLUSHES[check], f"no Tflush sent: {reqs}"


def test_host_process_after(run):
    """The controlled process outlived the session: running, counting, not traced."""
    _get(run)
    pid = run.pid
    assert run.counter.poll() is None, f"counter exited with {run.counter.returncode}"
    state = _proc_field(pid, "State")
    assert state[:1] in ("R", "S"), f"State: {state}"
    assert _proc_field(pid, "TracerPid") == "0", "still traced"
    a = _peek8(pid, run.caddr)
    wait_for(lambda: _peek8(pid, run.caddr) > a, 5, "the counter to count on")
    b = _peek8(pid, run.caddr)
    assert b > a > 0, (a, b)


def test_server_after(run):
    """The server is still up and logged no traceback."""
    _get(run)
    assert run.server.poll() is None, f"server exited with {run.server.returncode}\n{run.log()[-3000:]}"
    assert "Traceback" not in run.log(), run.log()[-3000:]


def test_error_replies(run):
    """No request of the guest was answered with an unexpected error."""
    vmhost.check_error_replies(_get(run))
