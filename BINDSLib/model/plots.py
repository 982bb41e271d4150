"""ROC and reliability plots as PNG.

matplotlib is used when it is installed (labelled axes, legend); it is not a dependency of
BINDS, so without it the curves are drawn with numpy into an RGB array and written with
SimpleITK (axes, grid at 0.25 steps, diagonal; no text - the numbers are in metrics.json).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..io.files import write_image

log = logging.getLogger(__name__)

SIZE = 400
MARGIN = 40


def _have_matplotlib() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def roc_png(path: Path, curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str = "ROC",
            use_matplotlib: bool | None = None) -> Path:
    """Plot ROC ``curves`` (label -> (fpr, tpr)) to ``path`` (PNG)."""
    if use_matplotlib is None:
        use_matplotlib = _have_matplotlib()
    if use_matplotlib:
        fig, ax = _figure()
        ax.plot([0, 1], [0, 1], ls="--", c="0.6", lw=1)
        for label, (fpr, tpr) in curves.items():
            ax.plot(fpr, tpr, lw=2, label=label)
        ax.set_xlabel("1 - specificity")
        ax.set_ylabel("sensitivity")
        return _save(fig, ax, path, title, legend=bool(curves))
    canvas = _canvas()
    _line(canvas, [0, 1], [0, 1], (160, 160, 160))
    for k, (fpr, tpr) in enumerate(curves.values()):
        _line(canvas, fpr, tpr, _COLOURS[k % len(_COLOURS)], width=2)
    return _write(canvas, path)


def reliability_png(path: Path, bins: list[dict], title: str = "Reliability",
                    use_matplotlib: bool | None = None) -> Path:
    """Plot a reliability diagram (bins of :func:`~.metrics.reliability_bins`) to ``path``."""
    xs = [b["mean_probability"] for b in bins if b["n"]]
    ys = [b["positive_rate"] for b in bins if b["n"]]
    if use_matplotlib is None:
        use_matplotlib = _have_matplotlib()
    if use_matplotlib:
        fig, ax = _figure()
        ax.plot([0, 1], [0, 1], ls="--", c="0.6", lw=1, label="perfect calibration")
        ax.plot(xs, ys, marker="o", lw=2, label="model")
        ax.set_xlabel("mean predicted probability")
        ax.set_ylabel("observed malignant fraction")
        return _save(fig, ax, path, title, legend=True)
    canvas = _canvas()
    _line(canvas, [0, 1], [0, 1], (160, 160, 160))
    if xs:
        _line(canvas, xs, ys, _COLOURS[0], width=2)
        for x, y in zip(xs, ys):
            _dot(canvas, x, y, _COLOURS[0])
    return _write(canvas, path)


# -- matplotlib ------------------------------------------------------------------------------

def _figure():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=100)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    return fig, ax


def _save(fig, ax, path: Path, title: str, legend: bool) -> Path:
    import matplotlib.pyplot as plt

    ax.set_title(title)
    if legend:
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return Path(path)


# -- numpy fallback --------------------------------------------------------------------------

_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
            (140, 86, 75), (227, 119, 194)]


def _canvas() -> np.ndarray:
    c = np.full((SIZE, SIZE, 3), 255, np.uint8)
    for t in np.linspace(0, 1, 5):
        _line(c, [t, t], [0, 1], (225, 225, 225))
        _line(c, [0, 1], [t, t], (225, 225, 225))
    _line(c, [0, 1, 1, 0, 0], [0, 0, 1, 1, 0], (0, 0, 0))
    return c


def _px(x, y) -> tuple[np.ndarray, np.ndarray]:
    span = SIZE - 2 * MARGIN
    col = MARGIN + np.asarray(x, dtype=float) * span
    row = SIZE - MARGIN - np.asarray(y, dtype=float) * span
    return row, col


def _line(c: np.ndarray, xs, ys, colour, width: int = 1) -> None:
    xs, ys = np.asarray(xs, float), np.asarray(ys, float)
    for (x0, y0), (x1, y1) in zip(zip(xs[:-1], ys[:-1]), zip(xs[1:], ys[1:])):
        n = int(max(2, 2 * SIZE * max(abs(x1 - x0), abs(y1 - y0))))
        r, col = _px(np.linspace(x0, x1, n), np.linspace(y0, y1, n))
        for dr in range(-(width // 2), width - width // 2):
            for dc in range(-(width // 2), width - width // 2):
                rr = np.clip(np.round(r).astype(int) + dr, 0, SIZE - 1)
                cc = np.clip(np.round(col).astype(int) + dc, 0, SIZE - 1)
                c[rr, cc] = colour


def _dot(c: np.ndarray, x: float, y: float, colour, radius: int = 4) -> None:
    r, col = _px(x, y)
    rr, cc = np.ogrid[:SIZE, :SIZE]
    c[(rr - r) ** 2 + (cc - col) ** 2 <= radius ** 2] = colour


def _write(canvas: np.ndarray, path: Path) -> Path:
    import SimpleITK as sitk

    write_image(sitk.GetImageFromArray(canvas, isVector=True), path)
    return Path(path)
