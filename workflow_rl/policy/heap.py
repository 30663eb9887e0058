"""Give freed tensor memory back to the OS on glibc, so a long CPU run does not hold a fragmented heap.

Why: glibc serves a request below its mmap threshold from the heap, and raises that threshold (up
to 32 MB) each time a larger mmapped block is freed. A policy's activations, KV caches and logits
come in many sizes of 1-32 MB, so after the first large free they all land on the heap; blocks freed
between live ones cannot be returned. On SmolLM2 (CPU) one process of the closed loop grew to
11-13 GB and was killed for memory in a validation pass that needs ~4 GB; the same pass with the
threshold fixed at 8 MB (blocks from 8 MB up are mmapped, and unmapped when freed) held 2.6-5 GB.
``MALLOC_MMAP_THRESHOLD_`` in the environment is the user's own choice and is left as it is.
"""

from __future__ import annotations

import ctypes
import os
import platform

HEAP_MMAP_THRESHOLD = 8 << 20
"""Blocks of this many bytes or more are mmapped (and returned to the OS when freed)."""

_M_MMAP_THRESHOLD = -3  # mallopt's parameter number in glibc's malloc.h
_bounded: bool | None = None


def bound_heap(threshold: int = HEAP_MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes (once per process); whether it is now fixed.

    False where the C library is not glibc or the environment sets ``MALLOC_MMAP_THRESHOLD_``.
    """
    global _bounded
    if _bounded is None:
        _bounded = False
        if platform.libc_ver()[0] == "glibc" and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
            libc = ctypes.CDLL("libc.so.6")
            _bounded = bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold))
            libc.malloc_trim(0)  # what the heap already holds free goes back now
    return _bounded
