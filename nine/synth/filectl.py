"""filectl: file operations done on the host itself, for the tools that copy files to
many hosts (nine pcp, nine psync: docs/tools.md).

A leaf that serves a directory beside synthetic trees shows it as files/, with the file
``exports`` beside it; ``filectl`` is the third file there.  Each open of it is one
transaction: write commands (one per line), then read the replies (a read at offset 0
runs them, once; later reads page through the replies).  A group of the filectl files
of many hosts runs the same transaction on every host with one request per edge of the
tree, and an ``equiv`` read folds the hosts whose replies are alike::

    create dir/.app.tar.nine-tmp.k3j9 0600
    fsync dir/.app.tar.nine-tmp.k3j9 67108864
    attr dir/.app.tar.nine-tmp.k3j9 mode=0644 mtime=1700000000000000000
    rename dir/.app.tar.nine-tmp.k3j9 dir/app.tar

Commands run in order; each gives one reply line, ``ok [FIELDS]``, and the first that
fails gives ``error ENAME text`` (the errno's name, then its text) and ends its step:
a line ``--`` separates independent steps (the files of a recursive copy), and the
replies of each step are followed by a ``--`` line of their own.  PATHs are relative to files/ (``a/b``: never ``..``); a path that is not a
plain word is written ``~`` and the base64url of its bytes (path_word()).

    stat PATH                 ok SIZE MTIME_NS MODE W   (MODE in octal with its type
                              bits; W is ``w`` when the user may open the regular file
                              for writing, else ``-``); ``ok absent`` when there is none
    list PATH                 ok ENTRY ...: what is below the directory PATH, each
                              entry ``d:``, ``f:`` (a regular file) or ``o:`` (anything
                              else) and its path_word() from PATH, parents first
    mkdir PATH MODE           the directory and its missing parents (mkdir -p)
    create PATH MODE          a new file (an existing one is EEXIST)
    fsync PATH SIZE [SHA256]  flush the file to disk; EIO unless it holds SIZE bytes
                              (and, given SHA256, bytes of that sha256: a copy made
                              inside the tree from another host's file is checked so)
    attr PATH [mode=OCTAL] [mtime=NS]
    rename OLD NEW            rename(2): the new name replaces a file, never a directory
                              (EISDIR); the directory is flushed after
    sweep PATH AGE            remove the temporary files of earlier copies of PATH
                              (``.NAME.nine-tmp.*``, ``.NAME.nine-delta.*``: a copy to a
                              host that died) not written for AGE seconds
    remove PATH               unlink a file (none there is not an error)
    rmdir PATH                remove an empty directory
    patch BASIS DELTA OUT [SHA256]
                              OUT (made by create) becomes BASIS patched by the librsync
                              delta DELTA; ``ok SIZE SHA256`` of what was written, EIO
                              when it is not the SHA256 given
    codecs                    ok NAME ...: the codecs of compressed frames this host
                              can unpack (``zstd``, ``lz4``: those whose Python package
                              is installed here)

Everything is done through the export's own Node (nine.server.realfs) with the
reader's context: the same confinement and permission checks as a client's requests
(a read-only server answers EROFS).  The bytes of a copy travel as group writes to the
file that ``create`` made (nine.tools.transfer); filectl only names, checks, patches
and renames.

Compressed copies (``nine pcp --compress``) write to ``unpack/PATH`` instead of
``files/PATH`` (Unpack: a directory beside filectl whose names are those of files/):
what is written there is a stream of frames, each a 24-byte header and a payload::

    magic "9z" | codec u8 | flags u8 (0) | offset u64 | length u32 | payload size u32
    | crc32 of the 20 bytes before it                          (little-endian)

and each frame's payload, unpacked (codec 0: as it is; 1: zstd; 2: lz4 frame format,
both with their content checksum), is written into files/PATH at ``offset`` (the
uncompressed offset; ``length`` bytes).  The 9P offsets of one open are the stream's
own, from 0 (a write may hold part of a frame, or several; one that comes past a gap
is kept until the gap fills, MAX_AHEAD bytes at most).  Errors, each ending that open's
stream: EBADMSG a corrupt frame (header checksum, payload that does not unpack to
``length`` bytes), EPROTONOSUPPORT an unknown codec, ENOPKG a codec whose Python
package this host lacks, EMSGSIZE a frame over 4 MiB (unpacked or packed), EINVAL a
write before where the stream is, or too far past a gap.  An open of unpack/PATH opens
files/PATH for writing (the same permission checks; a regular file only; O_TRUNC
truncates it, O_APPEND is EINVAL); its directories walk as files/ does and list empty.
"""

import base64
import binascii
import errno
import itertools
import os
import stat as S
import struct
import zlib

from ..protocol import (L_O_ACCMODE, L_O_APPEND, L_O_RDONLY, L_O_TRUNC, L_O_WRONLY, Qid)
from ..server.node import Attr, Node, SetAttr, error
from .files import File, Mount

NAME = "filectl"
UNPACK = "unpack"            # the directory of frame-stream writes beside filectl
MAX_REQUEST = 1 << 20        # bytes of commands in one transaction
READ_CHUNK = 1 << 16


def path_word(path):
    """A path as one word of a command: itself when plain, else ``~`` + base64url."""
    b = path.encode("utf-8", "surrogateescape") if isinstance(path, str) else bytes(path)
    try:
        s = b.decode("ascii")
    except UnicodeDecodeError:
        s = None
    if s and s.isprintable() and not s.startswith("~") and not any(c.isspace() for c in s):
        return s
    return "~" + base64.urlsafe_b64encode(b).decode("ascii")


def word_path(word):
    """The names of a path word (path_word()'s inverse); EINVAL for ``..`` or none."""
    if word.startswith("~"):
        try:
            word = base64.urlsafe_b64decode(word[1:].encode("ascii")).decode(
                "utf-8", "surrogateescape")
        except (binascii.Error, ValueError) as e:
            raise error(errno.EINVAL, "bad ~base64 path: %s" % e)
    names = [n for n in word.split("/") if n and n != "."]
    if not names or ".." in names:
        raise error(errno.EINVAL, "bad path %r" % word)
    return names


class _Tx:
    """One open of filectl: the commands written, the replies once run."""
    __slots__ = ("request", "reply")

    def __init__(self):
        self.request = bytearray()
        self.reply = None


class _NodeFile:
    """An open Node as the file object librsync's binding reads and writes."""

    def __init__(self, ctx, node, digest=False):
        self.ctx, self.node, self.pos = ctx, node, 0
        if digest:
            import hashlib
        self.sha = hashlib.sha256() if digest else None

    def read(self, n=-1):
        data = bytes(self.node.read(self.ctx, self.pos, READ_CHUNK if n < 0 else n))
        self.pos += len(data)
        return data

    def write(self, data):
        data = bytes(data)
        done = 0
        while done < len(data):
            k = self.node.write(self.ctx, self.pos + done, data[done:])
            if k <= 0:
                raise error(errno.EIO, "short write")
            done += k
        self.pos += done
        if self.sha is not None:
            self.sha.update(data)
        return done

    def seek(self, pos, whence=0):
        self.pos = pos if whence == 0 else self.pos + pos
        return self.pos

    def tell(self):
        return self.pos


class FileCtl:
    """The transactions of one export: attach(ctx) gives its root Node."""

    def __init__(self, attach):
        self.attach = attach

    def file(self):
        """The synthetic File (nine.synth.files) to put beside files/."""
        return File(NAME, read=self._read, write=self._write, open=self._open,
                    mode=0o666, blocking=True)

    def unpack(self):
        """The unpack/ directory (a Mount) to put beside filectl."""
        return Mount(UNPACK, Unpack(self.attach).attach)

    # -- the file's callbacks ------------------------------------------------------
    def _open(self, ctx, flags):
        return _Tx()

    def _write(self, ctx, offset, data, state):
        if state.reply is not None:
            raise error(errno.EBUSY, "this transaction has run: open filectl again")
        end = offset + len(data)
        if end > MAX_REQUEST:
            raise error(errno.EFBIG, "a transaction holds at most %d bytes" % MAX_REQUEST)
        req = state.request
        if len(req) < end:
            req.extend(bytes(end - len(req)))
        req[offset:end] = data
        return len(data)

    def _read(self, ctx, state):
        if state.reply is None:
            state.reply = self.run(ctx, bytes(state.request).decode("utf-8",
                                                                    "surrogateescape"))
        return state.reply

    # -- running a transaction -----------------------------------------------------
    def run(self, ctx, text):
        """The reply bytes of the commands in text."""
        out = []
        root = self.attach(ctx)
        failed = False              # the step has failed: skip to the next one
        try:
            for line in text.splitlines():
                words = line.split()
                if words == ["--"]:
                    out.append("--")
                    failed = False
                    continue
                if not words or failed:
                    continue
                failed = True
                try:
                    fn = getattr(self, "cmd_" + words[0], None)
                    if fn is None:
                        raise error(errno.EINVAL, "unknown command %r" % words[0])
                    out.append("ok" + "".join(" " + str(f) for f in fn(ctx, root, *words[1:])))
                except TypeError as e:
                    out.append("error EINVAL %s: %s" % (words[0], e))
                    continue
                except OSError as e:
                    eno = e.errno or errno.EIO
                    text_ = e.strerror or os.strerror(eno)
                    out.append("error %s %s" % (errno.errorcode.get(eno, "EIO"),
                                                " ".join(str(text_).split())))
                    continue
                failed = False
        finally:
            root.close(ctx)
        return ("\n".join(out) + "\n").encode("utf-8", "surrogateescape")

    @staticmethod
    def _walk(ctx, root, names):
        """The node names lead to (the caller closes it); ENOENT when it is not there."""
        if not names:
            return root.clone(ctx)
        nodes = root.walk(ctx, list(names))
        for n in nodes[:-1]:
            n.close(ctx)
        if len(nodes) != len(names):
            if nodes:
                nodes[-1].close(ctx)
            raise error(errno.ENOENT, "No such file or directory: %s" % "/".join(names))
        return nodes[-1]

    def _open_file(self, ctx, root, names, flags):
        node = self._walk(ctx, root, names)
        try:
            node.open(ctx, flags)
        except BaseException:
            node.close(ctx)
            raise
        return node

    # -- the commands (each returns the fields of its ok line) -------------------------
    def cmd_stat(self, ctx, root, path):
        try:
            node = self._walk(ctx, root, word_path(path))
        except FileNotFoundError:
            return ("absent",)
        try:
            a = node.getattr(ctx)
            w = "-"
            if S.S_ISREG(a.mode):
                try:
                    node.open(ctx, L_O_WRONLY)
                    w = "w"
                except OSError:
                    pass
        finally:
            node.close(ctx)
        return a.size, a.mtime, "%o" % a.mode, w

    def cmd_mkdir(self, ctx, root, path, mode):
        names = word_path(path)
        mode = int(mode, 8)
        for i in range(1, len(names) + 1):
            try:
                node = self._walk(ctx, root, names[:i])
            except OSError as e:
                if e.errno != errno.ENOENT:
                    raise
                parent = self._walk(ctx, root, names[:i - 1])
                try:
                    try:
                        parent.mkdir(ctx, names[i - 1], mode, None)
                    except FileExistsError:
                        pass
                finally:
                    parent.close(ctx)
                continue
            try:
                if not S.S_ISDIR(node.getattr(ctx).mode):
                    raise error(errno.ENOTDIR, "Not a directory: %s" % "/".join(names[:i]))
            finally:
                node.close(ctx)
        return ()

    def cmd_create(self, ctx, root, path, mode):
        from ..protocol import L_O_CREAT, L_O_EXCL
        names = word_path(path)
        parent = self._walk(ctx, root, names[:-1])
        try:
            node = parent.create(ctx, names[-1], L_O_WRONLY | L_O_CREAT | L_O_EXCL,
                                 int(mode, 8), None)
            node.close(ctx)
        finally:
            parent.close(ctx)
        return ()

    def cmd_fsync(self, ctx, root, path, size, sha256=None):
        node = self._open_file(ctx, root, word_path(path), L_O_RDONLY)
        try:
            node.fsync(ctx)
            have = node.getattr(ctx).size
            if have != int(size):
                raise error(errno.EIO, "holds %d bytes of %d" % (have, int(size)))
            if sha256 is not None:
                got = _sha256_of(ctx, node, have)
                if got != sha256.lower():
                    raise error(errno.EIO, "differs from the source (sha256 %s)" % got)
        finally:
            node.close(ctx)
        return ()

    def cmd_attr(self, ctx, root, path, *settings):
        sa = SetAttr()
        for s in settings:
            k, _, v = s.partition("=")
            if k == "mode":
                sa.mode = int(v, 8)
            elif k == "mtime":
                sa.mtime = sa.atime = int(v)
            else:
                raise error(errno.EINVAL, "attr: unknown setting %r" % s)
        node = self._walk(ctx, root, word_path(path))
        try:
            node.setattr(ctx, sa)
        finally:
            node.close(ctx)
        return ()

    def cmd_rename(self, ctx, root, old, new):
        old, new = word_path(old), word_path(new)
        try:
            there = self._walk(ctx, root, new)
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise
        else:
            try:
                if S.S_ISDIR(there.getattr(ctx).mode):
                    raise error(errno.EISDIR, "Is a directory: %s" % "/".join(new))
            finally:
                there.close(ctx)
        odir = self._walk(ctx, root, old[:-1])
        try:
            ndir = self._walk(ctx, root, new[:-1])
            try:
                odir.renameat(ctx, old[-1], ndir, new[-1])
                ndir.open(ctx, L_O_RDONLY)
                ndir.fsync(ctx)
            finally:
                ndir.close(ctx)
        finally:
            odir.close(ctx)
        return ()

    def cmd_remove(self, ctx, root, path):
        names = word_path(path)
        try:
            parent = self._walk(ctx, root, names[:-1])
        except FileNotFoundError:
            return ()
        try:
            parent.unlinkat(ctx, names[-1], 0)
        except FileNotFoundError:
            pass
        finally:
            parent.close(ctx)
        return ()

    def cmd_sweep(self, ctx, root, path, age):
        import time
        names = word_path(path)
        prefixes = tuple(".%s.nine-%s." % (names[-1], k) for k in ("tmp", "delta"))
        try:
            parent = self._walk(ctx, root, names[:-1])
        except FileNotFoundError:
            return (0,)
        gone = 0
        try:
            parent.open(ctx, L_O_RDONLY)
            off, stale = 0, []
            while True:
                batch = parent.readdir(ctx, off, 1 << 16)
                if not batch:
                    break
                stale.extend(e.name for e in batch if e.name.startswith(prefixes))
                off = batch[-1].offset
            before = time.time_ns() - int(float(age) * 1e9)
            for name in stale:
                try:
                    node = self._walk(ctx, parent, [name])
                except FileNotFoundError:
                    continue
                try:
                    old = node.getattr(ctx).mtime < before
                finally:
                    node.close(ctx)
                if old:
                    try:
                        parent.unlinkat(ctx, name, 0)
                        gone += 1
                    except FileNotFoundError:
                        pass
        finally:
            parent.close(ctx)
        return (gone,)

    def cmd_rmdir(self, ctx, root, path):
        from ..protocol import AT_REMOVEDIR
        names = word_path(path)
        parent = self._walk(ctx, root, names[:-1])
        try:
            parent.unlinkat(ctx, names[-1], AT_REMOVEDIR)
        finally:
            parent.close(ctx)
        return ()

    def cmd_list(self, ctx, root, path):
        out = []

        def down(node, prefix):
            node.open(ctx, L_O_RDONLY)
            ents = []
            off = 0
            while True:
                batch = node.readdir(ctx, off, 1 << 16)
                if not batch:
                    break
                ents.extend(e for e in batch if e.name not in (".", ".."))
                off = batch[-1].offset
            for e in sorted(ents, key=lambda e: e.name):
                rel = prefix + [e.name]
                kind = {4: "d", 8: "f"}.get(e.type, "o")
                out.append("%s:%s" % (kind, path_word("/".join(rel))))
                if kind == "d":
                    child = self._walk(ctx, node, [e.name])
                    try:
                        down(child, rel)
                    finally:
                        child.close(ctx)

        names = word_path(path) if path != "." else []
        top = self._walk(ctx, root, names)
        try:
            down(top, [])
        finally:
            top.close(ctx)
        return out

    def cmd_codecs(self, ctx, root):
        return tuple(installed_codecs())

    def cmd_patch(self, ctx, root, basis, delta, out, sha256=None):
        import pyrsync
        nodes = []
        try:
            for path, flags in ((basis, L_O_RDONLY), (delta, L_O_RDONLY), (out, L_O_WRONLY)):
                nodes.append(self._open_file(ctx, root, word_path(path), flags))
            files = [_NodeFile(ctx, nodes[0]), _NodeFile(ctx, nodes[1]),
                     _NodeFile(ctx, nodes[2], digest=True)]
            try:
                pyrsync.patch(*files)
            except OSError:
                raise
            except Exception as e:       # the binding's LibrsyncError: a bad delta
                raise error(errno.EIO, "patch: %s" % e)
        finally:
            for n in nodes:
                n.close(ctx)
        got = files[2].sha.hexdigest()
        if sha256 is not None and got != sha256:
            raise error(errno.EIO, "patched file differs from the source (sha256 %s)" % got)
        return files[2].pos, got


def _sha256_of(ctx, node, size):
    """The sha256 of an open node's size bytes (read by READ_CHUNK, yielding to other
    clients between reads)."""
    import hashlib
    import gevent
    h = hashlib.sha256()
    off = 0
    while off < size:
        data = node.read(ctx, off, min(READ_CHUNK * 16, size - off))
        if not data:
            break
        h.update(data)
        off += len(data)
        gevent.sleep(0)
    return h.hexdigest()


# ---------------------------------------------------------------------------
# compressed frames (nine pcp --compress) and unpack/

FRAME_MAGIC = b"9z"
_HEAD = struct.Struct("<2sBBQII")   # magic, codec, flags, offset, length, payload size
_CRC = struct.Struct("<I")
HEADER = _HEAD.size + _CRC.size     # 24 bytes
MAX_FRAME = 4 << 20          # bytes of one frame, unpacked (and of its payload) at most
MAX_AHEAD = 2 * (MAX_FRAME + HEADER)    # bytes written beyond a gap, kept until it fills
RAW = 0
CODECS = {"zstd": (1, "zstandard"), "lz4": (2, "lz4")}   # name -> (id, Python package)
_BY_ID = {i: name for name, (i, _) in CODECS.items()}
_modules = {}


def codec_module(name):
    """The Python module of codec `name` (zstandard, lz4.frame), or None when its package
    is not installed."""
    if name not in _modules:
        try:
            if name == "zstd":
                import zstandard as m
            elif name == "lz4":
                import lz4.frame as m
            else:
                raise KeyError(name)
        except ImportError:
            m = None
        _modules[name] = m
    return _modules[name]


def installed_codecs():
    """The codecs this host can pack and unpack, in CODECS order."""
    return [n for n in CODECS if codec_module(n) is not None]


class FrameEncoder:
    """Frames of one codec (`zstd`, `lz4`): frame(offset, data) gives the bytes of the
    frames that carry data (split at MAX_FRAME); a piece that does not shrink travels
    raw (codec 0), so that no payload is larger than MAX_FRAME.  One encoder per
    greenlet or thread (the compressors keep state)."""

    def __init__(self, codec, level=None):
        m = codec_module(codec)
        if m is None:
            raise LookupError("%s: the Python package %s is not installed" % (
                codec, CODECS[codec][1]))
        self.codec = codec
        self.id = CODECS[codec][0]
        if codec == "zstd":
            c = m.ZstdCompressor(level=3 if level is None else level, write_checksum=True,
                                 write_content_size=True)
            self._pack = c.compress
        else:
            lvl = 0 if level is None else level
            self._pack = lambda b: m.compress(b, compression_level=lvl,
                                              content_checksum=True, store_size=True)

    def frame(self, offset, data):
        out = []
        mv = memoryview(data)
        for at in range(0, len(mv), MAX_FRAME):
            piece = mv[at:at + MAX_FRAME]
            packed = self._pack(piece)
            if len(packed) < len(piece):
                out.append(frame_header(self.id, offset + at, len(piece), len(packed)))
                out.append(packed)
            else:
                out.append(frame_header(RAW, offset + at, len(piece), len(piece)))
                out.append(bytes(piece))
        return b"".join(out)


def frame_header(codec_id, offset, length, size):
    head = _HEAD.pack(FRAME_MAGIC, codec_id, 0, offset, length, size)
    return head + _CRC.pack(zlib.crc32(head))


def parse_header(buf, pos=0):
    """(codec id, offset, length, payload size) of the header at buf[pos:]; EBADMSG,
    EMSGSIZE, EPROTONOSUPPORT or ENOPKG when it cannot be unpacked here."""
    magic, cid, flags, offset, length, size = _HEAD.unpack_from(buf, pos)
    (crc,) = _CRC.unpack_from(buf, pos + _HEAD.size)
    if magic != FRAME_MAGIC:
        raise error(errno.EBADMSG, "corrupt frame: not a frame header")
    if zlib.crc32(bytes(buf[pos:pos + _HEAD.size])) != crc:
        raise error(errno.EBADMSG, "corrupt frame: header checksum")
    if flags:
        raise error(errno.EBADMSG, "corrupt frame: flags %#x" % flags)
    if length > MAX_FRAME or size > MAX_FRAME:
        raise error(errno.EMSGSIZE, "a frame holds at most %d bytes" % MAX_FRAME)
    if cid == RAW:
        if size != length:
            raise error(errno.EBADMSG, "corrupt frame: raw frame of %d bytes says %d"
                        % (size, length))
    elif cid not in _BY_ID:
        raise error(errno.EPROTONOSUPPORT, "unknown codec %d in a frame" % cid)
    elif codec_module(_BY_ID[cid]) is None:
        name = _BY_ID[cid]
        raise error(errno.ENOPKG, "%s frames: the Python package %s is not installed on "
                    "this host" % (name, CODECS[name][1]))
    return cid, offset, length, size


def unpack_payload(cid, payload, length, offset):
    """The bytes of a frame's payload (EBADMSG when it does not unpack to length)."""
    if cid == RAW:
        return payload
    name = _BY_ID[cid]
    m = codec_module(name)
    try:
        if name == "zstd":
            if m.frame_content_size(payload) != length:
                raise ValueError("its content size is not %d" % length)
            out = m.ZstdDecompressor().decompress(payload, max_output_size=length)
        else:
            if m.get_frame_info(payload).get("content_size") != length:
                raise ValueError("its content size is not %d" % length)
            d = m.LZ4FrameDecompressor()
            out = d.decompress(payload, max_length=length)
            if not d.eof or d.unused_data:
                raise ValueError("not one whole lz4 frame")
    except (ValueError, RuntimeError, m.ZstdError if name == "zstd" else ValueError) as e:
        raise error(errno.EBADMSG, "corrupt %s frame at offset %d: %s" % (
            name, offset, " ".join(str(e).split())))
    if len(out) != length:
        raise error(errno.EBADMSG, "corrupt %s frame at offset %d: %d bytes, not %d" % (
            name, offset, len(out), length))
    return out


class Unpack:
    """unpack/: the names of files/ (the export's attach), where an open file takes a
    stream of frames and writes what they unpack to into the file of files/ (see the
    module's doc).  Its qids are its own (never those of files/)."""

    def __init__(self, attach):
        self.real_attach = attach
        self.qpaths = {}
        self.next = itertools.count(1)

    def attach(self, ctx):
        return UnpackNode(self, self.real_attach(ctx))

    def qpath(self, real):
        q = self.qpaths.get(real)
        if q is None:
            if len(self.qpaths) >= 1 << 16:
                self.qpaths.clear()
            # above bit 62 as the synthetic trees' (nine.synth.files), in a range of
            # their own (bit 61)
            q = self.qpaths[real] = (1 << 62) | (1 << 61) | next(self.next)
        return q


class _Stream:
    """One open's frame stream: where it is, what is ahead of a gap, what is not yet a
    whole frame, the error that ended it."""
    __slots__ = ("at", "buf", "ahead", "ahead_bytes", "error")

    def __init__(self):
        self.at = 0
        self.buf = bytearray()
        self.ahead = {}
        self.ahead_bytes = 0
        self.error = None


class UnpackNode(Node):
    """A node of unpack/: the node of files/ it stands for, wrapped.  Directories walk
    (through files/, so with its confinement and permissions) and list as empty; files
    only open for writing, and take frames."""
    __slots__ = ("un", "real", "stream")
    # regular files and directories of the real file system never wait (nine.server.
    # realfs); open() refuses anything else before opening it
    may_block = False

    def __init__(self, un, real):
        self.un = un
        self.real = real
        self.stream = None

    @property
    def qid(self):
        q = self.real.qid
        return Qid(q.type, 0, self.un.qpath(q.path))

    @property
    def name(self):
        return self.real.name

    def walk(self, ctx, names):
        return [UnpackNode(self.un, n) for n in self.real.walk(ctx, names)]

    def clone(self, ctx):
        return UnpackNode(self.un, self.real.clone(ctx))

    def getattr(self, ctx):
        a = self.real.getattr(ctx)
        if S.S_ISDIR(a.mode):
            mode = S.S_IFDIR | (a.mode & 0o111)
        else:
            mode = S.S_IFREG | (a.mode & 0o222)
        return Attr(qid=self.qid, mode=mode, uid=a.uid, gid=a.gid, nlink=1, size=0,
                    blksize=a.blksize, atime=a.atime, mtime=a.mtime, ctime=a.ctime)

    def setattr(self, ctx, sa):
        raise error(errno.EPERM, "unpack/ changes no attribute (files/ does)")

    def statfs(self, ctx):
        return self.real.statfs(ctx)

    def open(self, ctx, flags):
        fmt = S.S_IFMT(self.real.getattr(ctx).mode)
        acc = flags & L_O_ACCMODE
        if fmt == S.S_IFDIR:
            if acc != L_O_RDONLY:
                raise error(errno.EISDIR)
            self.real.open(ctx, L_O_RDONLY)
            return
        if fmt != S.S_IFREG:
            raise error(errno.EINVAL, "unpack/ writes regular files only")
        if acc != L_O_WRONLY:
            raise error(errno.EACCES, "unpack/ opens for writing only")
        if flags & L_O_APPEND:
            raise error(errno.EINVAL, "unpack/: frames say where they go (no O_APPEND)")
        self.real.open(ctx, L_O_WRONLY | (flags & L_O_TRUNC))
        self.stream = _Stream()

    def readdir(self, ctx, offset, count):
        return []

    def fsync(self, ctx, datasync=0):
        self.real.fsync(ctx, datasync)

    def write(self, ctx, offset, data):
        st = self.stream
        if st is None:
            raise error(errno.EBADF)
        if st.error is not None:
            raise error(*st.error)
        n = len(data)
        if offset != st.at:
            if offset < st.at or offset in st.ahead or st.ahead_bytes + n > MAX_AHEAD:
                raise error(errno.EINVAL, "frame stream: %d bytes at %d, where it is at %d"
                            % (n, offset, st.at))
            st.ahead[offset] = bytes(data)
            st.ahead_bytes += n
            return n
        st.buf += data
        st.at += n
        while st.at in st.ahead:
            piece = st.ahead.pop(st.at)
            st.ahead_bytes -= len(piece)
            st.buf += piece
            st.at += len(piece)
        try:
            self._drain(ctx, st)
        except OSError as e:
            st.error = (e.errno or errno.EIO, e.strerror or os.strerror(e.errno or errno.EIO))
            st.buf = bytearray()
            st.ahead.clear()
            raise
        return n

    def _drain(self, ctx, st):
        """Unpack and write the whole frames at the start of st.buf."""
        buf = st.buf
        pos = 0
        try:
            while len(buf) - pos >= HEADER:
                cid, offset, length, size = parse_header(buf, pos)
                if len(buf) - pos - HEADER < size:
                    break
                start = pos + HEADER
                data = unpack_payload(cid, bytes(buf[start:start + size]), length, offset)
                done = 0
                while done < length:
                    k = self.real.write(ctx, offset + done, data[done:])
                    if k <= 0:
                        raise error(errno.EIO, "short write")
                    done += k
                pos = start + size
        finally:
            del buf[:pos]

    def close(self, ctx):
        self.stream = None
        self.real.close(ctx)
