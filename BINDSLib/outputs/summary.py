"""A one-page PNG summary of a diagnosis: each image with its lesion outline and saliency
overlay, and the key numbers. For teaching and quick review, not for reading images."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

#: Largest number of image samples per axis drawn in a panel (about twice the panel's pixels):
#: larger images are decimated first, which looks the same and draws several times faster.
DISPLAY_SAMPLES = 640


def representative_slice(mask: np.ndarray | None, saliency: np.ndarray | None) -> int:
    """The slice with the largest lesion area, else the saliency peak, else the middle one."""
    if mask is not None and mask.any():
        return int(np.argmax(mask.reshape(mask.shape[0], -1).sum(1)))
    if saliency is not None and saliency.size:
        return int(np.unravel_index(np.argmax(saliency), saliency.shape)[0])
    return 0 if mask is None else mask.shape[0] // 2


def _display_range(img: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(img, [1, 99.5])
    return float(lo), float(hi if hi > lo else lo + 1)


def write_summary_png(path: str | os.PathLike, panels: list[dict], lines: list[str],
                      title: str) -> Path:
    """Write the summary.

    Parameters
    ----------
    panels
        One dict per image: ``label`` (str), ``voxels`` ``(depth, rows, cols)``, ``lesion``
        (same shape, 0/1 or None), ``saliency`` (same shape, [0, 1], or None),
        ``aspect`` (row spacing / column spacing).
    lines
        Text lines with the key numbers.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    n = max(len(panels), 1)
    cols = min(4, n)
    rows = (n + cols - 1) // cols
    # wide enough for the longest text line (9 pt monospace: ~0.075 inch a character)
    width = max(3.2 * cols, 0.078 * max((len(t) for t in lines), default=0) + 0.3)
    fig = Figure(figsize=(width, 3.2 * rows + 0.35 * (len(lines) + 2)), dpi=90)
    text_h = (0.35 * (len(lines) + 2)) / (3.2 * rows + 0.35 * (len(lines) + 2))
    fig.suptitle(title, fontsize=11, y=0.995)
    for i, p in enumerate(panels):
        ax = fig.add_axes([(i % cols) / cols + 0.005, text_h + (rows - 1 - i // cols) * (1 - text_h - 0.04) / rows,
                           1 / cols - 0.01, (1 - text_h - 0.04) / rows - 0.03])
        k = representative_slice(p.get("lesion"), p.get("saliency"))
        nr, nc = p["voxels"].shape[1:]
        f = max(1, -(-max(nr, nc) // DISPLAY_SAMPLES))  # decimation factor
        extent = (-0.5, nc - 0.5, nr - 0.5, -0.5)  # axes in the image's own pixels
        img = p["voxels"][k][::f, ::f].astype(np.float32)
        lo, hi = _display_range(img)
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, aspect=p.get("aspect", 1.0), interpolation="nearest",
                  extent=extent)
        sal = p.get("saliency")
        if sal is not None:
            s = np.ma.masked_less(sal[k][::f, ::f], 0.25)
            ax.imshow(s, cmap="hot", alpha=0.45, vmin=0, vmax=1, aspect=p.get("aspect", 1.0),
                      interpolation="nearest", extent=extent)
        les = p.get("lesion")
        if les is not None and les[k].any():
            # block maximum: a lesion smaller than a block still shows
            r, c = -(-nr // f) * f, -(-nc // f) * f
            block = np.zeros((r, c), np.uint8)
            block[:nr, :nc] = les[k] > 0
            block = block.reshape(r // f, f, c // f, f).max((1, 3))
            centres = (np.arange(c // f) * f + (f - 1) / 2, np.arange(r // f) * f + (f - 1) / 2)
            ax.contour(*centres, block, levels=[0.5], colors=["cyan"], linewidths=1.0)
        ax.set_xlim(extent[0], extent[1])
        ax.set_ylim(extent[2], extent[3])
        suffix = f" (slice {k})" if p["voxels"].shape[0] > 1 else ""
        ax.set_title(p["label"] + suffix, fontsize=9)
        ax.set_axis_off()
    fig.text(0.01, text_h - 0.01, "\n".join(lines), va="top", ha="left", fontsize=9, family="monospace")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.part.png")
    fig.savefig(tmp, format="png", metadata={"Software": None})
    os.replace(tmp, path)
    return path
