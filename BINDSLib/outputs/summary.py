"""A one-page PNG summary of a diagnosis: each image with its lesion outline and saliency
overlay, and the key numbers. For teaching and quick review, not for reading images.

The panels are composed as pixels with numpy (sampled straight to the panel's size, grey
window, saliency blended through the ``hot`` colour map, lesion outline in cyan) and pasted
into the picture of a matplotlib figure that holds only the text: one axes per image with a
contour and two image layers cost several times as much for the same picture.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import numpy as np

#: Panel size in inches and figure resolution.
PANEL_INCHES = 3.2
DPI = 90
#: Saliency shown from this value up, blended with this opacity.
SALIENCY_FLOOR = 0.25
SALIENCY_ALPHA = 0.45
OUTLINE_RGB = (0.0, 1.0, 1.0)
#: Height of a 9 pt text line in inches.
LINE_INCHES = 0.17
#: Text lines longer than this (and than the row of panels) wrap.
TEXT_CHARS = 110
#: zlib level of the PNG (1: a few times faster than the default 6, files ~20 % larger).
PNG_COMPRESSION = 1


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


def _starts(n_in: int, n_out: int) -> np.ndarray:
    """First source index of each of ``n_out`` display samples over ``n_in`` (nearest when
    enlarging: repeated indices)."""
    return np.minimum((np.arange(n_out) * n_in) // n_out, n_in - 1)


def _block_max(a: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Maximum of ``a`` over the source block of each display sample (a lesion smaller than a
    block still shows). ``np.maximum.reduceat`` gives the single sample when enlarging."""
    return np.maximum.reduceat(np.maximum.reduceat(a, rows, axis=0), cols, axis=1)


def _outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it (edges of the panel count as outside),
    thickened by one pixel inwards so that the line stays visible."""
    m = np.pad(mask, 1)
    inner = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    edge = mask & ~inner
    e = np.pad(edge, 1)
    return mask & (e[1:-1, 1:-1] | e[:-2, 1:-1] | e[2:, 1:-1] | e[1:-1, :-2] | e[1:-1, 2:])


def render_panel(voxels: np.ndarray, lesion: np.ndarray | None, saliency: np.ndarray | None,
                 aspect: float, box: tuple[int, int]) -> tuple[np.ndarray, int]:
    """The representative slice as an RGB ``uint8`` picture fitting ``box`` = (height, width)
    pixels with the physical aspect ``aspect`` (row spacing / column spacing). Returns the
    picture and the slice index."""
    k = representative_slice(lesion, saliency)
    nr, nc = voxels.shape[1:]
    scale = min(box[1] / nc, box[0] / (nr * aspect))
    oh, ow = max(1, int(round(nr * aspect * scale))), max(1, int(round(nc * scale)))
    rows, cols = _starts(nr, oh), _starts(nc, ow)
    img = voxels[k][rows][:, cols].astype(np.float32)
    lo, hi = _display_range(img)
    grey = np.clip((img - lo) / (hi - lo), 0.0, 1.0)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    if saliency is not None:
        s = saliency[k][rows][:, cols].astype(np.float32)
        shown = s >= SALIENCY_FLOOR
        if shown.any():
            from matplotlib import colormaps

            lut = colormaps["hot"](np.linspace(0.0, 1.0, 256))[:, :3].astype(np.float32)
            heat = lut[np.clip(s[shown] * 255.0 + 0.5, 0, 255).astype(np.intp)]
            rgb[shown] = (1.0 - SALIENCY_ALPHA) * rgb[shown] + SALIENCY_ALPHA * heat
    if lesion is not None and lesion[k].any():
        edge = _outline(_block_max((lesion[k] > 0).astype(np.uint8), rows, cols) > 0)
        rgb[edge] = OUTLINE_RGB
    return (rgb * 255.0 + 0.5).astype(np.uint8), k


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
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from PIL import Image

    n = max(len(panels), 1)
    cols = min(4, n)
    rows = (n + cols - 1) // cols
    # 9 pt monospace: ~0.078 inch a character; lines longer than the panels (and than
    # TEXT_CHARS) wrap, so one long note does not shrink the pictures in a wide figure
    chars = max(TEXT_CHARS, int((PANEL_INCHES * cols - 0.3) / 0.078))
    lines = [w for t in lines for w in (textwrap.wrap(t, chars, subsequent_indent="    ") or [""])]
    text_in = LINE_INCHES * (len(lines) + 2)
    width = max(PANEL_INCHES * cols, 0.078 * max((len(t) for t in lines), default=0) + 0.3)
    height = PANEL_INCHES * rows + text_in
    fig = Figure(figsize=(width, height), dpi=DPI)
    agg = FigureCanvasAgg(fig)
    W, H = agg.get_width_height()
    text_h = text_in / height
    fig.suptitle(title, fontsize=11, y=0.995)
    pictures = []
    cell_h = (1 - text_h - 0.04) / rows
    for i, p in enumerate(panels):
        # the panel's box in figure fractions (x0, y0 from the bottom left, w, h), as pixels
        x0, y0 = (i % cols) / cols + 0.005, text_h + (rows - 1 - i // cols) * cell_h
        w, h = 1 / cols - 0.01, cell_h - 0.03
        bx, by, bw, bh = int(x0 * W), int(y0 * H), int(w * W), int(h * H)
        pic, k = render_panel(p["voxels"], p.get("lesion"), p.get("saliency"), p.get("aspect", 1.0),
                              (bh, bw))
        ph, pw = pic.shape[:2]
        top = H - (by + bh) + (bh - ph) // 2  # canvas rows run downwards
        left = bx + (bw - pw) // 2
        pictures.append((top, left, pic))
        suffix = f" (slice {k})" if p["voxels"].shape[0] > 1 else ""
        fig.text(x0 + w / 2, (H - top + 4) / H, p["label"] + suffix, ha="center", va="bottom", fontsize=9)
    fig.text(0.01, text_h - 0.01, "\n".join(lines), va="top", ha="left", fontsize=9, family="monospace")
    agg.draw()  # the text; the pictures go in between, where there is none
    canvas = np.array(np.asarray(agg.buffer_rgba())[..., :3])
    for top, left, pic in pictures:
        canvas[top:top + pic.shape[0], left:left + pic.shape[1]] = pic
    path = Path(path)
    tmp = path.with_name(f".{path.name}.part.png")
    Image.fromarray(canvas).save(tmp, format="PNG", compress_level=PNG_COMPRESSION)
    os.replace(tmp, path)
    return path
