"""hold_allocator: glibc's arenas held to a few and its mapping threshold
fixed, unless the operator chose."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import unittest

from imageserver.runtime import allocator

#: Run in a process of its own (a setting stays for the process's life):
#: prints what was set, and whether each of two 2 MiB blocks allocated in
#: turn was mapped on its own. glibc's own threshold rises to the size of a
#: mapped block once it is freed, so its second block comes from an arena.
PROBE = textwrap.dedent(
    """
    import ctypes, json, os, sys
    from imageserver.runtime.allocator import hold_allocator

    class Info(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in (
            "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks "
            "fordblks keepcost").split()]

    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = Info
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    done = hold_allocator(json.loads(sys.argv[1]))

    def mapped():
        before = libc.mallinfo2().hblks
        block = libc.malloc(2 << 20)
        alone = libc.mallinfo2().hblks - before
        libc.free(block)
        return alone == 1

    print(json.dumps([done, mapped(), mapped()]))
    """
)


def probe(environ: dict[str, str]) -> list[object]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(environ)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out)  # type: ignore[no-any-return]


class HoldAllocatorTests(unittest.TestCase):
    def test_glibc_takes_both(self) -> None:
        self.assertEqual(
            probe({}),
            [{"MALLOC_ARENA_MAX": 2, "MALLOC_MMAP_THRESHOLD_": 1 << 20}, True, True],
        )

    def test_an_operators_settings_are_left_to_glibc(self) -> None:
        # glibc's dynamic threshold: the second block is not mapped alone.
        self.assertEqual(
            probe({"MALLOC_ARENA_MAX": "8", "MALLOC_MMAP_THRESHOLD_": "x"}),
            [{}, True, False],
        )

    def test_each_setting_is_the_operators_alone(self) -> None:
        self.assertEqual(
            allocator.hold_allocator(
                {"MALLOC_ARENA_MAX": "8", "MALLOC_MMAP_THRESHOLD_": "131072"}
            ),
            {},
        )
