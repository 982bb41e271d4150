"""Separable linear interpolation of tensors on the CPU (the 3D lesion crops).

A crop box is a scale and a shift per axis, so ``grid_sample``'s trilinear weights are
products of per-axis weights: one pass per axis (gather the two neighbouring rows, blend) gives
its values with a fraction of its work. On the paper-size MRI crop (7 x 96 x 192 x 192 to
96^3, 2 threads, as ``binds diagnose`` allocates memory): ~40-70 ms instead of ~90-160 ms for
boxes up to 70 % of the volume, about the same (~110-120 ms) for the whole volume. Results
differ from ``grid_sample``'s by float rounding only (its grid coordinates are float32, these
float64). Tried and left out: the same for ``interpolate``'s single-channel 3D up-sampling of
the lesion logits and saliency (no faster once its output is freshly mapped memory).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..memory import mapped_zeros


def box_taps(centre: float, half: float, size_in: int, size_out: int):
    """``grid_sample``'s taps along one axis (``align_corners=False``, zero padding): output
    ``o`` reads source coordinate ``p = ((x + 1) size_in - 1) / 2`` at
    ``x = half ((2 o + 1) / size_out - 1) + centre``, from ``floor(p)`` and ``floor(p) + 1``;
    a tap outside the source has weight 0. Returns ``(i0, i1, w0, w1)``, indices clamped
    into the source."""
    o = torch.arange(size_out, dtype=torch.float64)
    p = ((half * ((2 * o + 1) / size_out - 1) + centre + 1) * size_in - 1) / 2
    i0 = torch.floor(p)
    w1 = p - i0
    i0 = i0.long()
    i1 = i0 + 1
    w0 = torch.where((i0 >= 0) & (i0 < size_in), 1 - w1, 0.0)
    w1 = torch.where((i1 >= 0) & (i1 < size_in), w1, 0.0)
    return i0.clamp(0, size_in - 1), i1.clamp(0, size_in - 1), w0, w1


#: Output bytes per chunk of :func:`separable_linear` (its temporaries are a few times this).
#: With 4 MiB chunks and the output in malloc's heap, the fresh-process peak of a paper-size
#: diagnosis was ~30 MiB above ``grid_sample``'s (median of 8 runs each); with 1 MiB chunks and
#: a mapped output (:func:`_mapped_empty`) it is the same (6 runs each).
CHUNK_BYTES = 2**20


def _mapped_empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An output of 1 MiB or more in its own memory mapping (:func:`~BINDSLib.memory.mapped_zeros`),
    out of malloc's heap, where the chunks' short-lived temporaries come and go."""
    np_dtype = {torch.float32: np.float32, torch.float64: np.float64}.get(dtype)
    if np_dtype is None:
        return torch.empty(shape, dtype=dtype)
    return torch.from_numpy(mapped_zeros(shape, np_dtype))


def separable_linear(t: torch.Tensor, taps: list) -> torch.Tensor:
    """Apply per-axis taps to ``t (*spatial, C)`` (any strides): ``taps[a] = (i0, i1, w0, w1)``
    of axis ``a``. Returns a new contiguous ``(*out, C)``.

    The output is made in chunks along the first axis of about :data:`CHUNK_BYTES`, each from
    the source rows its taps reach, so the temporaries stay small (a whole-volume MRI crop in
    one piece, copied, raised the peak memory of a diagnosis by ~130 MiB). Within a chunk, axes that
    shrink the most go first (the least work after them), inner axes first among equals (their
    gathers copy the shortest rows, so they should see the smallest tensor).
    """
    nd = t.ndim - 1
    sizes = [len(tap[0]) for tap in taps]
    out = _mapped_empty((*sizes, t.shape[-1]), t.dtype)
    row_bytes = max(out[0].numel() * out.element_size(), 1)
    step = max(1, CHUNK_BYTES // row_bytes)
    i0, i1, w0, w1 = taps[0]
    for a0 in range(0, sizes[0], step):
        rows = slice(a0, min(a0 + step, sizes[0]))
        lo = int(torch.minimum(i0[rows], i1[rows]).min())
        hi = int(torch.maximum(i0[rows], i1[rows]).max()) + 1
        chunk_taps = [(i0[rows] - lo, i1[rows] - lo, w0[rows], w1[rows]), *taps[1:]]
        x = t.narrow(0, lo, hi - lo)
        ratios = [len(chunk_taps[a][0]) / x.shape[a] for a in range(nd)]
        for a in sorted(range(nd), key=lambda a: (ratios[a], -a)):
            j0, j1, v0, v1 = chunk_taps[a]
            # as (outer, axis, inner): torch's gather is several times faster on the middle
            # axis of a 3D view than on an inner axis of a 4D one
            shape = list(x.shape)
            flat = x.reshape(math.prod(shape[:a]), shape[a], -1)
            shape[a] = len(j0)
            v0, v1 = v0.to(x.dtype).view(1, -1, 1), v1.to(x.dtype).view(1, -1, 1)
            x = flat.index_select(1, j0).mul_(v0).addcmul_(flat.index_select(1, j1), v1).view(shape)
            del flat
        out[rows] = x
        del x
    return out
