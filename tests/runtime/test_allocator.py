"""limit_arenas: glibc's arenas held to a few, unless the operator chose."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import unittest

from imageserver.runtime import allocator


class LimitArenasTests(unittest.TestCase):
    def test_glibc_takes_it(self) -> None:
        # In a process of its own: the setting stays for the process's life.
        code = textwrap.dedent(
            """
            from imageserver.runtime.allocator import limit_arenas
            print(limit_arenas({}))
            """
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.strip()
        self.assertEqual(out, "True")

    def test_an_operators_setting_is_left_to_glibc(self) -> None:
        self.assertFalse(allocator.limit_arenas({"MALLOC_ARENA_MAX": "8"}))
