"""OpenCV, imported on first use, once for every thread.

A server that never looks for faces nor judges a quality level does not
load it. Its package swaps itself in ``sys.modules`` while it loads, so a
second thread importing it at the same moment finds a module that is not
a package (``No module named 'cv2.data'``): the first use takes a lock.
OpenCV runs single-threaded in the calling thread (the processing pool
gives the parallelism) and releases the GIL while it works.
"""

from __future__ import annotations

import threading
from typing import Any

_importing = threading.Lock()
_opencv: Any = None


def load() -> Any:
    """The ``cv2`` module (with ``cv2.data``), single-threaded."""
    global _opencv
    with _importing:
        if _opencv is None:
            import cv2
            import cv2.data

            cv2.setNumThreads(1)
            _opencv = cv2
    return _opencv
