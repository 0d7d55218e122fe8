"""Start a tree described by a Topology on this machine: local leaves and inner muxes
as child processes of the caller on loopback (ports picked by the kernel), the root mux in
the caller's own process.  Everything stops with it (stop(), or the caller's death)."""

import os
import signal
import subprocess
import sys
import time

from .topology import FINAL_LEAF_MUX, FINAL_UP


def _die_with_parent():
    """A preexec_fn (Linux; None elsewhere): the child gets SIGTERM when the process that
    started it dies, however it dies, so that a `nine tree` ended by SIGTERM or SIGKILL
    leaves no leaf or mux running.  (Tied to the thread that starts the child: start
    trees from a thread that lives as long as they do, as `nine tree` does.)"""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()
    args = [ctypes.c_ulong(int(signal.SIGTERM))] + [ctypes.c_ulong(0)] * 3

    def preexec():
        prctl(1, *args)                 # PR_SET_PDEATHSIG
        if os.getppid() != parent:      # the parent died before that: go now
            os._exit(1)
    return preexec


def tls_files(directory):
    """(cert, key, ca) of the processes a tree starts here: DIR/127.0.0.1.crt and .key,
    DIR/ca.crt.  A directory without ca.crt first gets a test PKI
    (nine.auth.tls.make_test_pki: those, and client.crt/.key for the tree's users)."""
    ca = os.path.join(directory, "ca.crt")
    if not os.path.exists(ca):
        from ..auth.tls import make_test_pki
        make_test_pki(directory, ["127.0.0.1", "client"])
    return (os.path.join(directory, "127.0.0.1.crt"), os.path.join(directory, "127.0.0.1.key"),
            ca)


class Tree:
    """The running tree: `start()` brings up leaves and inner muxes and returns the root's
    Mux (not yet listening); `stop()` ends every process."""

    def __init__(self, topo, quiet=True, python=None):
        self.topo = topo
        self.procs = []
        self.quiet = quiet
        self.python = python or sys.executable
        self.levels = []        # [[(name, addr), ...]] from the leaves up
        self.tls = None         # (cert, key, ca) of its processes, with topo.tls
        self._tmp = None
        self._n = 0

    def _spawn(self, args):
        """Start `nine ARGS` listening on a port the kernel picks; returns (proc, file
        where it writes its address).  No port is chosen here, so two children (or two
        trees) can never be handed the same one."""
        if self._tmp is None:
            import tempfile
            self._tmp = tempfile.mkdtemp(prefix="nine-tree-")
        self._n += 1
        afile = os.path.join(self._tmp, "addr%d" % self._n)
        args = args + ["--listen", "127.0.0.1:0", "--address-file", afile,
                       "--auth", self.topo.auth]
        if self.tls is not None:
            args += ["--tls-cert", self.tls[0], "--tls-key", self.tls[1], "--tls-ca", self.tls[2]]
        if self.topo.aggregators:
            args += ["--aggregators", self.topo.aggregators]
        env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        p = subprocess.Popen([self.python, "-m", "nine"] + args, env=env,
                             stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL if self.quiet else None,
                             preexec_fn=_die_with_parent())
        self.procs.append((p, afile))
        return p, afile

    def _wait_address(self, proc, afile, timeout=30):
        t0 = time.time()
        while time.time() - t0 < timeout:
            if proc.poll() is not None:
                raise RuntimeError("a tree member exited with %s before serving (%s)" % (
                    proc.returncode, " ".join(proc.args[2:])))
            try:
                with open(afile) as f:
                    addr = f.read().strip()
                if addr:
                    return addr
            except FileNotFoundError:
                pass
            time.sleep(0.02)
        raise RuntimeError("a tree member did not start serving in %d s" % timeout)

    def start(self):
        from ..assembly import MuxConfig, build_mux
        from ..final import parse
        topo = self.topo
        for prog in (topo.final_leaf_mux, topo.final_mid, topo.final_root):
            if prog is not None:
                parse(prog)     # a wrong program is refused before anything starts
        if topo.tls:
            self.tls = tls_files(topo.tls)
        level = []
        waits = []
        for name, where in topo.leaves:
            if where == "local" or where.startswith("local:"):
                args = ["serve", "-q"] + topo.leaf_args.split()
                d = where[6:] if where.startswith("local:") else None
                if d is None and topo.leaf_export:
                    d = os.path.join(topo.leaf_export, name)
                    os.makedirs(d, exist_ok=True)
                if d:
                    args += ["--export", d]
                waits.append((len(level), self._spawn(args)))
                addr = None
            else:
                addr = where
            level.append((name, addr))
        for i, (p, afile) in waits:
            level[i] = (level[i][0], self._wait_address(p, afile))
        self.levels.append(level)
        first = True
        while len(level) > topo.fanout:
            nxt = []
            waits = []
            final = (topo.final_leaf_mux or FINAL_LEAF_MUX) if first else \
                (topo.final_mid or FINAL_UP)
            for i in range(0, len(level), topo.fanout):
                group = level[i:i + topo.fanout]
                name = "mux%d-%d" % (len(self.levels), i // topo.fanout)
                args = ["mux", "-q", "--final-text", final,
                        "--child-aname", "nine" if first else ""]
                for cname, caddr in group:
                    args += ["--child", "%s=%s" % (cname, caddr)]
                waits.append((len(nxt), self._spawn(args)))
                nxt.append((name, None))
            for i, (p, afile) in waits:
                nxt[i] = (nxt[i][0], self._wait_address(p, afile))
            level = nxt
            self.levels.append(level)
            first = False
        if first:
            final = topo.final_root or FINAL_LEAF_MUX
            aname = "nine"
        else:
            final = topo.final_root or FINAL_UP
            aname = ""
        if topo.aggregators:
            from ..group.aggregate import load
            load(topo.aggregators)
        tls = dict(zip(("tls_cert", "tls_key", "tls_ca"), self.tls or ()))
        self.root = build_mux(MuxConfig(level, final_text=final, child_aname=aname,
                                        name="root", auth=self.topo.root_auth, **tls))
        return self.root

    def describe(self):
        lines = []
        for i, level in enumerate(self.levels):
            kind = "leaves" if i == 0 else "muxes (level %d)" % i
            lines.append("%-18s %s" % (kind + ":", " ".join("%s=%s" % x for x in level)))
        if self.tls is not None:
            d = os.path.dirname(self.tls[2])
            lines.append("%-18s %s (clients: --tls-cert/--tls-key/--tls-ca or $NINE_TLS_*, "
                         "e.g. %s)" % ("TLS:", d, " ".join(os.path.join(d, f) for f in (
                             "client.crt", "client.key", "ca.crt"))))
        return "\n".join(lines)

    def stop(self):
        if getattr(self, "root", None) is not None:
            self.root.close()
        for p, _ in self.procs:
            if p.poll() is None:
                p.terminate()
        for p, _ in self.procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
        self.procs = []
        if self._tmp is not None:
            import shutil
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
