"""How the C allocator holds memory: few arenas, so freed buffers are reused."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Mapping

#: glibc's ``mallopt`` parameter: the most arenas a process may have.
_M_ARENA_MAX = -8
#: Arenas per process. glibc gives each thread that finds the others' busy an
#: arena of its own, up to 8 per CPU, and each keeps what its thread freed
#: (decoded pixels, originals read): with 2, the peak RSS of the default
#: tree under 32 connections of 12 MP renders was 308 MB instead of 400, at
#: the same CPU per request (docs/performance.md).
ARENAS = 2


def limit_arenas(environ: Mapping[str, str] = os.environ) -> bool:
    """Hold this process to `ARENAS` allocator arenas; whether it was done
    (glibc only; an operator's ``MALLOC_ARENA_MAX`` is left to glibc)."""
    if "MALLOC_ARENA_MAX" in environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_ARENA_MAX, ARENAS))
