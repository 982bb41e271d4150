"""Outputs of ``binds risk``: ``report.json``, a CSV table and a PNG plot of the trajectory.

``report.json`` (schema ``binds.risk_report``, version 1)::

    {
      "schema": "binds.risk_report", "schema_version": 1, "binds_version": "0.1.0",
      "intended_use": "Research use only; not for clinical use.",
      "model": {"name", "version", "weights_sha256", "kind"},
      "woman_id": "anon-...",            # pseudonymised unless --keep-identifiers
      "years": [1, 2, 3, 4, 5], "horizon_years": 5,
      "thresholds": {"supplemental_mri_5y": 0.017, "rise_2y": 0.005},  # rise over trajectory.window_years
      "exams": [ExamRisk.to_json(), ...],  # ascending date; risks are probabilities (0-1)
      "trajectory": TrajectoryMetrics.to_json(),
      "flags": [{"code": "consider_supplemental_mri" | "rising_risk", "message": "..."}],
      "warnings": ["..."]
    }

The plot is drawn with matplotlib when it is installed (axes, labels, legend); otherwise with
a small numpy rasteriser (same lines, no text). Either way it is written as an RGB PNG through
SimpleITK.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import __version__
from ..io.files import write_image
from .inference import ExamRisk
from .trajectory import Flag, TrajectoryMetrics

log = logging.getLogger(__name__)

SCHEMA = "binds.risk_report"
SCHEMA_VERSION = 1
INTENDED_USE = "Research use only; not for clinical use."


def build_report(exams: Sequence[ExamRisk], trajectory: TrajectoryMetrics, flags: Sequence[Flag],
                 model_summary: dict, thresholds: dict, woman_id: str | None = None,
                 warnings: Sequence[str] = ()) -> dict:
    """The ``report.json`` document (see module docstring)."""
    years = list(range(1, len(exams[0].cumulative_risk) + 1)) if exams else []
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "binds_version": __version__,
        "intended_use": INTENDED_USE,
        "model": {k: model_summary.get(k) for k in ("name", "version", "weights_sha256", "kind")},
        "woman_id": woman_id,
        "years": years,
        "horizon_years": trajectory.horizon_years,
        "thresholds": dict(thresholds),
        "exams": [e.to_json() for e in exams],
        "trajectory": trajectory.to_json(),
        "flags": [f.to_json() for f in flags],
        "warnings": list(warnings),
    }


def csv_columns(years: Sequence[int]) -> list[str]:
    cols = ["exam_id", "exam_date"]
    cols += [f"risk_{y}y" for y in years]
    cols += [f"left_risk_{y}y" for y in years] + [f"right_risk_{y}y" for y in years]
    return cols + ["views_present", "warnings"]


def exam_row(e: ExamRisk) -> dict:
    """One CSV row: risks as probabilities with 6 decimals, empty for a breast without views."""
    years = range(1, len(e.cumulative_risk) + 1)
    row = {"exam_id": e.exam_id, "exam_date": "" if e.exam_date is None else e.exam_date.isoformat()}
    for y in years:
        row[f"risk_{y}y"] = f"{e.cumulative_risk[y - 1]:.6f}"
    for side, prefix in (("L", "left"), ("R", "right")):
        r = e.breast_risk.get(side)
        for y in years:
            row[f"{prefix}_risk_{y}y"] = "" if r is None else f"{r[y - 1]:.6f}"
    row["views_present"] = " ".join(e.views_present)
    row["warnings"] = " | ".join(e.warnings)
    return row


def exams_csv(exams: Sequence[ExamRisk]) -> str:
    """The per-exam table as CSV text."""
    years = list(range(1, len(exams[0].cumulative_risk) + 1)) if exams else [1, 2, 3, 4, 5]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=csv_columns(years), lineterminator="\n")
    w.writeheader()
    for e in exams:
        w.writerow(exam_row(e))
    return buf.getvalue()


def percent_texts(risk: float, threshold: float) -> tuple[str, str]:
    """``risk`` and ``threshold`` as percentages with as many decimals (2 to 6) as it takes to
    tell them apart: ``1.6996%`` below ``1.7000%``, not ``1.70%`` beside ``1.7%`` unflagged."""
    from ..outputs.report import told_apart

    shown, limit = told_apart(risk, threshold, 2, 6, scale=100)
    return f"{shown}%", f"{limit}%"


def format_table(exams: Sequence[ExamRisk], horizon: int = 5) -> str:
    """A fixed-width table for the terminal: date, risks for every year and the per-breast risk
    at ``horizon`` years (%)."""
    if not exams:
        return "(no exams)\n"
    years = range(1, len(exams[0].cumulative_risk) + 1)
    head = ["date      ", *[f"{y}y%".rjust(6) for y in years], f"L {horizon}y%".rjust(7),
            f"R {horizon}y%".rjust(7), "  views"]
    lines = [" ".join(head)]
    for e in exams:
        cells = [(e.exam_date.isoformat() if e.exam_date else "?").ljust(10)]
        cells += [f"{100 * v:6.2f}" for v in e.cumulative_risk]
        for side in ("L", "R"):
            r = e.breast_risk.get(side)
            cells.append("      -" if r is None else f"{100 * r[horizon - 1]:7.2f}")
        cells.append(f"  {len(e.views_present)}/4")
        lines.append(" ".join(cells))
    return "\n".join(lines) + "\n"


# -- plot -------------------------------------------------------------------------------------

def _plot_matplotlib(dates, risks, breast, threshold, size_px):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    h, w = size_px
    fig = Figure(figsize=(w / 100, h / 100), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    pct = [100 * r for r in risks]
    ax.plot(dates, pct, "o-", color="#1f4e9c", lw=2, label="5-year risk (exam)")
    for side, colour in (("L", "#6aa84f"), ("R", "#e69138")):
        vals = breast.get(side)
        if vals is not None and any(v is not None for v in vals):
            ax.plot(dates, [np.nan if v is None else 100 * v for v in vals], "s--", color=colour,
                    lw=1, ms=4, label=f"5-year risk ({'left' if side == 'L' else 'right'} breast)")
    ax.axhline(100 * threshold, color="#cc0000", ls="--", lw=1.5,
               label=f"{100 * threshold:g}% (consider supplemental MRI)")
    others = [100 * v for vals in breast.values() for v in (vals or []) if v is not None]
    top = max([100 * threshold * 1.5] + [p * 1.15 for p in pct + others])
    ax.set_ylim(0, top)
    ax.set_ylabel("5-year cumulative risk (%)")
    ax.set_xlabel("exam date")
    ax.set_title("Breast cancer risk trajectory (research use only)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.autofmt_xdate()
    fig.tight_layout()
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    return np.ascontiguousarray(rgba[..., :3])


def _draw_segment(img, p0, p1, colour, width=2, dash=0):
    (r0, c0), (r1, c1) = p0, p1
    n = int(max(abs(r1 - r0), abs(c1 - c0)) * 2) + 1
    for k in range(n + 1):
        if dash and (k // (2 * dash)) % 2:
            continue
        t = k / max(n, 1)
        r, c = int(round(r0 + t * (r1 - r0))), int(round(c0 + t * (c1 - c0)))
        img[max(r - width // 2, 0):r + (width + 1) // 2, max(c - width // 2, 0):c + (width + 1) // 2] = colour


def _plot_numpy(dates, risks, breast, threshold, size_px):
    h, w = size_px
    img = np.full((h, w, 3), 255, dtype=np.uint8)
    top_m, bot_m, left_m, right_m = 20, 40, 50, 20
    others = [v for vals in breast.values() for v in (vals or []) if v is not None]
    y_top = max([threshold * 1.5] + [r * 1.15 for r in list(risks) + others])
    days = [(d - dates[0]).days for d in dates]
    span = max(days[-1], 1) if days else 1

    def to_px(day, risk):
        col = left_m + (day / span) * (w - left_m - right_m) if len(days) > 1 else (left_m + w - right_m) / 2
        row = (h - bot_m) - (risk / y_top) * (h - top_m - bot_m)
        return row, col

    black, grey = (0, 0, 0), (200, 200, 200)
    for k in range(1, 5):  # horizontal grid
        r = (h - bot_m) - k / 5 * (h - top_m - bot_m)
        _draw_segment(img, (r, left_m), (r, w - right_m), grey, 1)
    _draw_segment(img, (h - bot_m, left_m), (h - bot_m, w - right_m), black, 2)
    _draw_segment(img, (top_m, left_m), (h - bot_m, left_m), black, 2)
    thr = to_px(0, threshold)[0]
    _draw_segment(img, (thr, left_m), (thr, w - right_m), (204, 0, 0), 2, dash=6)
    for side, colour in (("L", (106, 168, 79)), ("R", (230, 145, 56))):
        vals = breast.get(side) or []
        pts = [to_px(d, v) for d, v in zip(days, vals) if v is not None]
        for a, b in zip(pts, pts[1:]):
            _draw_segment(img, a, b, colour, 1, dash=3)
    pts = [to_px(d, r) for d, r in zip(days, risks)]
    for a, b in zip(pts, pts[1:]):
        _draw_segment(img, a, b, (31, 78, 156), 3)
    for r, c in pts:
        r, c = int(round(r)), int(round(c))
        img[max(r - 4, 0):r + 5, max(c - 4, 0):c + 5] = (31, 78, 156)
    return img


def plot_trajectory(dates: Sequence[_dt.date], risks: Sequence[float], threshold: float,
                    breast: dict | None = None, size_px: tuple[int, int] = (480, 720),
                    backend: str = "auto") -> np.ndarray:
    """The trajectory plot as an RGB image.

    Parameters
    ----------
    dates, risks : one per exam (ascending dates), risks as probabilities.
    threshold : horizontal reference line (e.g. 0.017).
    breast : optional ``{"L": [risk or None per exam], "R": [...]}``.
    size_px : (rows, cols) of the image.
    backend : ``"matplotlib"``, ``"numpy"`` or ``"auto"`` (matplotlib when installed).

    Returns
    -------
    uint8 array ``(rows, cols, 3)``.
    """
    breast = breast or {}
    if backend == "auto":
        try:
            import matplotlib  # noqa: F401

            backend = "matplotlib"
        except ImportError:
            backend = "numpy"
    if backend == "matplotlib":
        return _plot_matplotlib(list(dates), list(risks), breast, threshold, size_px)
    if backend == "numpy":
        return _plot_numpy(list(dates), list(risks), breast, threshold, size_px)
    raise ValueError(f"unknown plot backend {backend!r}")


def write_png(path: str | Path, rgb: np.ndarray) -> Path:
    """Write a ``(rows, cols, 3)`` uint8 image as PNG through SimpleITK."""
    import SimpleITK as sitk

    arr = np.ascontiguousarray(rgb, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected (rows, cols, 3) RGB, got {arr.shape}")
    write_image(sitk.GetImageFromArray(arr, isVector=True), path)
    return Path(path)
