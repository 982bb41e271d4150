"""Process memory settings for the ``binds`` command (glibc's malloc; elsewhere no-ops), and
:func:`mapped_zeros` for long-lived large arrays.

Large image arrays and activations come and go through a diagnosis. With glibc's default, the
threshold above which an allocation gets its own mapping (returned to the system when freed)
rises after each such free, up to 32 MiB, so later arrays of a few MiB land in the heap and in
the worker threads' arenas, where freed memory mostly stays resident: the peak of a paper-size
two-stage diagnosis varied between 1.42 and 1.56 GB from run to run. A fixed 16 MiB threshold
gives the full-size maps and the largest activations their own mappings (1.37-1.41 GB, no
measurable time cost; 4 MiB halved the convolution rate through page faults). ``binds
diagnose`` sets it; risk scoring does not (its 27-54 MB activations, freshly mapped for every
view, made an exam 15 % slower).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os

import numpy as np

#: ``mallopt`` parameter numbers (glibc ``malloc.h``).
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 16 * 2**20


def _libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt, libc.malloc_trim  # glibc only
    except (OSError, AttributeError):
        return None
    libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    return libc


_LIBC = _libc()


def configure_malloc() -> bool:
    """Set the fixed mapping threshold (unless ``MALLOC_MMAP_THRESHOLD_`` is set: the user's
    choice wins). Returns whether it was set."""
    if _LIBC is None or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    return bool(_LIBC.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


def malloc_trim() -> None:
    """Give freed heap memory (all arenas, worker threads' included) back to the system."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def mapped_zeros(shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
    """A zero array; from 1 MiB on in its own memory mapping, returned to the system when the
    array is freed (any platform, any malloc). For arrays that live long between short-lived
    ones of a few MiB, such as the full-size maps of a diagnosis (kept until the outputs are
    written): most are smaller than :data:`MMAP_THRESHOLD_BYTES`, and in malloc's heap they
    fragmented it (+30-50 MiB of peak memory in a paper-size diagnosis)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    if nbytes < 2**20:
        return np.zeros(shape, dtype)
    return np.frombuffer(mmap.mmap(-1, nbytes), dtype).reshape(shape)
