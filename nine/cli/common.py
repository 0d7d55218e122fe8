"""What every verb of the `nine` command shares: errors, the client connection, the
server loop until Ctrl-C, the client options."""

import errno
import gc
import os
import sys

DEFAULT_ADDR = "127.0.0.1:5640"
_gc_held = False


def hold_gc():
    """Turn the cyclic garbage collector off while the command starts (main(), for the
    verbs of nine.cli.main._GC_OFF), unless it is off already."""
    global _gc_held
    if gc.isenabled():
        gc.disable()
        _gc_held = True


def release_gc():
    """Turn it on again, if hold_gc() turned it off: once the verb serves, or is
    connected, or has parsed its command line (the other verbs)."""
    global _gc_held
    if _gc_held:
        _gc_held = False
        gc.enable()


def _die(msg, code=1):
    sys.stderr.write("nine: %s\n" % msg)
    sys.exit(code)


def _fmt_listen(srv, a):
    if a.startswith("unix!"):
        return a
    host, port = srv.address[:2]
    return "%s:%d" % (host, port)


def _client(args, blocking=True):
    """The Client of a verb's options; blocking: on a BlockingConnection (no gevent: a
    one-shot verb starts faster), unless the link is TLS."""
    from ..client import Client
    tls = None
    if args.tls_cert or args.tls_key or args.tls_ca:    # (ssl is loaded for TLS only)
        from ..auth.tls import from_files
        try:
            tls = from_files(args.tls_cert, args.tls_key, args.tls_ca, server_side=False)
        except ValueError as ex:
            _die(str(ex), 2)
    try:
        client = Client(args.addr, aname=args.aname, version=args.version,
                        uname=args.uname, msize=args.msize, tls=tls, blocking=blocking)
        release_gc()            # (connected: its modules are loaded, the verb's work begins)
        return client
    except (OSError, ValueError) as ex:
        if getattr(ex, "errno", None) in (errno.ENOENT, errno.EACCES, errno.EPERM) and \
                not args.addr.startswith("unix!"):     # the server refused the attach
            _die("%s refused the attach to aname %r: %s" % (args.addr, args.aname,
                                                            _errtext(ex)))
        _die("cannot connect to %s: %s" % (args.addr, _errtext(ex)))


def _errtext(ex):
    if isinstance(ex, OSError) and ex.strerror:
        return ex.strerror
    return str(ex)


def _serve_forever(announce=None):
    """Serve until Ctrl-C (SIGINT) or SIGTERM, then return (quietly: the callers clean
    up in their `finally`).  A second Ctrl-C or SIGTERM then (an impatient user; `timeout`
    signals the process and its group, so twice) does not cut that clean-up short: the
    callers stop their children and remove their temporary directories, then exit."""
    import signal
    import gevent
    import gevent.event
    from ..server.guard import settle
    settle()                    # (what is there now lives as long: out of the GC's way)
    release_gc()                # (off while the server started: nine.cli.main._GC_OFF)
    done = gevent.event.Event()
    handlers = [gevent.signal_handler(sig, done.set) for sig in (signal.SIGINT, signal.SIGTERM)]
    if announce:                # only now: a Ctrl-C right after it is handled as above
        sys.stdout.write(announce)
        sys.stdout.flush()
    try:
        done.wait()
    except KeyboardInterrupt:
        pass
    finally:
        for h in handlers:
            h.cancel()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)


def _write_address(args, srv, a):
    """--address-file: write the address really listened on (port 0 picks a free one),
    atomically, for whoever started this server (nine tree)."""
    path = getattr(args, "address_file", None)
    if not path:
        return
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(_fmt_listen(srv, a) + "\n")
    os.rename(tmp, path)


def _serve_until_done(server, addrs, quiet, what, args=None, ready=None):
    for a in addrs:
        try:
            srv = server.listen(a)
        except (OSError, ValueError) as ex:
            _die("cannot listen on %s: %s" % (a, ex))
        if not quiet:
            sys.stderr.write("nine: serving %s on %s\n" % (what, _fmt_listen(srv, a)))
        _write_address(args, srv, a)
    if ready is not None:       # --daemon (nine.launch.daemon): listening now
        ready()
    sys.stderr.flush()
    _serve_forever()
    return 0


def _add_client_opts(p):
    p.add_argument("-a", dest="addr", default=os.environ.get("NINE_ADDR", DEFAULT_ADDR),
                   help="server address: HOST:PORT, tcp!HOST!PORT or unix!PATH "
                        "(default $NINE_ADDR or %s)" % DEFAULT_ADDR)
    p.add_argument("-A", dest="aname", default="", help="attach name (aname)")
    p.add_argument("-V", dest="version", default="9P2000.L",
                   choices=["9P2000", "9P2000.u", "9P2000.L"], help="protocol dialect")
    p.add_argument("-u", dest="uname", default=None, help="user name to attach as")
    p.add_argument("-m", dest="msize", type=int, default=1 << 20 | 24, help="msize")
    _add_tls_opts(p, "the link", env=True)


def _add_tls_opts(p, what, env=False):
    """--tls-cert, --tls-key, --tls-ca (nine.auth.tls); env: default to $NINE_TLS_CERT,
    $NINE_TLS_KEY, $NINE_TLS_CA (the client verbs)."""
    g = p.add_argument_group("TLS", "%s over TLS, both ends showing certificates signed "
                             "by one CA (all three files or none%s)" % (
                                 what, "; default $NINE_TLS_CERT, $NINE_TLS_KEY, "
                                 "$NINE_TLS_CA" if env else ""))
    for opt, var, hlp in (("--tls-cert", "NINE_TLS_CERT", "this end's certificate"),
                          ("--tls-key", "NINE_TLS_KEY", "its private key"),
                          ("--tls-ca", "NINE_TLS_CA", "the CA certificate the other "
                           "end's must be signed by")):
        g.add_argument(opt, metavar="FILE", help=hlp,
                       default=os.environ.get(var) or None if env else None)
