"""The one place that assembles a leaf or a mux from a plain configuration.

    server = build_leaf(LeafConfig(exports=[(None, "/srv")], proc=True))
    mux = build_mux(MuxConfig(children=[("a", "10.0.0.1:5640")], final_text=...))

A leaf is a Server (nine.server.core) over real-file exports (nine.server.realfs) and
synthetic trees (nine.synth); a mux (nine.mux) is the same server core over remote
children composed by FiNAL rules.  Both get the group service (nine.group) here, and
(later floors) authentication.  The command line (nine.cli) and the launchers
(nine.launch) only fill a configuration and call these functions; nothing else edits a
Server's exports.

Configuration errors raise ConfigError with a message meant for the user.
"""

import errno
import logging
import os

log = logging.getLogger("nine")

DEFAULT_MSIZE = 1024 * 1024 + 24


class ConfigError(ValueError):
    """A configuration that cannot be served (a missing directory, an unknown user)."""


class _Config:
    """A configuration record, as @dataclass would make it: its fields are the class's
    annotated names, in order, given by position or keyword; a field left out takes the
    class's value (a list default: a new copy, as a default_factory), one without a value
    must be given.  Compared and shown field by field.  (Not a dataclass: importing
    dataclasses, and the inspect module it needs, is a tenth of a leaf's start.)"""

    def __init__(self, *args, **kw):
        names = list(type(self).__annotations__)
        if len(args) > len(names):
            raise TypeError("%s takes at most %d positional arguments (%d given)"
                            % (type(self).__name__, len(names), len(args)))
        for name, value in zip(names, args):
            if name in kw:
                raise TypeError("%s got multiple values for argument %r"
                                % (type(self).__name__, name))
            kw[name] = value
        for name in names:
            if name in kw:
                value = kw.pop(name)
            elif hasattr(type(self), name):
                value = getattr(type(self), name)
                if isinstance(value, list):
                    value = list(value)
            else:
                raise TypeError("%s missing required argument %r" % (type(self).__name__, name))
            setattr(self, name, value)
        if kw:
            raise TypeError("%s got an unexpected keyword argument %r"
                            % (type(self).__name__, next(iter(kw))))

    def _values(self):
        return tuple(getattr(self, name) for name in type(self).__annotations__)

    def __eq__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        return self._values() == other._values()

    __hash__ = None             # (mutable, as a dataclass without frozen=True)

    def __repr__(self):
        return "%s(%s)" % (type(self).__name__, ", ".join(
            "%s=%r" % (name, getattr(self, name)) for name in type(self).__annotations__))


class LeafConfig(_Config):
    #: [(aname or None, directory)]: None serves the directory to any aname not listed
    exports: list = []
    #: refuse every change: writes to the exports (EROFS), and exec and proc control
    #: (no command runs, no process is changed; reads still work)
    read_only: bool = False
    #: let clients make and open block and character devices in the exports (refused
    #: otherwise, as under mount's nodev)
    allow_devices: bool = False
    #: act as this user for everyone (a user name or uid)
    squash: str = None
    #: take the group a create or a chown names as one of the user's (the client's
    #: kernel checked it): as believable as the attach's uid, so with auth "none" and
    #: no squash only (trust_groups_refusal; docs/security.md)
    trust_client_groups: bool = False
    proc: bool = False          # aname proc: Plan 9-style process control
    host: bool = False          # aname host: host information
    exec: bool = False          # aname exec: Xcpu-style execution
    ctl: bool = False           # aname ctl: diod's synthetic tree (on when nothing else is)
    groups: bool = True         # group file operations over every export
    msize: int = DEFAULT_MSIZE
    name: str = "nine"
    #: authentication required at attach: "auto" (munge when munged runs here, else the
    #: key file), "munge", "key", "key=FILE", or "none" (--no-auth: every attach is
    #: whoever it claims to be; proc and exec then serve the server's own user only,
    #: unless squash is set)
    auth: str = "auto"
    #: TLS on every TCP link, with mutual verification (nine.auth.tls): this server's
    #: certificate and key, and the CA certificate its clients' must be signed by (all
    #: three or none)
    tls_cert: str = None
    tls_key: str = None
    tls_ca: str = None
    #: what one client may hold (nine.server.limits.Limits; None: its defaults)
    limits: object = None


class MuxConfig(_Config):
    #: [(child name, address)]
    children: list
    final_text: str = None      # FiNAL rules (None: one directory per child)
    child_aname: str = ""       # aname attached at every child
    msize: int = None
    name: str = "mux"
    connect_timeout: float = 5.0
    op_timeout: float = None
    #: seconds a child with requests outstanding may stay silent before it is probed,
    #: and may leave the probe unanswered before it is marked hung (None: never)
    hang_timeout: float = 10.0
    groups: bool = True         # the group service over the merged name space
    auth: str = "auto"          # what the mux requires of its clients (as LeafConfig.auth)
    #: how the mux authenticates to its children: "auto" (what nine.auth.client_method
    #: finds here), a method name, or "none"
    child_auth: str = "auto"
    #: TLS (as LeafConfig's): the one set serves the mux's clients and dials its
    #: children (whose certificates must be signed by tls_ca and name their hosts)
    tls_cert: str = None
    tls_key: str = None
    tls_ca: str = None
    limits: object = None       # as LeafConfig's


def _squash_ids(user):
    import pwd
    from .server.users import USERS
    uid = USERS.uid_of(user)
    if uid is None:
        raise ConfigError("unknown squash user %r" % user)
    try:
        gid = pwd.getpwuid(uid).pw_gid
    except KeyError:
        gid = uid
    return uid, gid


def make_gate(spec, what):
    """The Gate (nine.auth.gate) for an auth spec, or None for "none" (logged as a
    warning: the server believes every claim)."""
    from .auth import server_method
    try:
        method = server_method(None if spec == "auto" else spec)
    except OSError as ex:
        raise ConfigError(ex.strerror or str(ex)) from None
    except ValueError as ex:
        raise ConfigError(str(ex)) from None
    if method is None:
        log.warning("%s runs without authentication (--no-auth): every client is whoever "
                    "it claims to be", what)
        return None
    from .auth.gate import Gate
    return Gate(method)


def tls_contexts(cfg):
    """(server context, client context) of cfg's TLS set (nine.auth.tls), or (None,
    None) when it has none."""
    if not (cfg.tls_cert or cfg.tls_key or cfg.tls_ca):
        return None, None       # (ssl is loaded for TLS only: a tenth of a leaf's start)
    from .auth import tls
    try:
        return tuple(tls.from_files(cfg.tls_cert, cfg.tls_key, cfg.tls_ca, side)
                     for side in (True, False))
    except ValueError as ex:
        raise ConfigError(str(ex)) from None


def _own_user_only(attach, what):
    """An attach function that refuses every user but this process's own (the proc and
    exec trees of a server without authentication)."""
    own = os.geteuid()

    def guarded(ctx):
        if ctx.uid != own:
            from .server.node import error
            raise error(errno.EACCES, "%s: this server runs without authentication "
                        "(--no-auth) and serves %s to uid %d only (use --squash, or "
                        "authentication)" % (what, what, own))
        return attach(ctx)
    return guarded


def trust_groups_refusal(cfg):
    """Why cfg's trust_client_groups cannot be served (a message), or None."""
    if not cfg.trust_client_groups:
        return None
    if cfg.auth != "none":
        return ("--trust-client-groups needs --no-auth (not --auth %s): it believes the "
                "groups a client names, which is only as safe as believing the uid it "
                "attaches as; an authenticated attach proves the uid, not the groups"
                % cfg.auth)
    if cfg.squash:
        return ("--trust-client-groups cannot go with --squash: a squashed server acts "
                "as one user for everyone, and a client's groups are not that user's")
    return None


def build_leaf(cfg):
    """A leaf Server (not yet listening) for cfg."""
    from .server.core import Server
    from .synth.files import Dir, File, Mount, SynthFS
    why = trust_groups_refusal(cfg)
    if why:
        raise ConfigError(why)
    if cfg.trust_client_groups and os.geteuid() != 0:
        log.warning("--trust-client-groups has no effect: this server is not root, so it "
                    "does not act as each user")
    gate = make_gate(cfg.auth, "this server")

    exports = {}
    for name, path in cfg.exports:
        if not os.path.isdir(path):
            raise ConfigError("export %r: not a directory" % path)
        from .server.realfs import RealFS
        fs = RealFS(path, read_only=cfg.read_only, allow_devices=cfg.allow_devices,
                    trust_client_groups=cfg.trust_client_groups)
        if name is None:
            exports[None] = fs.attach
            exports.setdefault(os.path.abspath(path), fs.attach)
        else:
            exports[name] = fs.attach
    squash = _squash_ids(cfg.squash) if cfg.squash else None
    server = Server(exports, msize=cfg.msize, squash=squash, name=cfg.name, gate=gate,
                    tls=tls_contexts(cfg)[0], limits=cfg.limits)
    synth = []
    if cfg.proc:
        from .synth.proc import proc_tree
        synth.append(("proc", proc_tree("proc", read_only=cfg.read_only)))
    if cfg.host:
        from .synth.host import host_tree
        synth.append(("host", host_tree()))
    if cfg.exec:
        from .synth.exec import exec_tree
        synth.append(("exec", exec_tree(read_only=cfg.read_only)))
    # without authentication, proc and exec serve this process's own user only
    guard = gate is None and squash is None
    top = []
    for aname, tree in synth:
        tree.name = aname  # its name inside aname "nine"
        # each tree is its own aname (root = the tree), and all of them together under
        # aname "nine" (nine/proc, nine/host, nine/exec)
        attach = SynthFS(tree).attach
        if guard and aname in ("proc", "exec"):
            attach = _own_user_only(attach, aname)
            top.append(Mount(aname, attach))
        else:
            top.append(tree)
        server.exports[aname] = attach
    if synth:
        if exports.get(None) is not None:
            top.insert(0, Mount("files", exports[None]))  # the default export as files/
            # which directory of this host files/ is (tools map host paths with it)
            text = "".join(["files %s\n" % os.path.abspath(d) for n, d in cfg.exports
                            if n is None][-1:]).encode()
            top.insert(1, File("exports", read=lambda ctx: text))
            from .synth.filectl import FileCtl      # file operations on files/ (pcp, psync)
            filectl = FileCtl(exports[None])
            top.insert(2, filectl.file())
            top.insert(3, filectl.unpack())         # pcp --compress: frames unpacked
        server.exports["nine"] = SynthFS(Dir("", top)).attach
        if exports.get(None) is None:       # the empty aname: the combined tree too
            server.exports[""] = server.exports["nine"]
    if cfg.ctl or not (exports or synth):
        from .synth.ctl import ctl_tree
        server.exports["ctl"] = SynthFS(ctl_tree(server)).attach
    if cfg.groups and (exports or synth):
        # group file operations over every export (aname groups, groups:NAME)
        from .group.service import install
        install(server)
    return server


def build_mux(cfg):
    """A Mux (its .server not yet listening) for cfg.  Raises nine.final.FinalError for
    a wrong FiNAL program, ConfigError for the rest."""
    from .mux.mux import Mux
    if not cfg.children:
        raise ConfigError("a mux needs at least one child")
    gate = make_gate(cfg.auth, "this mux")
    tls, child_tls = tls_contexts(cfg)
    from .auth import client_method
    try:
        child_auth = client_method(None if cfg.child_auth == "auto" else cfg.child_auth)
    except OSError as ex:
        raise ConfigError("child authentication: %s" % (ex.strerror or ex)) from None
    try:
        mux = Mux(cfg.children, final_text=cfg.final_text, child_aname=cfg.child_aname,
                  msize=cfg.msize, name=cfg.name, connect_timeout=cfg.connect_timeout,
                  op_timeout=cfg.op_timeout, child_auth=child_auth, gate=gate,
                  tls=tls, child_tls=child_tls, hang_timeout=cfg.hang_timeout)
    except ValueError as ex:
        if type(ex) is not ValueError:
            raise
        raise ConfigError(str(ex)) from None
    if cfg.limits is not None:
        mux.server.limits = cfg.limits
    mux.groups = _mux_groups(mux) if cfg.groups else None
    return mux


def _mux_groups(mux):
    """Offer the group service over a mux's merged name space: aname `groups`, /groups
    inside the merged root, and `groups:PATH` (the service over the subtree an aname path
    names: how a parent mux that attached with a path aname reaches it)."""
    from .group.service import GroupService
    from .server.node import Context

    groups = GroupService(mux.root_attach)
    by_base = {}

    def service_for(base):
        svc = by_base.get(base)
        if svc is None:
            def ns(ctx):
                if not base:
                    return mux.root_attach(ctx)
                return mux.attach(Context(ctx.uname, ctx.uid, ctx.gid, ctx.groups, base,
                                          ctx.dialect, ctx.conn, ctx.server))
            svc = by_base[base] = GroupService(ns)
        return svc

    def attach(ctx):
        aname = ctx.aname or ""
        if aname.startswith("groups:"):
            return service_for(aname[7:]).attach(ctx)
        if not [p for p in aname.split("/") if p]:
            from .group.files import GroupsOverlay      # (on the first attach)
            return GroupsOverlay(mux.root_attach(ctx), groups)
        return mux.attach(ctx)

    mux.server.exports[None] = attach
    mux.server.exports["groups"] = groups.attach
    return groups
