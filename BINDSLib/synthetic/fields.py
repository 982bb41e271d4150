"""Random fields and small array helpers shared by the synthetic renderers.

Everything here is vectorised numpy (no SciPy) and deterministic for a given
``numpy.random.Generator`` state. Textures are shaped white noise: the noise is
filtered in the Fourier domain by a power law ``(f^2 + f0^2)^(-beta/4)`` (``f`` in cycles
per mm), so the same parameters give the same physical look at any pixel spacing.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = [
    "child_rngs", "derive_seed", "powerlaw_noise", "gaussian_blur", "smooth_curve",
    "sigmoid", "bilinear", "quantile_threshold", "splat",
]


def derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed derived deterministically from ``seed`` and integer ``keys``.

    Used to give case ``i`` of a batch its own seed, so that ``make_study(derive_seed(s, i))``
    is exactly case ``i`` of ``write_phantoms(..., seed=s)``.
    """
    ss = np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF, *[int(k) for k in keys]])
    return int(ss.generate_state(1, dtype=np.uint64)[0]) & 0x7FFFFFFFFFFFFFFF


def child_rngs(seed: int, names: Sequence[str]) -> dict[str, np.random.Generator]:
    """Independent generators, one per name, all derived from ``seed``.

    Each stream depends only on ``seed`` and the *position* of its name, so rendering fewer
    modalities never changes what the others look like.
    """
    children = np.random.SeedSequence(int(seed) & 0xFFFFFFFFFFFFFFFF).spawn(len(names))
    return {n: np.random.default_rng(c) for n, c in zip(names, children)}


def _freq_grid(shape: Sequence[int], spacing_mm: Sequence[float]) -> list[np.ndarray]:
    """Broadcastable frequency axes (cycles/mm) for an ``rfftn`` of ``shape``.

    ``spacing_mm`` is given in array-axis order (same order as ``shape``).
    """
    axes = []
    n = len(shape)
    for k, (m, d) in enumerate(zip(shape, spacing_mm)):
        f = np.fft.rfftfreq(m, d) if k == n - 1 else np.fft.fftfreq(m, d)
        s = [1] * n
        s[k] = f.size
        axes.append(f.reshape(s).astype(np.float32))
    return axes


def powerlaw_noise(rng: np.random.Generator, shape: Sequence[int], spacing_mm: Sequence[float],
                   beta: float = 3.0, f0_per_mm: float = 0.02,
                   stretch: Sequence[float] | None = None,
                   highcut_per_mm: float | None = None) -> np.ndarray:
    """Zero-mean, unit-variance Gaussian noise with a power-law spectrum.

    Parameters
    ----------
    rng : numpy.random.Generator
    shape : sequence of int
        Array shape, e.g. ``(rows, cols)`` or ``(slices, rows, cols)``.
    spacing_mm : sequence of float
        Sample spacing along each array axis (same order as ``shape``).
    beta : float
        Spectral exponent: power ~ ``f^-beta`` (mammographic texture ~3).
    f0_per_mm : float
        Low-frequency roll-off (sets the largest blob size, about ``1/f0`` mm).
    stretch : sequence of float, optional
        Per-axis correlation stretch; ``> 1`` makes structures longer along that axis.
    highcut_per_mm : float, optional
        Gaussian high-frequency cut-off (removes detail finer than about ``1/highcut`` mm).

    Returns
    -------
    numpy.ndarray
        ``float32`` array of ``shape``.
    """
    shape = tuple(int(s) for s in shape)
    white = rng.standard_normal(shape, dtype=np.float32)
    spec = np.fft.rfftn(white)
    freqs = _freq_grid(shape, spacing_mm)
    stretch = [1.0] * len(shape) if stretch is None else list(stretch)
    f2 = sum((f * np.float32(s)) ** 2 for f, s in zip(freqs, stretch))
    filt = (f2 + np.float32(f0_per_mm ** 2)) ** np.float32(-beta / 4.0)
    if highcut_per_mm is not None:
        filt = filt * np.exp(-f2 / np.float32(2.0 * highcut_per_mm ** 2))
    out = np.fft.irfftn(spec * filt, s=shape, axes=tuple(range(len(shape)))).astype(np.float32)
    out -= out.mean()
    sd = float(out.std())
    return out / np.float32(sd if sd > 0 else 1.0)


def gaussian_blur(arr: np.ndarray, sigma_mm: Sequence[float], spacing_mm: Sequence[float]) -> np.ndarray:
    """Gaussian smoothing in the Fourier domain (periodic boundary).

    Parameters
    ----------
    arr : numpy.ndarray
        Real array of any dimension.
    sigma_mm, spacing_mm : sequence of float
        Per-axis standard deviation and sample spacing, in array-axis order.

    Returns
    -------
    numpy.ndarray
        ``float32`` array, same shape.
    """
    shape = arr.shape
    freqs = _freq_grid(shape, spacing_mm)
    expo = sum((f * np.float32(s)) ** 2 for f, s in zip(freqs, sigma_mm))
    filt = np.exp(np.float32(-2.0 * np.pi ** 2) * expo)
    axes = tuple(range(len(shape)))
    return np.fft.irfftn(np.fft.rfftn(arr.astype(np.float32)) * filt, s=shape, axes=axes).astype(np.float32)


def smooth_curve(rng: np.random.Generator, n: int, spacing_mm: float, correlation_mm: float) -> np.ndarray:
    """A smooth 1D random curve, ``(n,)`` float32, zero mean and unit variance."""
    return powerlaw_noise(rng, (max(int(n), 2),), (spacing_mm,), beta=4.0,
                          f0_per_mm=1.0 / max(correlation_mm, 1e-3))[:n]


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function, computed without overflow warnings."""
    return (0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=np.float32)))).astype(np.float32)


def quantile_threshold(values: np.ndarray, fraction_above: float) -> float:
    """The threshold above which ``fraction_above`` of ``values`` lie."""
    v = np.asarray(values, dtype=np.float32).ravel()
    if v.size == 0:
        return 0.0
    q = float(np.clip(1.0 - fraction_above, 0.0, 1.0))
    return float(np.quantile(v, q))


def bilinear(grid: np.ndarray, fi: np.ndarray, fj: np.ndarray) -> np.ndarray:
    """Sample a 2D ``grid`` ``(n0, n1)`` at fractional indices ``(fi, fj)``; 0 outside."""
    n0, n1 = grid.shape
    i0 = np.floor(fi).astype(np.int64)
    j0 = np.floor(fj).astype(np.int64)
    di = (fi - i0).astype(np.float32)
    dj = (fj - j0).astype(np.float32)
    padded = np.zeros((n0 + 2, n1 + 2), dtype=np.float32)
    padded[1:-1, 1:-1] = grid
    a = np.clip(i0 + 1, 0, n0 + 1)
    b = np.clip(j0 + 1, 0, n1 + 1)
    a1 = np.clip(i0 + 2, 0, n0 + 1)
    b1 = np.clip(j0 + 2, 0, n1 + 1)
    out = (padded[a, b] * (1 - di) * (1 - dj) + padded[a1, b] * di * (1 - dj)
           + padded[a, b1] * (1 - di) * dj + padded[a1, b1] * di * dj)
    inside = (fi > -1) & (fi < n0) & (fj > -1) & (fj < n1)
    return np.where(inside, out, 0.0).astype(np.float32)


def splat(image: np.ndarray, rows: np.ndarray, cols: np.ndarray, amplitude: np.ndarray,
          sigma_px: np.ndarray) -> None:
    """Add Gaussian dots to a 2D ``image`` in place (calcifications).

    Parameters
    ----------
    image : numpy.ndarray
        ``(rows, cols)`` float array, modified in place.
    rows, cols, amplitude, sigma_px : numpy.ndarray
        ``(K,)`` dot centres (fractional pixels), peak heights and widths.
    """
    if len(rows) == 0:
        return
    r = int(np.ceil(3 * float(np.max(sigma_px)))) + 1
    off = np.arange(-r, r + 1)
    oy, ox = np.meshgrid(off, off, indexing="ij")
    ci = np.round(rows).astype(np.int64)[:, None, None] + oy[None]
    cj = np.round(cols).astype(np.int64)[:, None, None] + ox[None]
    d2 = ((ci - rows[:, None, None]) ** 2 + (cj - cols[:, None, None]) ** 2)
    w = amplitude[:, None, None] * np.exp(-d2 / (2.0 * sigma_px[:, None, None] ** 2))
    ok = (ci >= 0) & (ci < image.shape[0]) & (cj >= 0) & (cj < image.shape[1])
    np.add.at(image, (ci[ok], cj[ok]), w[ok].astype(image.dtype))
