"""Lesion copy-paste: a training augmentation that moves a real finding into a normal film.

A small training set has few findings (mini-MIAS: about 70 circled ones in 208 training
films) and many normal films. :func:`paste_lesion` takes a finding with its mask from one
film (the donor) and blends it into a normal film (the recipient), on the model grid, so that
the normal film becomes a new positive example with a known outline:

* the donor's pixels inside the mask replace the recipient's, shifted by the difference of
  the two films' local background (the median of a ring around the mask), so the finding
  keeps its contrast against the tissue it lands in; the blend fades to the recipient's own
  pixels toward the mask's edge (mini-MIAS circles enclose the finding with a margin), so no
  step marks where it was pasted;
* the finding lands at the donor's place (both films are in the model's canonical
  orientation, chest wall on one side) or, if that is not inside the recipient's breast,
  centred on a random breast pixel where it is (up to :data:`TRIES` of them): at least
  :data:`MIN_INSIDE` of the mask and of its ring must lie on breast pixels (above
  :data:`~.preprocess.BREAST_THRESHOLD`); else nothing is pasted.

:class:`~.data.StudyDataset` applies it to normal mammograms with probability
``lesion_paste`` (a training setting), before the random affine, so mask and pixels move
together.
"""

from __future__ import annotations

import numpy as np

from .preprocess import BREAST_THRESHOLD

#: Share of the pasted mask and of its background ring that must lie on the recipient's breast.
MIN_INSIDE = 0.95
#: Tries at a random place in the breast when the donor's own place does not fit.
TRIES = 20
#: Width of the blend at the mask's edge (Gaussian sigma), as a share of the finding's radius.
FEATHER = 0.2


def _gaussian_1d(sigma: float) -> np.ndarray:
    r = max(1, int(np.ceil(3 * sigma)))
    x = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of a 2D array (zero outside)."""
    k = _gaussian_1d(sigma)
    a = np.apply_along_axis(lambda v: np.convolve(v, k, mode="same"), 0, a)
    return np.apply_along_axis(lambda v: np.convolve(v, k, mode="same"), 1, a)


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


def _shifted(a: np.ndarray, dy: int, dx: int) -> np.ndarray | None:
    """``a`` moved by ``(dy, dx)`` pixels, or None if a True pixel would leave the array."""
    rows, cols = np.nonzero(a)
    if rows.size == 0:
        return None
    if rows.min() + dy < 0 or rows.max() + dy >= a.shape[0] or cols.min() + dx < 0 or cols.max() + dx >= a.shape[1]:
        return None
    out = np.zeros_like(a)
    out[rows + dy, cols + dx] = True
    return out


def paste_lesion(recipient: np.ndarray, donor: np.ndarray, donor_mask: np.ndarray,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray] | None:
    """Blend the finding ``donor_mask`` of ``donor`` into ``recipient`` (2D, same shape).

    Returns ``(image, mask)``: the recipient with the finding, and the finding's mask where
    it landed; ``None`` when the mask is empty or no place inside the recipient's breast fits.
    Inputs are not changed.
    """
    recipient = np.asarray(recipient, np.float32)
    donor = np.asarray(donor, np.float32)
    mask = np.asarray(donor_mask) > 0
    if recipient.shape != donor.shape or mask.shape != donor.shape:
        raise ValueError(f"paste_lesion: shapes differ ({recipient.shape}, {donor.shape}, {mask.shape})")
    area = int(mask.sum())
    if area == 0:
        return None
    radius = float(np.sqrt(area / np.pi))
    width = max(3, int(round(0.5 * radius)))
    ring = _ring(mask, width)
    if not ring.any():
        return None
    breast = recipient > BREAST_THRESHOLD
    inside = np.argwhere(breast)
    if inside.size == 0:
        return None
    # the donor's own place first, then the mask's centre on random breast pixels
    centre = np.argwhere(mask).mean(0)
    targets = inside[rng.integers(len(inside), size=TRIES)]
    shifts = [(0, 0)] + [(int(round(t[0] - centre[0])), int(round(t[1] - centre[1]))) for t in targets]
    for dy, dx in shifts:
        m2 = _shifted(mask, dy, dx)
        r2 = _shifted(ring | mask, dy, dx)
        if m2 is None or r2 is None:
            continue
        r2 &= ~m2
        if breast[m2].mean() < MIN_INSIDE or breast[r2].mean() < MIN_INSIDE:
            continue
        moved = np.zeros_like(donor)
        rows, cols = np.nonzero(mask)
        moved[rows + dy, cols + dx] = donor[rows, cols]
        # the donor's values relative to its own background, on the recipient's background
        value = moved - float(np.median(donor[ring])) + float(np.median(recipient[r2]))
        # 1 inside, falling to 0 at the mask's edge (a blurred edge is 0.5 there): no step
        alpha = np.clip(2.0 * _blur(m2.astype(np.float64), max(1.0, FEATHER * radius)) - 1.0, 0.0, 1.0)
        alpha[~m2] = 0.0
        blended = (1 - alpha) * recipient + alpha * value
        out = np.clip(blended, 0.0, max(1.0, float(recipient.max()))).astype(np.float32)
        return out, m2
    return None


__all__ = ["MIN_INSIDE", "paste_lesion"]
