"""Lesion-focused crops: a box around the lesion, then a resampled crop of fixed size.

Boxes are in the normalised coordinates of ``torch.nn.functional.affine_grid``
(``align_corners=False``): per axis a centre in [-1, 1] and a half-size (1 = the whole axis),
axes ordered (x = cols, y = rows[, z = slices]). Crops are taken with ``grid_sample``, so the
same code serves 2D and 3D, CPU and CUDA, whole batches at once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def lesion_boxes(region: torch.Tensor, threshold: float = 0.5, margin: float = 0.25,
                 min_fraction: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """Box around the lesion region of each map.

    Parameters
    ----------
    region : ``(N, 1, *spatial)`` lesion probability or mask in [0, 1].
    threshold : voxels ``>= threshold`` belong to the lesion; a map with none gets a box
        centred on its maximum.
    margin : added on each side, as a fraction of the box size.
    min_fraction : smallest box side, as a fraction of the axis length.

    Returns
    -------
    centres, half_sizes : ``(N, nd)`` each, axes in (x, y[, z]) order. The two in-plane sides
    are made equal (model grids are isotropic in-plane, so the crop keeps the lesion's aspect).
    """
    r = region[:, 0].detach().float()
    n, spatial = r.shape[0], r.shape[1:]
    nd = len(spatial)
    # per axis, the rows holding a lesion voxel: the maximum over the other axes >= threshold
    # (one vectorised reduction of the map per axis, no boolean copy of it)
    projs = [(r.amax(dim=[d + 1 for d in range(nd) if d != a]) if nd > 1 else r) >= threshold
             for a in range(nd)]
    has = projs[0].any(1)
    if bool(has.all()):  # no map needs its maximum
        peak = torch.zeros((n, nd), dtype=torch.long, device=r.device)
    else:
        peak = torch.stack(torch.unravel_index(r.flatten(1).argmax(1), spatial), 1)  # array order
    lo = torch.empty((n, nd), device=r.device)
    hi = torch.empty((n, nd), device=r.device)
    for a in range(nd):
        proj = projs[a]
        size = spatial[a]
        idx = torch.arange(size, device=r.device).float()
        big = torch.full_like(proj, size, dtype=torch.float)
        first = torch.where(proj, idx, big).amin(1)
        last = torch.where(proj, idx, -big).amax(1)
        lo[:, a] = torch.where(has, first, peak[:, a].float())
        hi[:, a] = torch.where(has, last, peak[:, a].float())
    sizes = torch.tensor(spatial, device=r.device, dtype=torch.float)
    centre_idx = (lo + hi) / 2
    extent = (hi - lo + 1) * (1 + 2 * margin)
    extent = torch.maximum(extent, min_fraction * sizes)
    if nd >= 2:  # equal physical in-plane sides (rows, cols are the last two axes)
        side = torch.maximum(extent[:, -1], extent[:, -2])
        extent = torch.cat([extent[:, :-2], side[:, None], side[:, None]], 1)
    limit = sizes.clone()
    if nd >= 2:  # in-plane: a square box may exceed the shorter side (padded with 0)
        limit[-2:] = sizes[-2:].max()
    extent = torch.minimum(extent, limit)
    centre = (2 * (centre_idx + 0.5) / sizes) - 1
    half = extent / sizes
    return centre.flip(1), half.flip(1)


def crop(images: torch.Tensor, centres: torch.Tensor, half_sizes: torch.Tensor,
         size: tuple[int, ...]) -> torch.Tensor:
    """Resample the boxes of ``images`` ``(N, C, *spatial)`` to crops ``(N, C, *size)``.

    Outside the image the crop is 0 (the padding value of prepared inputs).
    """
    n, c = images.shape[:2]
    nd = images.ndim - 2
    theta = torch.zeros((n, nd, nd + 1), device=images.device, dtype=images.dtype)
    idx = torch.arange(nd, device=images.device)
    theta[:, idx, idx] = half_sizes.to(images.dtype)
    theta[:, :, nd] = centres.to(images.dtype)
    grid = F.affine_grid(theta, [n, c, *size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
