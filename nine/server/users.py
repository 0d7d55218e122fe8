"""Mapping of 9P user names and numeric ids to local identities (cached).

A name no database can hold (a NUL byte) is no user; a name made of ASCII digits stands
for that number when no user has it, if it is an id (below 2^32 - 1, which is "no id").
"""

import grp
import os
import pwd

NOBODY = 65534
NOID = 0xFFFFFFFF           # "no id" (-1 to chown)


def _number(name):
    """The id a numeric name stands for, or None."""
    if name.isascii() and name.isdigit():
        n = int(name)
        if n < NOID:
            return n
    return None


class UserTable:
    def __init__(self):
        self._by_name = {}
        self._by_uid = {}
        self._gname = {}
        self._groups = {}

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
        try:
            return self._by_uid[uid]
        except KeyError:
            try:
                pw = pwd.getpwuid(uid)
            except (KeyError, OverflowError):
                pw = None
            self._by_uid[uid] = pw
            return pw

    def _pw_name(self, name):
        try:
            return self._by_name[name]
        except KeyError:
            try:
                pw = pwd.getpwnam(name) if name else None
            except (KeyError, ValueError):      # ValueError: a NUL in the name
                pw = None
            self._by_name[name] = pw
            return pw

    def groups(self, name, gid):
        key = (name, gid)
        try:
            return self._groups[key]
        except KeyError:
            try:
                g = tuple(os.getgrouplist(name, gid))
            except OSError:
                g = (gid,)
            self._groups[key] = g
            return g

    def uname(self, uid):
        pw = self._pw_uid(uid)
        return pw.pw_name if pw is not None else str(uid)

    def gname(self, gid):
        try:
            return self._gname[gid]
        except KeyError:
            try:
                n = grp.getgrgid(gid).gr_name
            except (KeyError, OverflowError):
                n = str(gid)
            self._gname[gid] = n
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
