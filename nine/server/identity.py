"""The file-system identity of each OS thread: fsuid, fsgid and supplementary groups.

When the server runs as root, the real-file backend makes each file-system call as the
attaching user: the calling OS thread's fsuid, fsgid and groups are switched with raw
system calls (setfsuid/setfsgid are per-thread; SYS_setgroups is called raw because
glibc's setgroups() changes every thread).  This module keeps what is in force, per OS
thread and for the whole process, so that several RealFS agree.  Nothing here yields:
a switch and the file-system call it is for run without another greenlet between them.

An identity is a tuple (uid, gid, groups), groups a tuple of gids.

  OWN                        the identity of the process itself
  lookup(uid, gid, groups)   the identity of a user: a missing gid is the user's passwd
                             group (NOGROUP when the uid is unknown); empty groups are
                             the user's groups in the group database, else just (gid,)
  current()                  the identity in force on the calling thread: OWN until it
                             is switched, None while unknown (a switch that failed)
  switch(ident)              make ident the calling thread's identity (EPERM where the
                             kernel refuses it)
  reset()                    act as the process itself again (a safety net)
  as_own(fn, *args)          run fn, a call that blocks (lets other greenlets run), as
                             the process itself, then switch back
  by_thread, native_id       the table behind current(): {native thread id: identity}

Setting fsuid != 0 drops the file-system capabilities, but not CAP_SYS_ADMIN or
CAP_SETFCAP (the backend accounts for that in its xattr rules).
"""

import ctypes
import errno
import os
import pwd
import _thread

from .syscalls import oserror

NOGROUP = 65534

#: the identity of the process itself
OWN = (os.geteuid(), os.getegid(), tuple(os.getgroups()))

native_id = _thread.get_native_id        # never patched by gevent
by_thread = {}                           # native thread id -> identity (None: unknown)

_SYS_SETGROUPS = {"x86_64": 116, "aarch64": 159, "riscv64": 159, "loongarch64": 159,
                  "ppc64le": 81, "ppc64": 81, "s390x": 206,
                  "i386": 206, "i686": 206, "armv7l": 206}.get(os.uname().machine)

_verified = set()                        # identities known to switch successfully
_setfsuid = ctypes.CDLL(None, use_errno=True).setfsuid
_setfsuid.argtypes = [ctypes.c_int]
_setfsuid.restype = ctypes.c_int
_setfsgid = ctypes.CDLL(None, use_errno=True).setfsgid
_setfsgid.argtypes = [ctypes.c_int]
_setfsgid.restype = ctypes.c_int
_setgroups_raw = ctypes.CDLL(None, use_errno=True).syscall
_setgroups_raw.restype = ctypes.c_long
_setgroups_raw.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p]
_group_arrays = {}


def _setgroups(groups):
    if _SYS_SETGROUPS is None:           # unknown architecture: process-wide, via glibc
        os.setgroups(list(groups))
        return
    arr = _group_arrays.get(groups)
    if arr is None:
        if len(_group_arrays) > 4096:
            _group_arrays.clear()
        arr = _group_arrays[groups] = (ctypes.c_uint * max(len(groups), 1))(*groups)
    if _setgroups_raw(_SYS_SETGROUPS, len(groups), arr) != 0:
        raise oserror(ctypes.get_errno())


def current():
    """The identity in force on the calling OS thread (None: unknown)."""
    return by_thread.get(native_id(), OWN)


def switch(ident):
    """Switch the calling OS thread's fsuid, fsgid and groups (raw, per-thread syscalls)."""
    uid, gid, groups = ident
    tid = native_id()
    by_thread[tid] = None                 # unknown until done
    _setgroups(groups)
    _setfsgid(gid)
    _setfsuid(uid)
    if ident not in _verified:
        # setfsuid/setfsgid report failure only by not changing: check (once; what can
        # make them fail, a missing capability, does not come and go)
        if _setfsuid(-1) != uid or _setfsgid(-1) != gid:
            raise oserror(errno.EPERM)
        if len(_verified) > 4096:
            _verified.clear()
        _verified.add(ident)
    by_thread[tid] = ident


def reset():
    """Make the calling OS thread act as the process itself again (a safety net: every
    operation of the backend restores the identity it found)."""
    if os.geteuid() == 0 and current() != OWN:
        switch(OWN)


def as_own(fn, *args):
    """Block (let other greenlets run) as the process's own identity, not the user's."""
    cur = current()
    if cur == OWN:
        return fn(*args)
    switch(OWN)
    if cur is None:                       # unknown (a failed switch): stay as ourselves
        return fn(*args)
    try:
        return fn(*args)
    finally:
        switch(cur)


def lookup(uid, gid, groups):
    """The identity of user uid (see the module's docstring for the defaults)."""
    try:
        pw = pwd.getpwuid(uid)
    except (KeyError, OverflowError):
        pw = None
    if gid is None:
        gid = pw.pw_gid if pw is not None else NOGROUP
    if groups:
        groups = tuple(int(g) for g in groups)
    elif pw is not None:
        try:
            groups = tuple(os.getgrouplist(pw.pw_name, gid))
        except OSError:
            groups = (gid,)
    else:
        groups = (gid,)
    return (int(uid), int(gid), groups)
