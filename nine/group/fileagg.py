"""Aggregators that compare files across hosts: ``hash`` and ``signature``.

Both map the bytes the group service read of a member (one window of the file: the
tools read a file in windows of at most 1 MiB, ``seek K count N``) to a small value,
and both merge like ``equiv``: the members whose windows are alike are folded into one
class, so the root receives one value per distinct content, not one per host.

``hash``       value {"SIZE SHA256": members}: the sha256 of the window's bytes and
               their count.  One class for every window of a file means that every
               host has the same bytes (nine pcp --verify).
``signature``  value {librsync signature: members} (``block=`` bytes per block, a power
               of two that divides the window; ``strong=`` bytes of each block's strong
               sum): the block signature of the window, without librsync's 12-byte
               header (signature_header() gives it).  Windows that start at multiples of
               the block size concatenate into the signature of the whole file, so each
               version of a file present on the hosts reaches the root once (nine psync
               builds one delta per version).  Needs the ``pyrsync`` module (PyPI
               python-rsync) where it maps.

Registered on import (nine.group.aggregate imports this module).
"""

import base64
import hashlib
import struct

from .aggregate import (Aggregator, AggregatorError, _fold_wire, _unfold_wire, fold,
                        natural_key, register)

__all__ = ["Hash", "Signature", "signature_header", "signature_of"]

#: librsync's signature magic for Rabin-Karp rolling sums and BLAKE2 strong sums
#: (RS_RK_BLAKE2_SIG_MAGIC, "rs\x01G")
RK_BLAKE2_MAGIC = 0x72730147
SIG_HEADER = 12


def signature_header(block, strong):
    """The 12 bytes that start a librsync signature of these parameters."""
    return struct.pack(">III", RK_BLAKE2_MAGIC, block, strong)


def signature_of(data, block, strong):
    """The librsync signature of data, without its header."""
    import io
    import pyrsync
    out = io.BytesIO()
    pyrsync.signature(io.BytesIO(bytes(data)), out, strong, RK_BLAKE2_MAGIC, block)
    return out.getvalue()[SIG_HEADER:]


class _Classes(Aggregator):
    """value {content bytes: set of members}, merged by union; the wire form of a
    content is text (to_text/from_text)."""

    def combine(self, values):
        out = {}
        for v in values:
            for content, ms in v.items():
                out.setdefault(content, set()).update(ms)
        return out

    @staticmethod
    def classes(value):
        """(content, members), largest class first, ties by first member."""
        return sorted(value.items(), key=lambda cm: (
            -len(cm[1]), natural_key(min(cm[1], key=natural_key)), cm[0]))

    def to_text(self, content):
        return content.decode("ascii")

    def from_text(self, text):
        return text.encode("ascii")

    def to_wire(self, value):
        return [[self.to_text(c), _fold_wire(ms)] for c, ms in sorted(value.items())]

    def from_wire(self, w):
        out = {}
        try:
            for c, ms in w:
                out.setdefault(self.from_text(c), set()).update(_unfold_wire(ms))
        except (TypeError, ValueError, UnicodeError) as e:
            raise AggregatorError("bad %s value: %s" % (self.name, e))
        return out

    def describe(self, content):
        raise NotImplementedError

    def show(self, value):
        return "".join("%s: %s (%d)\n" % (self.describe(c), fold(ms), len(ms))
                       for c, ms in self.classes(value)).encode("utf-8", "surrogateescape")


@register
class Hash(_Classes):
    """The sha256 of each member's bytes; renders ``SIZE SHA256: members (n)`` lines."""
    name = "hash"
    maps_where_read = True

    def map(self, member, data):
        return {b"%d %s" % (len(data), hashlib.sha256(data).hexdigest().encode()): {member}}

    def describe(self, content):
        return content.decode("ascii")


@register
class Signature(_Classes):
    """The librsync block signature of each member's bytes (see the module's doc)."""
    name = "signature"
    maps_where_read = True

    def __init__(self, block=2048, strong=16):
        block, strong = int(block), int(strong)
        if block < 256 or block > 1 << 20 or block & (block - 1):
            raise AggregatorError("signature: block must be a power of two, 256 to 1 MiB")
        if not 8 <= strong <= 32:
            raise AggregatorError("signature: strong must be 8 to 32 bytes")
        self.block, self.strong = block, strong
        self.params = {"block": block, "strong": strong}

    def map(self, member, data):
        return {signature_of(data, self.block, self.strong): {member}}

    def to_text(self, content):
        return base64.b64encode(content).decode("ascii")

    def from_text(self, text):
        return base64.b64decode(text.encode("ascii"), validate=True)

    def describe(self, content):
        n = len(content) // (4 + self.strong)
        return "%d blocks %s" % (n, hashlib.sha256(content).hexdigest()[:16])
