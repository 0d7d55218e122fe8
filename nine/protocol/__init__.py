"""nine.protocol: a pure 9P codec (9P2000, 9P2000.u, 9P2000.L), no I/O."""
from .const import *  # noqa: F401,F403
from .codec import (ProtocolError, Qid, Stat, Message, Framer, TYPES, BY_NAME, decode, encode,  # noqa: F401
                    peek_header, pack_stat, unpack_stats, pack_dirent, unpack_dirents,
                    rread_header, rreaddir_header)
from .codec import BY_NAME as _BY_NAME

globals().update(_BY_NAME)
