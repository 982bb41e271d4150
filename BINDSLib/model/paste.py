"""Lesion copy-paste: a training augmentation that moves a real finding into a normal film.

A small training set has few findings (mini-MIAS: about 70 circled ones in 208 training
films) and many normal films. :func:`paste_lesion` takes a finding with its mask from one
film (the donor) and blends it into a normal film (the recipient), on the model grid, so that
the normal film becomes a new positive example with a known outline:

* the donor's pixels inside the mask replace the recipient's, shifted by the difference of
  the two films' local background (the median of the breast pixels of a ring around the
  mask), so the finding keeps its contrast against the tissue it lands in; the blend fades to
  the recipient's own pixels toward the mask's edge (mini-MIAS circles enclose the finding
  with a margin), so no step marks where it was pasted;
* the finding lands at the donor's place (both films are in the model's canonical
  orientation, chest wall on one side) or, if that is not inside the recipient's breast,
  centred on a random breast pixel where it is (up to :data:`TRIES` of them): at least
  :data:`MIN_INSIDE` of the mask and :data:`RING_INSIDE` of its ring must lie on the breast
  (the largest region above :data:`~.preprocess.BREAST_THRESHOLD`,
  :func:`~.preprocess.breast_region`); else nothing is pasted.

A donor must itself be a finding on the breast (:func:`usable_donor`): a mask of at least
:data:`MIN_AREA` pixels (a smaller one would change too few pixels to show), :data:`MIN_INSIDE`
of it and :data:`RING_INSIDE` of its ring on the donor's breast (the film's background is
left out of the ring's median, which would otherwise misjudge the finding's contrast).

:class:`~.data.StudyDataset` applies it to normal mammograms with probability
``lesion_paste`` (a training setting), before the random affine, so mask and pixels move
together.
"""

from __future__ import annotations

import numpy as np

from .preprocess import breast_region

#: Share of the mask that must lie on the breast (donor and recipient).
MIN_INSIDE = 0.95
#: Share of the mask's background ring that must lie on the breast: the background is the
#: median of the ring's breast pixels, so these must be enough of it.
RING_INSIDE = 0.5
#: Tries at a random place in the breast when the donor's own place does not fit.
TRIES = 20
#: Width of the blend at the mask's edge (Gaussian sigma), as a share of the finding's radius.
FEATHER = 0.2
#: The smallest finding pasted, in model-grid pixels (a circle of radius 2).
MIN_AREA = 13


def _ring(mask: np.ndarray, width: int) -> np.ndarray:
    """Pixels within ``width`` (chessboard distance) of ``mask``, the mask left out."""
    grown = mask.copy()
    for _ in range(width):
        g = grown.copy()
        g[1:] |= grown[:-1]
        g[:-1] |= grown[1:]
        g[:, 1:] |= grown[:, :-1]
        g[:, :-1] |= grown[:, 1:]
        grown = g
    return grown & ~mask


def _ring_width(area: int) -> int:
    return max(3, int(round(0.5 * np.sqrt(area / np.pi))))


def _shifted(a: np.ndarray, dy: int, dx: int) -> np.ndarray | None:
    """``a`` moved by ``(dy, dx)`` pixels, or None if a True pixel would leave the array."""
    rows, cols = np.nonzero(a)
    if rows.min() + dy < 0 or rows.max() + dy >= a.shape[0] or cols.min() + dx < 0 or cols.max() + dx >= a.shape[1]:
        return None
    out = np.zeros_like(a)
    out[rows + dy, cols + dx] = True
    return out


def _donor_background(donor: np.ndarray, mask: np.ndarray) -> float | None:
    """The median of the donor's breast pixels around its finding, or None when the finding
    is too small, or it or its ring is not on the donor's breast."""
    area = int(mask.sum())
    if area < MIN_AREA or not np.isfinite(donor[mask]).all():
        return None
    breast = breast_region(np.nan_to_num(donor, nan=0.0))
    if breast is None:
        return None
    ring = _ring(mask, _ring_width(area))
    if not ring.any() or breast[mask].mean() < MIN_INSIDE or breast[ring].mean() < RING_INSIDE:
        return None
    values = donor[ring & breast]
    values = values[np.isfinite(values)]
    return float(np.median(values)) if values.size else None


def usable_donor(donor: np.ndarray, donor_mask: np.ndarray) -> bool:
    """Whether the finding ``donor_mask`` of the film ``donor`` can be pasted: at least
    :data:`MIN_AREA` pixels, finite values, :data:`MIN_INSIDE` of it and :data:`RING_INSIDE`
    of its ring on the donor's breast."""
    return _donor_background(np.asarray(donor, np.float32), np.asarray(donor_mask) > 0) is not None


def paste_lesion(recipient: np.ndarray, donor: np.ndarray, donor_mask: np.ndarray,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray] | None:
    """Blend the finding ``donor_mask`` of ``donor`` into ``recipient`` (2D, same shape).

    Returns ``(image, mask)``: the recipient with the finding, and the finding's mask where
    it landed; only pixels under that mask change. ``None`` when the donor is not usable
    (:func:`usable_donor`) or no place inside the recipient's breast fits. Inputs are not
    changed.
    """
    from ..synthetic.fields import gaussian_blur  # (on first use: the synthetic package is not small)

    recipient = np.asarray(recipient, np.float32)
    donor = np.asarray(donor, np.float32)
    mask = np.asarray(donor_mask) > 0
    if recipient.shape != donor.shape or mask.shape != donor.shape:
        raise ValueError(f"paste_lesion: shapes differ ({recipient.shape}, {donor.shape}, {mask.shape})")
    background = _donor_background(donor, mask)
    if background is None:
        return None
    breast = breast_region(np.nan_to_num(recipient, nan=0.0))
    if breast is None:
        return None
    area = int(mask.sum())
    radius = float(np.sqrt(area / np.pi))
    ring = _ring(mask, _ring_width(area))
    # the donor's own place first, then the mask's centre on random breast pixels
    centre = np.argwhere(mask).mean(0)
    inside = np.argwhere(breast)
    targets = inside[rng.integers(len(inside), size=TRIES)]
    shifts = [(0, 0)] + [(int(round(t[0] - centre[0])), int(round(t[1] - centre[1]))) for t in targets]
    rows, cols = np.nonzero(mask)
    for dy, dx in shifts:
        m2 = _shifted(mask, dy, dx)
        r2 = None if m2 is None else _shifted(ring | mask, dy, dx)
        if r2 is None:
            continue
        r2 &= ~m2
        if breast[m2].mean() < MIN_INSIDE or breast[r2].mean() < RING_INSIDE:
            continue
        around = recipient[r2 & breast]
        around = around[np.isfinite(around)]
        if not around.size:
            continue
        # the donor's values relative to its own background, on the recipient's background
        value = donor[rows, cols] - background + float(np.median(around))
        # 1 at the finding's centre, falling to 0 at the mask's edge (where a blurred edge is
        # 0.5): no step
        sigma = max(1.0, FEATHER * radius)
        blur = gaussian_blur(m2.astype(np.float32), (sigma, sigma), (1.0, 1.0))[rows + dy, cols + dx]
        alpha = np.clip((blur - 0.5) / max(float(blur.max()) - 0.5, 1e-6), 0.0, 1.0)
        out = recipient.copy()
        old = recipient[rows + dy, cols + dx]
        low = min(0.0, float(np.nanmin(recipient)))
        high = max(1.0, float(np.nanmax(recipient)))
        out[rows + dy, cols + dx] = np.clip((1 - alpha) * old + alpha * value, low, high)
        return out, m2
    return None


__all__ = ["MIN_AREA", "MIN_INSIDE", "RING_INSIDE", "paste_lesion", "usable_donor"]
