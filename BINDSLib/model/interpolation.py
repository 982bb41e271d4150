"""Separable linear interpolation of tensors on the CPU.

A crop box and a resize are each a scale and a shift per axis, so their (bi/tri)linear
weights are products of per-axis weights: one pass per axis (gather the two neighbouring rows,
blend) gives ``grid_sample``'s and ``F.interpolate``'s values with a fraction of their work
where their kernels are slow on the CPU: ``grid_sample`` in 3D (the paper-size MRI crop, 2
threads: ~120 ms -> ~25 ms for a lesion-sized box, -> ~75 ms for the whole volume) and
``interpolate`` of a single-channel 3D map to the input size (lesion logits, saliency:
~17 ms -> ~7-9 ms each). Results differ from theirs by float rounding only
(coordinates here are float64).
"""

from __future__ import annotations

import math

import torch


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


def resize_taps(size_in: int, size_out: int):
    """``F.interpolate``'s linear taps along one axis (``align_corners=False``): source
    coordinate ``p = (o + 0.5) size_in / size_out - 0.5``, 0 below 0; the upper neighbour
    clamped to the last row."""
    o = torch.arange(size_out, dtype=torch.float64)
    p = ((o + 0.5) * (size_in / size_out) - 0.5).clamp_min(0)
    i0 = torch.floor(p).long().clamp_max(size_in - 1)
    w1 = (p - i0).clamp(0, 1)
    return i0, (i0 + 1).clamp_max(size_in - 1), 1 - w1, w1


#: Output bytes per chunk of :func:`separable_linear` (its temporaries are a few times this).
CHUNK_BYTES = 4 * 2**20


def separable_linear(t: torch.Tensor, taps: list) -> torch.Tensor:
    """Apply per-axis taps to ``t (*spatial, C)`` (any strides): ``taps[a] = (i0, i1, w0, w1)``
    of axis ``a``. Returns a new contiguous ``(*out, C)``.

    The output is made in chunks along the first axis of about :data:`CHUNK_BYTES`, each from
    the source rows its taps reach, so the temporaries stay small (a whole-volume MRI crop in
    one piece raised the peak memory of a diagnosis by ~120 MiB). Within a chunk, axes that
    shrink the most go first (the least work after them), inner axes first among equals (their
    gathers copy the shortest rows, so they should see the smallest tensor).
    """
    nd = t.ndim - 1
    sizes = [len(tap[0]) for tap in taps]
    out = t.new_empty((*sizes, t.shape[-1]))
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


def resize(x: torch.Tensor, size) -> torch.Tensor:
    """``F.interpolate(x, size, mode="(bi/tri)linear", align_corners=False)``; a 3D map of one
    channel on the CPU, without autograd, by :func:`separable_linear` (the same values to float
    rounding, contiguous)."""
    import torch.nn.functional as F

    size = tuple(int(v) for v in size)
    if not (x.ndim == 5 and x.shape[1] == 1 and x.device.type == "cpu"
            and not (torch.is_grad_enabled() and x.requires_grad)):
        mode = "bilinear" if x.ndim == 4 else "trilinear"
        return F.interpolate(x, size=size, mode=mode, align_corners=False)
    taps = [resize_taps(x.shape[2 + a], size[a]) for a in range(3)]
    out = [separable_linear(x[k, 0, ..., None], taps)[..., 0] for k in range(x.shape[0])]
    return torch.stack(out)[:, None]
