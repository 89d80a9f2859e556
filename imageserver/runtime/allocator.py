"""How the C allocator holds memory: few arenas, so freed buffers are reused,
and large buffers given back to the system when freed."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Mapping

#: glibc's ``mallopt`` parameters.
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
#: Arenas per process. glibc gives each thread that finds the others' busy an
#: arena of its own, up to 8 per CPU, and each keeps what its thread freed
#: (decoded pixels, originals read): with 2, the peak RSS of the default
#: tree under 32 connections of 12 MP renders was 308 MB instead of 400, at
#: the same CPU per request (docs/performance.md).
ARENAS = 2
#: Allocations from this many bytes up are mapped on their own and unmapped
#: when freed. glibc's own threshold starts at 128 KiB but rises to the size
#: of each mapped block freed (up to 32 MiB), after which a 12 MP original
#: (3 MB) or a decoded draft lands in an arena and what surrounds it pins it
#: there: fixed at 1 MiB, the default tree peaked 26 MB lower under cold
#: 12 MP load, and small originals (whose buffers stay under it) cost the
#: same (docs/performance.md).
MMAP_THRESHOLD = 1 << 20


def hold_allocator(environ: Mapping[str, str] = os.environ) -> dict[str, int]:
    """Set glibc's arenas and mapping threshold for this process; what was
    set, by the name of glibc's variable (none but glibc; a variable the
    operator set is left to glibc)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return {}
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    done = {}
    for variable, parameter, value in (
        ("MALLOC_ARENA_MAX", _M_ARENA_MAX, ARENAS),
        ("MALLOC_MMAP_THRESHOLD_", _M_MMAP_THRESHOLD, MMAP_THRESHOLD),
    ):
        if variable not in environ and mallopt(parameter, value):
            done[variable] = value
    return done
