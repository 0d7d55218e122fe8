"""contrib/systemd: nine-leaf.service with its /etc/default/nine-leaf, nine-mux@.service
with an /etc/nine/mux/NAME.conf (nine-mux.conf.example), the files-only drop-in.

- They parse, and the options the shipped files give are `nine serve`'s and `nine
  mux`'s own.
- `systemd-analyze verify` has nothing to say about them, the drop-in included (on
  copies whose ExecStart names `nine` where it is installed here: verify checks that the
  command exists, and systemd's own search path does not hold this machine's).
- Their ExecStart lines, expanded as systemd expands them with the variables of the
  shipped files (this machine's address, a temporary export and the session's key in
  place of the site's), start a leaf and a mux over it that answer attaches.  The
  confined units' CapabilityBoundingSet and NoNewPrivileges are applied as systemd
  applies them (setpriv, as root): the mux serves with no capability but its port's,
  the files-only leaf acts as another user on its export with those the drop-in keeps.
  The other sandboxing options (ProtectSystem and the like) need a running systemd,
  which a container has not: only verify checks them.
"""

import configparser
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile

import pytest

from conftest import ENV_ROOT, ROOT
from nine.netwait import free_port, wait_port

UNITS = os.path.join(ROOT, "contrib", "systemd")
NOBODY = 65534


def unit(name):
    cp = configparser.ConfigParser(interpolation=None, strict=True)
    cp.optionxform = str
    with open(os.path.join(UNITS, name)) as f:
        cp.read_file(f)
    return cp


def env_file(name):
    """The variables of an EnvironmentFile, read as systemd reads one: KEY=VALUE lines,
    # and ; comments, a backslash at the end of a line going on on the next one."""
    env = {}
    text = re.sub(r"\\\n", " ", open(os.path.join(UNITS, name)).read())
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        key, sep, value = line.partition("=")
        assert sep, line
        value = value.strip()
        if len(value) > 1 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key.strip()] = value
    return env


def exec_argv(line, env):
    """ExecStart's words with $VAR (split at blanks) and ${VAR} (one word) expanded."""
    out = []
    for word in shlex.split(line):
        if re.fullmatch(r"\$\w+", word):
            out += env.get(word[1:], "").split()
        else:
            out.append(re.sub(r"\$\{(\w+)\}", lambda m: env.get(m.group(1), ""), word))
    return out


def with_option(argv, option, value):
    """argv with the value of every `option VALUE` replaced (value None: dropped)."""
    out = []
    i = 0
    while i < len(argv):
        if argv[i] == option:
            if value is not None:
                out += [option, value]
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def nine_command(argv):
    """The command line of an ExecStart that runs `nine`: the installed program here,
    or this Python's `-m nine`."""
    assert argv[0] == "nine"
    exe = shutil.which("nine")
    return ([exe] if exe else [sys.executable, "-m", "nine"]) + argv[1:]


def bounded(argv, caps):
    """argv under a capability bounding set (CapabilityBoundingSet) and
    no_new_privs, as systemd starts a confined unit; None where that cannot be done."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return None
    spec = ",".join(["-all"] + ["+" + c.lower().removeprefix("cap_") for c in caps.split()])
    return ["setpriv", "--no-new-privs", "--inh-caps=-all", "--bounding-set=" + spec] + argv


def capabilities(pid):
    """(effective, bounding) capability masks of process pid."""
    caps = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            key, _, value = line.partition(":")
            caps[key] = int(value, 16) if key.startswith("Cap") else None
    return caps["CapEff"], caps["CapBnd"]


def assert_bounded(proc, caps):
    """proc runs with exactly as many capabilities as the unit keeps, all effective."""
    eff, bnd = capabilities(proc.p.pid)
    assert eff == bnd and bin(bnd).count("1") == len(caps.split()), (hex(eff), hex(bnd))


class Proc:
    """A server from a unit's ExecStart, with the unit's environment file."""

    def __init__(self, argv, env, port):
        self.p = subprocess.Popen(argv, env=dict(ENV_ROOT, **env), stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.addr = "127.0.0.1:%d" % port
        try:
            wait_port(port, proc=self.p)
        except BaseException:
            self.stop()
            raise

    def stop(self):
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.p.stderr.close()


@pytest.fixture
def export():
    """An export directory in a fresh temporary directory, writable by everyone (a
    user other than root makes files in it)."""
    d = tempfile.mkdtemp(prefix="nine-units-")
    exp = os.path.join(d, "export")
    os.mkdir(exp)
    os.chmod(exp, 0o777)
    with open(os.path.join(exp, "hello"), "w") as f:
        f.write("hello from the unit\n")
    yield exp
    shutil.rmtree(d, ignore_errors=True)


def leaf_argv(export, port, drop=()):
    env = env_file("nine-leaf.default")
    argv = exec_argv(unit("nine-leaf.service")["Service"]["ExecStart"], env)
    argv = with_option(argv, "--listen", "127.0.0.1:%d" % port)
    argv = with_option(argv, "--export", export)
    argv = with_option(argv, "--auth", "key=" + os.environ["NINE_KEY"])
    return [a for a in argv if a not in drop], env


def test_units_parse():
    from nine.cli.main import make_parser
    leaf = unit("nine-leaf.service")
    s = leaf["Service"]
    assert (s["Type"], s["Restart"], s["EnvironmentFile"]) == \
        ("exec", "on-failure", "/etc/default/nine-leaf")
    assert s["ExecStart"] == "nine serve $NINE_LEAF_OPTS"
    assert leaf["Install"]["WantedBy"] == "multi-user.target"
    mux = unit("nine-mux@.service")
    s = mux["Service"]
    assert (s["Type"], s["Restart"], s["EnvironmentFile"]) == \
        ("exec", "on-failure", "/etc/nine/mux/%i.conf")
    assert s["ExecStart"] == "nine mux $NINE_MUX_OPTS"
    assert (s["CapabilityBoundingSet"], s["NoNewPrivileges"], s["ProtectSystem"]) == \
        ("CAP_NET_BIND_SERVICE", "yes", "strict")
    drop = unit("nine-leaf-files-only.conf")["Service"]
    assert (drop["ProtectSystem"], drop["NoNewPrivileges"]) == ("strict", "yes")
    # the options the shipped files give are the commands' own, and none detaches
    p = make_parser()
    for name, var, verb in (("nine-leaf.default", "NINE_LEAF_OPTS", "serve"),
                            ("nine-mux.conf.example", "NINE_MUX_OPTS", "mux")):
        opts = env_file(name)[var].split()
        args = p.parse_args([verb] + opts)
        assert args.cmd == verb and not args.daemon, name
    assert env_file("nine-mux.conf.example")["NINE_MUX_OPTS"].count("--child ") == 4


def test_systemd_analyze_verify(tmp_path):
    exe = shutil.which("nine")
    if shutil.which("systemd-analyze") is None or exe is None:
        pytest.skip("needs systemd-analyze (apt-get install systemd) and nine installed "
                    "(pip install -e .)")
    for name in ("nine-leaf.service", "nine-mux@.service"):
        text = open(os.path.join(UNITS, name)).read()
        assert text.count("\nExecStart=nine ") == 1
        (tmp_path / name).write_text(text.replace("\nExecStart=nine ", "\nExecStart=%s " % exe))
    (tmp_path / "nine-leaf.service.d").mkdir()
    shutil.copy(os.path.join(UNITS, "nine-leaf-files-only.conf"),
                tmp_path / "nine-leaf.service.d" / "files-only.conf")
    r = subprocess.run(["systemd-analyze", "verify", "nine-leaf.service",
                        "nine-mux@edge1.service"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=60)
    said = [line for line in (r.stdout + r.stderr).splitlines()
            if "nine" in line or str(tmp_path) in line]
    assert r.returncode == 0 and not said, r.stdout + r.stderr


def test_leaf_and_mux_units_serve(export):
    """The leaf's ExecStart with /etc/default/nine-leaf's options; the mux's with the
    example configuration's, over that leaf, with no capability but its port's."""
    from nine.client import Client
    from nine.launch.topology import FINAL_LEAF_MUX
    port = free_port()
    argv, env = leaf_argv(export, port)
    assert argv[:2] == ["nine", "serve"] and "--proc" in argv and "--exec" in argv
    leaf = Proc(nine_command(argv), env, port)
    mux = None
    try:
        c = Client(leaf.addr, aname="nine")
        assert {"files", "proc", "host", "exec"} <= set(c.listdir("/"))
        assert c.read_file("/files/hello") == b"hello from the unit\n"
        c.close()
        env = env_file("nine-mux.conf.example")
        argv = exec_argv(unit("nine-mux@.service")["Service"]["ExecStart"], env)
        mport = free_port()
        final = os.path.join(os.path.dirname(export), "edge1.final")
        with open(final, "w") as f:
            f.write(FINAL_LEAF_MUX)
        argv = with_option(argv, "--listen", "127.0.0.1:%d" % mport)
        argv = with_option(argv, "--final", final)
        key = "key=" + os.environ["NINE_KEY"]
        argv = with_option(with_option(argv, "--auth", key), "--child-auth", key)
        argv = with_option(argv, "--child", None) + ["--child", "node1=" + leaf.addr]
        argv = nine_command(argv)
        caps = unit("nine-mux@.service")["Service"]["CapabilityBoundingSet"]
        confined = bounded(argv, caps)
        mux = Proc(confined or argv, env, mport)
        if confined:
            assert_bounded(mux, caps)
        c = Client(mux.addr)
        assert c.listdir("/nodes") == ["node1"]
        assert c.read_file("/nodes/node1/files/hello") == b"hello from the unit\n"
        assert "node1" in c.listdir("/host/load")
        c.close()
    finally:
        if mux is not None:
            mux.stop()
        leaf.stop()


def test_files_only_leaf_acts_as_users(export):
    """The leaf's options without --exec and --proc, under the drop-in's capability
    bounding set: a user's new file is theirs, root may still chown and read it."""
    from nine.client import Client
    caps = unit("nine-leaf-files-only.conf")["Service"]["CapabilityBoundingSet"]
    port = free_port()
    argv, env = leaf_argv(export, port, drop=("--exec", "--proc"))
    argv = bounded(nine_command(argv), caps)
    if argv is None:
        pytest.skip("needs root and setpriv (util-linux) to apply the bounding set")
    leaf = Proc(argv, env, port)
    try:
        assert_bounded(leaf, caps)
        c = Client(leaf.addr, aname="nine", uname="nobody", n_uname=NOBODY)
        c.write_file("/files/mine", b"nobody's\n")
        c.close()
        path = os.path.join(export, "mine")
        assert os.stat(path).st_uid == NOBODY
        os.chmod(path, 0o600)
        c = Client(leaf.addr, aname="nine", uname="root", n_uname=0)
        c.chown("/files/mine", 1, 1)
        assert c.read_file("/files/mine") == b"nobody's\n"
        c.close()
        assert (os.stat(path).st_uid, os.stat(path).st_gid) == (1, 1)
    finally:
        leaf.stop()
