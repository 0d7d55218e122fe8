"""Mapping of 9P user names and numeric ids to local identities (cached).

A name no database can hold (a NUL byte, more than NAME_MAX bytes) is no user; a name
made of ASCII digits stands for that number when no user has it, if it is an id (below
2^32 - 1, which is "no id").

The caches are bounded (CACHE_SIZE entries each, the least recently used forgotten):
clients choose the names and ids they attach with.  A name that is no user is not
cached at all (each costs a lookup), so a flood of made-up names holds nothing.
"""

import grp
import os
import pwd

NOBODY = 65534
NOID = 0xFFFFFFFF           # "no id" (-1 to chown)
NAME_MAX = 256              # longer names are no user (Linux's LOGIN_NAME_MAX)
CACHE_SIZE = 4096           # entries of each cache
_MISS = object()


def _number(name):
    """The id a numeric name stands for, or None."""
    if name.isascii() and name.isdigit():
        n = int(name)
        if n < NOID:
            return n
    return None


class _LRU:
    """A mapping of at most CACHE_SIZE entries that forgets the least recently used."""

    def __init__(self, size=CACHE_SIZE):
        self.size = size
        self._d = {}                # in order of use, the most recent last

    def get(self, key):
        """The value of key (now the most recent), or _MISS."""
        v = self._d.pop(key, _MISS)
        if v is not _MISS:
            self._d[key] = v
        return v

    def put(self, key, value):
        d = self._d
        d.pop(key, None)
        d[key] = value
        if len(d) > self.size:
            del d[next(iter(d))]


class UserTable:
    def __init__(self):
        self._by_name = _LRU()      # users only
        self._by_uid = _LRU()
        self._gname = _LRU()
        self._groups = _LRU()

    def resolve(self, uname, n_uname):
        """(uid, gid, groups, uname) for an attach.  A numeric n_uname wins; an unknown
        name maps to nobody."""
        if n_uname is not None and n_uname != NOID:
            uid = n_uname
            pw = self._pw_uid(uid)
            if pw is not None:
                return uid, pw.pw_gid, self.groups(pw.pw_name, pw.pw_gid), pw.pw_name
            return uid, uid, (), uname or str(uid)
        pw = self._pw_name(uname)
        if pw is None:
            uid = _number(uname)
            if uid is not None:
                return uid, uid, (), uname
            pw = self._pw_uid(NOBODY)
            if pw is None:
                return NOBODY, NOBODY, (), uname
        return pw.pw_uid, pw.pw_gid, self.groups(pw.pw_name, pw.pw_gid), pw.pw_name

    def _pw_uid(self, uid):
        pw = self._by_uid.get(uid)
        if pw is _MISS:
            try:
                pw = pwd.getpwuid(uid)
            except (KeyError, OverflowError):
                pw = None
            self._by_uid.put(uid, pw)
        return pw

    def _pw_name(self, name):
        pw = self._by_name.get(name)
        if pw is _MISS:
            if not name or len(name) > NAME_MAX:
                return None
            try:
                pw = pwd.getpwnam(name)
            except (KeyError, ValueError):      # ValueError: a NUL in the name
                return None
            self._by_name.put(name, pw)
        return pw

    def groups(self, name, gid):
        key = (name, gid)
        g = self._groups.get(key)
        if g is _MISS:
            try:
                g = tuple(os.getgrouplist(name, gid))
            except OSError:
                g = (gid,)
            self._groups.put(key, g)
        return g

    def uname(self, uid):
        pw = self._pw_uid(uid)
        return pw.pw_name if pw is not None else str(uid)

    def gname(self, gid):
        n = self._gname.get(gid)
        if n is _MISS:
            try:
                n = grp.getgrgid(gid).gr_name
            except (KeyError, OverflowError):
                n = str(gid)
            self._gname.put(gid, n)
        return n

    def uid_of(self, name):
        pw = self._pw_name(name)
        if pw is not None:
            return pw.pw_uid
        return _number(name)

    def gid_of(self, name):
        try:
            return grp.getgrnam(name).gr_gid
        except (KeyError, ValueError):          # ValueError: a NUL in the name
            return _number(name)


USERS = UserTable()
