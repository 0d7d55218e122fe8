"""FiNAL: the File Namespace Aggregation Language (docs/final.md).

    from nine.final import compose
    attach = compose('''
        merge *:/proc at /proc          # proc/cpuinfo/serverA, proc/1/serverA/cmdline
    ''', {"serverA": attach_a, "serverB": attach_b}, qidmap)
    Server({"": attach})
"""

from .lang import FinalError, Program, Statement, Source, parse, check, compile_glob  # noqa: F401
from .compose import Composition, compose  # noqa: F401

__all__ = ["FinalError", "Program", "Statement", "Source", "parse", "check", "compile_glob",
           "Composition", "compose"]
