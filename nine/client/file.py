"""A file-like object over an opened Fid (binary only)."""

import errno
import io
import os

from ..protocol.const import SETATTR_SIZE
from ..protocol.codec import Stat
from .errors import nine_error


class File:
    """Binary file object over an opened Fid: read/readinto/readline/write/seek/tell/
    truncate/close, iteration by lines, context manager.

    ``read(n)`` sends iounit-sized Treads, up to ``depth`` in flight at once; it returns
    fewer than n bytes only when the server answers a read short (end of file).
    The file owns its fid: close() clunks it (a file dropped without close() is clunked
    in the background)."""

    def __init__(self, fid, mode="r", name=None, readable=True, writable=False, append=False,
                 pos=0, depth=8):
        self._fid = fid
        self.mode = mode
        self.name = name
        self._readable = readable
        self._writable = writable
        self._append = append
        self._pos = pos
        self.depth = depth
        self._rb = b""       # read-ahead of readline(): file bytes at [_rb_off, _rb_off+len)
        self._rb_off = 0

    # ------------------------------------------------------------------ state

    @property
    def fid(self):
        """The underlying Fid."""
        return self._fid

    @property
    def closed(self):
        return self._fid is None

    @property
    def qid(self):
        return self._fid.qid if self._fid else None

    @property
    def iounit(self):
        return self._fid._iou() if self._fid else 0

    def readable(self):
        return self._readable

    def writable(self):
        return self._writable

    def seekable(self):
        return True

    def isatty(self):
        return False

    def fileno(self):
        raise io.UnsupportedOperation("a 9P file has no file descriptor")

    def flush(self):
        pass

    def _check(self, reading):
        if self._fid is None:
            raise ValueError("I/O operation on closed file")
        if reading and not self._readable:
            raise io.UnsupportedOperation("file not open for reading")
        if not reading and not self._writable:
            raise io.UnsupportedOperation("file not open for writing")

    def __repr__(self):
        return "<nine File %r mode=%r%s>" % (self.name, self.mode,
                                             " closed" if self.closed else "")

    # ------------------------------------------------------------------ reading

    def _take(self, n):
        """Up to n bytes from the read-ahead buffer at the current position."""
        rb = self._rb
        if not rb:
            return b""
        i = self._pos - self._rb_off
        if i < 0 or i >= len(rb):
            self._rb = b""
            return b""
        out = rb[i:i + n] if n >= 0 else rb[i:]
        self._pos += len(out)
        if i + len(out) >= len(rb):
            self._rb = b""
        return out

    def read(self, n=-1):
        self._check(True)
        if n is None or n < 0:
            return self.readall()
        if n == 0:
            return b""
        head = self._take(n)
        if len(head) == n:
            return head
        data = self._fid.pread(self._pos, n - len(head), self.depth)
        self._pos += len(data)
        return head + data if head else data

    def read1(self, n=-1):
        """At most one Tread (after what readline() buffered)."""
        self._check(True)
        if n is None or n < 0:
            n = self.iounit
        head = self._take(n)
        if head:
            return head
        data = self._fid.read(self._pos, min(n, self.iounit))
        self._pos += len(data)
        return data

    def readall(self):
        self._check(True)
        head = self._take(-1)
        data = self._fid.read_all(self._pos, self.depth)
        self._pos += len(data)
        return head + data if head else data

    def readinto(self, b):
        mv = memoryview(b).cast("B")
        data = self.read(len(mv))
        n = len(data)
        mv[:n] = data
        return n

    def readline(self, limit=-1):
        self._check(True)
        parts = []
        got = 0
        while limit < 0 or got < limit:
            rb = self._rb
            i = self._pos - self._rb_off
            if rb and 0 <= i < len(rb):
                j = rb.find(b"\n", i)
                stop = len(rb) if j < 0 else j + 1
                if limit >= 0:
                    stop = min(stop, i + limit - got)
                parts.append(rb[i:stop])
                got += stop - i
                self._pos += stop - i
                if stop >= len(rb):
                    self._rb = b""
                if j >= 0 and stop == j + 1:
                    break
                continue
            data = self._fid.read(self._pos, self.iounit)
            if not data:
                break
            self._rb = data
            self._rb_off = self._pos
        return b"".join(parts)

    def readlines(self, hint=-1):
        out = []
        total = 0
        for line in self:
            out.append(line)
            total += len(line)
            if 0 < hint <= total:
                break
        return out

    def __iter__(self):
        return self

    def __next__(self):
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    def pread(self, n, offset):
        """n bytes at offset, without moving the position."""
        self._check(True)
        return self._fid.pread(offset, n, self.depth)

    # ------------------------------------------------------------------ writing

    def write(self, data):
        self._check(False)
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError("a bytes-like object is required, not %r" % type(data).__name__)
        self._rb = b""
        n = self._fid.pwrite(self._pos, data, self.depth)
        self._pos += n
        return n

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def pwrite(self, data, offset):
        """Write data at offset, without moving the position."""
        self._check(False)
        self._rb = b""
        return self._fid.pwrite(offset, data, self.depth)

    def truncate(self, size=None):
        self._check(False)
        if size is None:
            size = self._pos
        f = self._fid
        if f.conn.dotl:
            f.setattr(SETATTR_SIZE, size=size)
        else:
            st = Stat.dont_touch()
            st.length = size
            f.wstat(st)
        self._rb = b""
        return size

    # ------------------------------------------------------------------ position

    def seek(self, offset, whence=os.SEEK_SET):
        if self._fid is None:
            raise ValueError("I/O operation on closed file")
        if whence == os.SEEK_SET:
            pos = offset
        elif whence == os.SEEK_CUR:
            pos = self._pos + offset
        elif whence == os.SEEK_END:
            pos = self._fid.fstat().st_size + offset
        else:
            raise ValueError("bad whence %r" % whence)
        if pos < 0:
            raise nine_error(errno.EINVAL, "negative seek position")
        self._pos = pos
        return pos

    def tell(self):
        return self._pos

    def stat(self):
        """Dialect-neutral StatResult of the open file."""
        return self._fid.fstat()

    # ------------------------------------------------------------------ closing

    def close(self):
        f = self._fid
        if f is not None:
            self._fid = None
            f.clunk()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        f = getattr(self, "_fid", None)
        if f is not None:
            self._fid = None
            try:
                f.clunk_nowait()
            except Exception:
                pass
