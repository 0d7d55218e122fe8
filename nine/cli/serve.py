"""The server verbs: serve (a leaf), mux, tree (a local tree) and demo."""

import os
import sys

from .. import __version__
from ..assembly import (ConfigError, LeafConfig, MuxConfig, build_leaf, build_mux,
                        trust_groups_refusal)
from .common import (DEFAULT_ADDR, _die, _errtext, _fmt_listen, _serve_forever,
                     _serve_until_done, _write_address)


def leaf_config(args):
    """The LeafConfig that `nine serve`'s options ask for."""
    exports = []
    for spec in args.export or []:
        name, sep, path = spec.partition("=")
        exports.append((name, path) if sep else (None, spec))
    return LeafConfig(exports=exports, read_only=args.read_only, squash=args.squash,
                      proc=args.proc, host=args.host, exec=args.exec_, ctl=args.ctl,
                      msize=args.msize, auth=args.auth, allow_devices=args.allow_devices,
                      tls_cert=args.tls_cert, tls_key=args.tls_key, tls_ca=args.tls_ca,
                      trust_client_groups=args.trust_client_groups, limits=_limits(args))


def _limits(args):
    """The Limits (nine.server.limits) that --max-* and --*-timeout ask for."""
    from ..server.limits import Limits
    try:
        return Limits(**{name: getattr(args, "limit_" + name) for name in Limits._fields})
    except ValueError as ex:
        _die(str(ex), 2)


def _detach(args):
    """--daemon: go to the background (nine.launch.daemon) before anything starts;
    returns what to call once listening (None in the foreground)."""
    if not args.daemon:
        if args.pid_file or args.log_file:
            _die("--pid-file and --log-file go with --daemon", 2)
        return None
    from ..launch.daemon import DaemonError, detach
    try:
        return detach(args.pid_file, args.log_file)
    except (DaemonError, OSError) as ex:
        _die("cannot start the daemon: %s" % _errtext(ex))


def cmd_serve(args):
    cfg = leaf_config(args)
    why = trust_groups_refusal(cfg)      # a usage error, said before --daemon detaches
    if why:
        _die(why, 2)
    ready = _detach(args)
    try:
        server = build_leaf(cfg)
    except ConfigError as ex:
        _die(str(ex))
    addrs = args.listen or [DEFAULT_ADDR]
    for a in addrs:
        try:
            srv = server.listen(a, socket_mode=args.socket_mode)
        except (OSError, ValueError) as ex:
            _die("cannot listen on %s: %s" % (a, _errtext(ex)))
        if not args.quiet:
            sys.stderr.write("nine: serving %s on %s\n" % (
                ", ".join(sorted(str(k if k is not None else "*") for k in server.exports)),
                _fmt_listen(srv, a)))
        _write_address(args, srv, a)
    if ready is not None:
        ready()
    sys.stderr.flush()
    _serve_forever()
    return 0


def _parse_children(specs):
    out = []
    for spec in specs or []:
        name, sep, addr = spec.partition("=")
        if not name or sep and not addr:
            _die("bad --child %r (want NAME=ADDR, or NAME: its address comes later)" % spec)
        out.append((name, addr or None))
    return out


def _final_text(args):
    if getattr(args, "final_text", None):
        return args.final_text
    if getattr(args, "final", None):
        try:
            with open(args.final) as f:
                return f.read()
        except OSError as ex:
            _die("cannot read FiNAL file %s: %s" % (args.final, _errtext(ex)))
    return None


def _final_error(args, ex):
    where = args.final or "FiNAL rules"
    _die("%s: %s" % (where, ex), 2)


def cmd_mux(args):
    from ..final import FinalError
    children = _parse_children(args.child)
    if not children:
        _die("a mux needs at least one --child NAME=ADDR")
    ready = _detach(args)
    try:
        mux = build_mux(MuxConfig(children, final_text=_final_text(args),
                                  child_aname=args.child_aname, msize=args.msize,
                                  auth=args.auth, child_auth=args.child_auth,
                                  tls_cert=args.tls_cert, tls_key=args.tls_key,
                                  tls_ca=args.tls_ca, hang_timeout=args.hang_timeout,
                                  limits=_limits(args)))
    except FinalError as ex:
        _final_error(args, ex)
    except ConfigError as ex:
        _die(str(ex), 2)
    return _serve_until_done(mux.server, args.listen or [DEFAULT_ADDR], args.quiet,
                             "mux of %d children" % len(children), args, ready)


def cmd_tree(args):
    from ..final import FinalError
    from ..launch import Topology, Tree
    if args.action == "down":
        return _tree_down(args)
    if args.action == "watch":
        return _tree_watch(args)
    try:
        hosts = None
        if args.hosts:              # a tree on hosts over ssh: the hosts are the leaves
            from ..launch.ssh import node_list
            hosts = [(h, "ssh") for h in node_list(args.hosts)]
        if args.slurm:              # a tree in a Slurm allocation: its nodes are the leaves
            from ..launch.slurm import allocation
            if hosts:
                raise ValueError("--slurm: the allocation's nodes are the leaves (no --hosts)")
            hosts = [(h, "slurm") for h in allocation()[1]]
        if args.topology:
            topo = Topology.load(args.topology, leaves=hosts)
            if args.listen:
                topo.listen = args.listen
            if args.aggregators:
                topo.aggregators = args.aggregators
        else:
            topo = (Topology if hosts else Topology.local)(
                hosts or args.leaves, fanout=args.fanout, listen=args.listen or DEFAULT_ADDR,
                leaf_export=args.leaf_export, final_root=_final_text(args),
                aggregators=args.aggregators)
    except (OSError, ValueError) as ex:
        _die(str(ex), 2)
    if topo.muxes and not hosts:
        _die("%s: [muxes] places muxes on hosts: give --hosts" % args.topology, 2)
    if not hosts and (args.daemon or args.root_host or args.copy_key):
        _die("--daemon, --root-host and --copy-key go with --hosts", 2)
    # --no-auth: the root's clients need none; the tree's own links still authenticate
    topo.auth = "auto" if args.auth == "none" else args.auth
    topo.root_auth = args.auth
    try:
        ensure_auth(topo.auth)
    except OSError as ex:
        _die("cannot make a key: %s" % _errtext(ex))
    if args.slurm:
        return _tree_in_slurm(args, topo)
    if hosts:
        return _tree_on_hosts(args, topo)
    tree = Tree(topo, quiet=not args.verbose)
    try:
        try:
            root = tree.start()
        except FinalError as ex:
            _final_error(args, ex)
        except (OSError, RuntimeError, ValueError) as ex:
            _die("cannot start the tree: %s" % ex)
        try:
            srv = root.server.listen(topo.listen)
        except (OSError, ValueError) as ex:
            _die("cannot listen on %s: %s" % (topo.listen, ex))
        addr = _fmt_listen(srv, topo.listen)
        print("nine tree: %d leaves, %d levels of muxes, root on %s" % (
            len(topo.leaves), len(tree.levels), addr))
        print(tree.describe())
        if args.once:
            return 0
        sys.stdout.flush()
        _serve_forever()        # then its servers stop and its scratch dir goes
        return 0
    finally:
        tree.stop()


def _tree_on_hosts(args, topo):
    """nine tree --hosts: the tree on hosts over ssh (nine.launch.ssh); in the foreground
    it serves the root until Ctrl-C or SIGTERM, then stops every server it started."""
    import signal
    import time
    from ..launch.ssh import CHECKOUT, LaunchError, SshTree
    try:
        tree = SshTree([h for h, _ in topo.leaves], topology=topo,
                       ssh_options=args.ssh_options, ssh_fanout=args.ssh_fanout,
                       remote_python=args.remote_python,
                       remote_path=CHECKOUT if args.remote_path is None else args.remote_path,
                       remote_workdir=args.remote_workdir, state_file=args.state,
                       name=args.name, port=args.port, root_host=args.root_host,
                       root_port=int(args.listen.rpartition(":")[2])
                       if args.root_host and args.listen else 0, root_daemon=args.daemon)
    except ValueError as ex:
        _die(str(ex), 2)
    # while starting, Ctrl-C or SIGTERM stops what started: counted here, acted on by the
    # launcher where it is safe (SshTree.interrupt); a second one kills the starts under way
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: tree.interrupt())
    up = False
    watcher = None
    try:
        if args.copy_key:
            key = _key_file(args.auth)
            copied = tree.copy_key(key)
            if copied:
                from ClusterShell.NodeSet import NodeSet
                sys.stderr.write("nine: copied %s to %s\n" % (key, NodeSet.fromlist(copied)))
        t0 = time.monotonic()
        addr = tree.start()
        print("nine tree: %d leaves on hosts, %d levels of muxes, root on %s (up in %.1f s)"
              % (len(tree.hosts), tree.members[-1].level, addr, time.monotonic() - t0))
        print(tree.describe())
        if args.daemon:
            print("%-18s `nine tree watch --state %s` adopts its lost muxes" % (
                "watch:", tree.state_file))
            sys.stdout.flush()
            tree._check()
            up = True
            return 0
        if not args.once:
            if args.adopt:
                watcher = _watch(tree, args)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            tree._check()       # (one that came after start() looked)
            sys.stdout.flush()
            _serve_forever()
        return 0
    except KeyboardInterrupt:
        if tree.interrupted:
            sys.stderr.write("nine: interrupted: stopping what started\n")
        raise
    except LaunchError as ex:
        sys.stderr.write("nine: %s\n" % ex)
        return 1
    finally:
        if not up:
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, signal.SIG_IGN)
            if watcher is not None:
                import gevent
                watcher.stop(tree.start_timeout + 30, sleep=gevent.sleep)
            try:
                tree.down()
            except LaunchError as ex:
                _die("stopping the tree: %s" % ex)


def _watch(tree, args):
    """Watch a foreground tree in a thread of this process (nine.launch.watch)."""
    from ..launch.watch import Watcher
    watcher = Watcher(tree, grace=args.adopt_grace)
    tree.watcher = os.getpid()
    tree._save()
    watcher.start()
    print("%-18s a mux lost for %g s is adopted on another host (--no-adopt: never)" % (
        "watch:", args.adopt_grace))
    return watcher


def _tree_watch(args):
    """nine tree watch: watch the tree that a state file records (a --daemon tree) until
    Ctrl-C, SIGTERM or `nine tree down` (nine.launch.watch)."""
    import signal
    from ..launch.ssh import SshTree, state_path, tree_process
    from ..launch.watch import Watcher
    path = args.state or state_path(args.name)
    try:
        tree = SshTree.from_state(path)
    except (OSError, ValueError, KeyError) as ex:
        _die("%s: %s" % (path, ex))
    for pid, what in ((tree.watcher, "watched by"), (tree.launcher, "held by the foreground "
                                                     "nine tree (it watches its tree),")):
        if pid is not None and pid != os.getpid() and tree_process(pid):
            _die("%s: the tree is %s pid %d" % (path, what, pid))
    stop = []                   # (a handler sets no lock: see Watcher.run)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.append(True))
    tree.watcher = os.getpid()
    tree._save()
    print("nine tree watch: %s (root %s): a mux lost for %g s is adopted on another host"
          % (path, tree.address, args.adopt_grace))
    sys.stdout.flush()
    try:
        Watcher(tree, grace=args.adopt_grace).run(lambda: bool(stop))
    finally:
        if os.path.exists(path):
            tree.watcher = None
            tree._save()
    return 0


def _tree_in_slurm(args, topo):
    """nine tree --slurm: the tree as steps of the allocation this runs in
    (nine.launch.slurm); it serves the root until Ctrl-C or SIGTERM, then ends every
    step it started."""
    import signal
    import time
    from ..launch.slurm import LaunchError, SlurmTree
    from ..launch.ssh import CHECKOUT

    def interrupt(*_):
        raise KeyboardInterrupt
    if args.daemon:
        _die("--slurm: the steps end with this process (no --daemon)", 2)
    try:
        tree = SlurmTree([h for h, _ in topo.leaves], topology=topo, port=args.port,
                         root_host=args.root_host,
                         root_port=int(args.listen.rpartition(":")[2])
                         if args.root_host and args.listen else 0,
                         python_path=CHECKOUT if args.remote_path is None else args.remote_path)
    except ValueError as ex:
        _die(str(ex), 2)
    signal.signal(signal.SIGTERM, interrupt)    # while starting: stop what started
    try:
        t0 = time.monotonic()
        addr = tree.start()
        print("nine tree: %d leaves in Slurm job %s, %d levels of muxes, root on %s "
              "(up in %.1f s)" % (len(tree.nodes), tree.job_id, tree.members[-1].level, addr,
                                  time.monotonic() - t0))
        print(tree.describe())
        sys.stdout.flush()
        if not args.once:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            _serve_forever()
        return 0
    except LaunchError as ex:
        sys.stderr.write("nine: %s\n" % ex)
        return 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        try:
            tree.down()
        except LaunchError as ex:
            _die("stopping the tree: %s" % ex)


def _key_file(auth):
    """The key file this host uses for --auth (for --copy-key)."""
    from ..auth.key import key_paths
    if auth.startswith("key="):
        return auth[4:]
    if auth not in ("auto", "key"):
        _die("--copy-key: --auth %s uses no key file" % auth, 2)
    for path in key_paths():
        if os.path.exists(path):
            return path
    _die("--copy-key: no key file here (nine key makes one)")


def _tree_down(args):
    """nine tree down: stop the tree a state file records (nine.launch.ssh)."""
    from ..launch.ssh import LaunchError, down, state_path
    path = args.state or state_path(args.name)
    if not os.path.exists(path):
        _die("no tree recorded in %s" % path)
    try:
        for line in down(path):
            print(line)
    except (LaunchError, OSError, ValueError) as ex:
        _die("%s: %s" % (path, ex))
    return 0


DEMO_FILES = {
    "README": "This is nine's demo tree, served over 9P.\n",
    "hello.txt": "hello from {node}\n",
    "etc/motd": "All the world's a file.\n",
    "data/numbers": "".join("%d\n" % i for i in range(1, 11)),
}


def cmd_demo(args):
    """Start a small local tree (8 leaf servers, two levels of muxes) with a few files on
    every leaf, show it through the root, and keep serving until interrupted (--once:
    exit after the tour)."""
    import gevent
    import tempfile
    from ..launch import Topology, Tree
    made_dir = not args.dir
    root_dir = args.dir or tempfile.mkdtemp(prefix="nine-demo-")
    topo = Topology.local(args.leaves, fanout=args.fanout, listen=args.listen,
                          leaf_export=root_dir,
                          auth="auto" if args.auth == "none" else args.auth)
    topo.root_auth = args.auth
    try:
        ensure_auth(topo.auth)
    except OSError as ex:
        _die("cannot make a key: %s" % _errtext(ex))
    for name, _ in topo.leaves:
        for rel, text in DEMO_FILES.items():
            path = os.path.join(root_dir, name, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if not os.path.exists(path):
                with open(path, "w") as f:
                    f.write(text.replace("{node}", name))
    tree = Tree(topo)
    try:
        try:
            mux = tree.start()
            srv = mux.server.listen(args.listen)
        except (OSError, RuntimeError, ValueError) as ex:
            _die("cannot start the demo tree: %s (try --listen 127.0.0.1:0)" % ex)
        addr = _fmt_listen(srv, args.listen)
        print("nine %s: %d leaf servers, %d levels of muxes, root on %s" % (
            __version__, len(topo.leaves), len(tree.levels), addr))
        print(tree.describe())
        print("leaf files under %s%s\n" % (
            root_dir, " (removed at exit; --dir DIR keeps them)" if made_dir else ""))
        first = topo.leaves[0][0]

        def tour():
            from ..client import Client
            c = Client(addr)
            steps = [
                ("nine ls -a %s /" % addr, lambda: c.listdir("/")),
                ("nine ls -a %s /nodes" % addr, lambda: c.listdir("/nodes")),
                ("nine ls -a %s /host/load" % addr, lambda: c.listdir("/host/load")),
                ("nine read -a %s /host/load/%s" % (addr, first),
                 lambda: c.read_file("/host/load/%s" % first)),
                ("nine ls -a %s /proc/1" % addr, lambda: c.listdir("/proc/1")),
                ("nine read -a %s /nodes/%s/files/hello.txt" % (addr, first),
                 lambda: c.read_file("/nodes/%s/files/hello.txt" % first)),
                ("mkdir /groups/motd; ln -s ../../nodes/NODE/files/etc/motd "
                 "/groups/motd/NODE   # for each of %d leaves" % len(topo.leaves),
                 lambda: make_group("motd", "etc/motd")),
                ("nine gread -a %s /groups/motd --agg equiv" % addr,
                 lambda: c.gopen("/groups/motd", aggregator="equiv").read()),
                ("nine gread -a %s /groups/hello   # made the same way" % addr,
                 lambda: (make_group("hello", "hello.txt"),
                          c.gopen("/groups/hello").read())[1]),
                ("nine read -a %s -A mux /status" % addr, None),
            ]

            def make_group(name, rel):
                if name not in c.listdir("/groups"):
                    c.mkdir("/groups/" + name)
                    for leaf, _ in topo.leaves:
                        c.symlink("../../nodes/%s/files/%s" % (leaf, rel),
                                  "/groups/%s/%s" % (name, leaf))
                return b""
            for cmd, fn in steps:
                print("$ " + cmd)
                if fn is None:
                    m = Client(addr, aname="mux")
                    out = m.read_file("/status")
                    m.close()
                else:
                    out = fn()
                if isinstance(out, bytes):
                    sys.stdout.write(out.decode(errors="replace"))
                else:
                    print(" ".join(sorted(out)))
                print()
            c.close()
            print("Mount the root from Linux (needs 9p in the kernel):")
            print("  nine mount %s /mnt                  # authenticates, then hands the "
                  "socket to the kernel" % addr)
            print("  nine mount -o aname=nodes/%s/files %s /mnt/%s\n" % (first, addr, first))
            sys.stdout.flush()

        def safe_tour():
            try:
                tour()
            except BrokenPipeError:     # `nine demo | head`: the reader left
                return "pipe"
        try:
            if gevent.spawn(safe_tour).get() == "pipe":
                return 0
        except Exception as ex:
            _die("demo failed: %s" % ex)
        if args.once:
            return 0
        _serve_forever(announce="Serving until Ctrl-C.\n")
        return 0
    finally:
        tree.stop()
        if made_dir:                  # a temporary directory of our own: not left behind
            import shutil
            shutil.rmtree(root_dir, ignore_errors=True)


def cmd_key(args):
    """nine key [PATH]: make a shared key (refusing to overwrite one)."""
    from ..auth.key import key_paths, make_key
    path = args.path or key_paths()[0]
    try:
        make_key(path)
    except FileExistsError:
        _die("%s exists already (remove it first to make a new one)" % path)
    except OSError as ex:
        _die("cannot make %s: %s" % (path, _errtext(ex)))
    print("nine: made %s (mode 0600); copy it to every host and user that serves or "
          "connects (docs/security.md)" % path)
    return 0


def ensure_auth(spec):
    """nine demo and nine tree: with the default method and none found on this host,
    make a key in the usual place (first use), so that the tree starts authenticated
    with nothing installed."""
    if spec != "auto":
        return
    from ..auth import NoMethod, server_method
    try:
        server_method()
    except NoMethod:
        from ..auth.key import key_paths, make_key
        path = key_paths()[0]
        make_key(path)
        sys.stderr.write("nine: made a shared key for authentication: %s\n" % path)
