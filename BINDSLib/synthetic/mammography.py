"""Synthetic 4-view screening mammograms (CC and MLO of each breast).

Orientation (documented in docs/SYNTHETIC.md): the usual display convention, as stored by
most FOR PRESENTATION mammograms - the chest wall is at the image's left edge for the left
breast and at its right edge for the right breast (nipple pointing away from the centre when
the R and L images hang back to back), and the top of the image is lateral (CC) or
supero-lateral (MLO, where the pectoral muscle is the triangle in the upper chest-wall
corner). DICOM Patient Orientation: L CC ``A\\R``, R CC ``P\\L``, L MLO ``A\\FR``,
R MLO ``P\\FL``. The image geometry is the detector plane in patient LPS, so projecting the
3D lesion centre through :class:`ViewFrame` lands on the lesion in every view.

Image formation is a projection in spirit only: the breast is a half-ellipse silhouette with a
thickness fall-off near the skin, fibroglandular texture is shaped noise thresholded to the
woman's glandular fraction, and the 3D lesion is integrated along the X-ray direction.
Pixel values are 12-bit (``uint16`` 0-4095), bright = dense, background dark.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass

import numpy as np

from ..study import Finding, Geometry, Image, Modality, Role, SourceInfo
from .anatomy import Anatomy
from .fields import bilinear, powerlaw_noise, quantile_threshold, sigmoid, splat
from .lesion import Calcifications, LesionShape, _segment_occupancy

__all__ = ["MG_ORDER", "ViewFrame", "view_frame", "MammoLesion", "FocalDensity",
           "mammo_textures", "render_mammograms", "project_lesion"]

#: The four screening views, in the order images are added to a study.
MG_ORDER = (("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO"))
_MAX_BIT = 4095


@dataclass(frozen=True, eq=False)
class ViewFrame:
    """Where a view's detector plane lies in patient space.

    Pixel ``(row j, col i)`` is at ``origin_lps + i * spacing_mm * e_col + j * spacing_mm *
    e_row``; the X-ray direction ``e_proj`` is perpendicular to the plane.
    """

    laterality: str
    view: str
    rows: int
    cols: int
    spacing_mm: float
    e_col: np.ndarray
    e_row: np.ndarray
    origin_lps: np.ndarray
    center_row: float
    semi_v_mm: float
    depth_mm: float

    @property
    def e_proj(self) -> np.ndarray:
        return np.cross(self.e_col, self.e_row)

    def geometry(self) -> Geometry:
        d = np.column_stack([self.e_col, self.e_row, self.e_proj])
        return Geometry((self.spacing_mm, self.spacing_mm, 1.0), tuple(self.origin_lps), tuple(d.ravel()))

    def project(self, points_lps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Fractional ``(rows, cols)`` of ``(N, 3)`` LPS points projected along ``e_proj``."""
        q = np.asarray(points_lps, dtype=float).reshape(-1, 3) - self.origin_lps
        return q @ self.e_row / self.spacing_mm, q @ self.e_col / self.spacing_mm

    def plane_coords(self) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, cols)`` maps: distance from the chest-wall edge and height above the breast
        centre line, both in mm."""
        i = np.arange(self.cols, dtype=np.float32)
        j = np.arange(self.rows, dtype=np.float32)
        a = (i if self.laterality == "L" else (self.cols - 1 - i)) * self.spacing_mm
        v = (self.center_row - j) * self.spacing_mm
        shape = (self.rows, self.cols)
        return np.broadcast_to(a[None, :], shape), np.broadcast_to(v[:, None], shape)


def view_frame(anatomy: Anatomy, laterality: str, view: str, shape: tuple[int, int],
               spacing_mm: float) -> ViewFrame:
    """The detector plane of ``laterality``/``view`` (``'CC'`` or ``'MLO'``) for ``anatomy``."""
    rows, cols = shape
    b = anatomy.breast(laterality)
    left = laterality == "L"
    e_col = np.array([0.0, -1.0, 0.0]) if left else np.array([0.0, 1.0, 0.0])
    if view == "CC":
        up = np.array([1.0, 0.0, 0.0]) if left else np.array([-1.0, 0.0, 0.0])
        center_row, semi_v = 0.5 * rows, b.radius_mm
    elif view == "MLO":
        al = np.radians(anatomy.mlo_angle_deg)
        up = np.array([np.cos(al) if left else -np.cos(al), 0.0, np.sin(al)])
        center_row, semi_v = 0.56 * rows, 1.05 * b.radius_mm
    else:
        raise ValueError(f"synthetic mammograms have CC and MLO views, not {view!r}")
    v_top = b.center_x_mm * up[0] + center_row * spacing_mm
    y0 = 0.0 if left else -(cols - 1) * spacing_mm
    origin = np.array([0.0, y0, 0.0]) + v_top * up
    return ViewFrame(laterality, view, rows, cols, float(spacing_mm), e_col, -up, origin,
                     float(center_row), float(semi_v), float(b.depth_mm))


@dataclass(eq=False)
class MammoLesion:
    """What a mammogram shows of a lesion: its 3D shape, X-ray contrast, calcifications."""

    laterality: str
    shape: LesionShape
    contrast: float
    calcifications: Calcifications
    severity: str
    visibility: float = 1.0


@dataclass(frozen=True)
class FocalDensity:
    """A local increase of glandular density (a developing asymmetry), LPS centre."""

    laterality: str
    center_lps: tuple[float, float, float]
    sigma_mm: float
    amplitude: float


def mammo_textures(rng: np.random.Generator, anatomy: Anatomy, shape: tuple[int, int],
                   spacing_mm: float) -> dict[tuple[str, str], np.ndarray]:
    """The fixed fibroglandular pattern of each view, ``(2, rows, cols)`` float32 per view.

    Channel 0: coarse lobes (power law, beta 3, elongated towards the nipple) plus fine
    texture; channel 1: a field whose zero crossings draw fibrous strands. A woman
    keeps hers from year to year; only the threshold (her density) and focal changes move.
    """
    out = {}
    sp = (spacing_mm, spacing_mm)
    for key in MG_ORDER:
        coarse = powerlaw_noise(rng, shape, sp, beta=3.0, f0_per_mm=1 / 35.0, stretch=(1.0, 2.2))
        fine = powerlaw_noise(rng, shape, sp, beta=2.0, f0_per_mm=1 / 6.0, stretch=(1.0, 1.8),
                              highcut_per_mm=1.2)
        strands = powerlaw_noise(rng, shape, sp, beta=3.0, f0_per_mm=1 / 8.0, stretch=(1.0, 3.0))
        out[key] = np.stack([0.8 * coarse + 0.45 * fine, strands]).astype(np.float32)
    return out


def project_lesion(frame: ViewFrame, shape: LesionShape, max_grid: int | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Path length (mm) of the X-rays through the lesion.

    Returns
    -------
    total, body : numpy.ndarray
        ``(rows, cols)`` float32 path lengths through the whole lesion (spicules included)
        and through its body only.
    """
    if max_grid is None:                     # body sampled on at most max_grid^3 points
        max_grid = 48 if frame.spacing_mm >= 0.3 else 112
    ext = shape.extent_mm
    body_ext = shape.body_radius_mm() + 2.0 * shape.margin_blur_mm + 1.0
    h = max(frame.spacing_mm, 2.0 * body_ext / max_grid)
    n = int(np.ceil(2.0 * body_ext / h)) + 1
    ax = (np.arange(n, dtype=np.float32) - (n - 1) / 2.0) * h
    b, a, c = np.meshgrid(ax, ax, ax, indexing="ij")
    pts = (shape.center_lps[None, :] + b.reshape(-1, 1) * frame.e_row + a.reshape(-1, 1) * frame.e_col
           + c.reshape(-1, 1) * frame.e_proj)
    occ, _, sd = shape.evaluate(pts, h, spicules=False)
    thick = occ.reshape(n, n, n).sum(axis=2) * h
    body = (sd <= 0).reshape(n, n, n).sum(axis=2).astype(np.float32) * h
    out = np.zeros((frame.rows, frame.cols), dtype=np.float32)
    out_body = np.zeros((frame.rows, frame.cols), dtype=np.float32)
    jc, ic = (float(x[0]) for x in frame.project(shape.center_lps[None]))
    r = ext / frame.spacing_mm + 1
    j0, j1 = max(int(jc - r), 0), min(int(jc + r) + 2, frame.rows)
    i0, i1 = max(int(ic - r), 0), min(int(ic + r) + 2, frame.cols)
    if j1 <= j0 or i1 <= i0:
        return out, out_body
    jj, ii = np.meshgrid(np.arange(j0, j1), np.arange(i0, i1), indexing="ij")
    fb = (jj - jc) * frame.spacing_mm / h + (n - 1) / 2.0
    fa = (ii - ic) * frame.spacing_mm / h + (n - 1) / 2.0
    out[j0:j1, i0:i1] = bilinear(thick, fb, fa)
    out_body[j0:j1, i0:i1] = bilinear(body, fb, fa)
    if shape.spicule_dirs.shape[0]:
        # spicules projected analytically: path length 2 w through a strand of width w
        start, end, width = shape.spicule_segments()
        sj, si = frame.project(start)
        ej, ei = frame.project(end)
        sp = frame.spacing_mm
        q = np.stack([jj.ravel(), ii.ravel()], axis=1).astype(np.float32) * sp
        occ2d = _segment_occupancy(q, np.stack([sj, si], 1).astype(np.float32) * sp,
                                   np.stack([ej, ei], 1).astype(np.float32) * sp, width, sp)
        out[j0:j1, i0:i1] += occ2d.reshape(jj.shape) * 2.0 * float(width.mean())
    return out, out_body


def _render_view(frame: ViewFrame, anatomy: Anatomy, texture: np.ndarray, rng: np.random.Generator,
                 lesion: MammoLesion | None, focal: FocalDensity | None):
    sp = frame.spacing_mm
    a_mm, v_mm = frame.plane_coords()
    rho = np.sqrt((a_mm / frame.depth_mm) ** 2 + (v_mm / frame.semi_v_mm) ** 2)
    r_dir = np.sqrt(a_mm ** 2 + v_mm ** 2) / np.maximum(rho, 1e-6)
    edge_mm = (1.0 - rho) * r_dir                       # distance inside the skin (approx.)
    if frame.view == "MLO":                             # axillary tail up to the top edge
        # the upper contour runs straight from the nipple level to the axilla at the top edge
        tail_w = anatomy.pectoral_mm[0] + 14.0
        v_top = frame.center_row * sp
        slope = (frame.depth_mm - tail_w) / v_top
        a_line = frame.depth_mm - slope * v_mm
        upper = v_mm > 0
        to_line = (a_line - a_mm) / np.sqrt(1.0 + slope * slope)
        edge_mm = np.where(upper, np.maximum(edge_mm, to_line), edge_mm)
        rho = np.where(upper, np.minimum(rho, a_mm / np.maximum(a_line, 1.0)), rho)
    breast = sigmoid(edge_mm / max(0.3, 0.5 * sp))
    inside = edge_mm > 0
    thickness = np.clip(1.0 - rho * rho, 0.0, 1.0) ** 0.3
    # glandular tissue: texture + a central/retro-areolar prior, thresholded to the fraction
    prior = 1.4 * (1.0 - np.clip(rho, 0, 1) ** 2) - 1.0 * np.exp(-a_mm / 6.0) - 0.8 * np.exp(-edge_mm / 5.0)
    z = texture[0] + prior
    thr = quantile_threshold(z[inside], anatomy.glandular_fraction)
    gland = sigmoid((z - thr) / 0.55) * breast
    if focal is not None and focal.laterality == frame.laterality and focal.amplitude > 0:
        fj, fi = (float(x[0]) for x in frame.project(np.asarray(focal.center_lps)[None]))
        jj, ii = np.ogrid[:frame.rows, :frame.cols]
        d2 = ((jj - fj) ** 2 + (ii - fi) ** 2) * sp * sp
        bump = focal.amplitude * np.exp(-d2 / (2 * focal.sigma_mm ** 2)).astype(np.float32)
        gland = np.clip(gland + bump * (0.6 + 0.4 * sigmoid(texture[0] / 0.5)) * breast, 0.0, 1.0)
    strands = np.exp(-(texture[1] / 0.12) ** 2)         # thin fibrous strands (ligaments, ducts)
    signal = thickness * (0.16 + 0.52 * gland + 0.07 * strands * (1.0 - gland)) * breast
    signal += 0.10 * sigmoid((1.8 - edge_mm) / 0.4) * breast          # skin line
    body = breast
    if frame.view == "MLO":
        pw, ph = anatomy.pectoral_mm
        from_top = frame.center_row * sp - v_mm                # mm below the top edge
        bound = pw * np.clip(1.0 - from_top / ph, 0.0, 1.0) ** 0.85
        pect = sigmoid((bound - a_mm) / 0.6) * (from_top < ph)
        signal = signal * (1 - pect) + pect * (0.62 + 0.03 * texture[0])
        body = np.maximum(body, pect)
    mask = np.zeros((frame.rows, frame.cols), dtype=np.uint8)
    findings: list[Finding] = []
    if lesion is not None and lesion.laterality == frame.laterality and lesion.visibility > 0:
        thick, thick_body = project_lesion(frame, lesion.shape)
        signal += (lesion.contrast * lesion.visibility * (1.0 - np.exp(-thick / 10.0))
                   * (0.36 - 0.2 * gland) * (1.0 + 0.15 * texture[0])) * body
        mask = (thick_body >= 1.0).astype(np.uint8)
        jc, ic = (float(x[0]) for x in frame.project(lesion.shape.center_lps[None]))
        if not mask.any():
            mask[int(np.clip(round(jc), 0, frame.rows - 1)), int(np.clip(round(ic), 0, frame.cols - 1))] = 1
        mj, mi = np.nonzero(mask)
        radius = float(np.sqrt(((mj - jc) ** 2 + (mi - ic) ** 2).max())) + 1.0
        findings.append(Finding("mass", lesion.severity, round(ic, 1), round(jc, 1), round(radius, 1)))
        calc = lesion.calcifications
        if calc.positions_lps.shape[0]:
            cj, ci = frame.project(calc.positions_lps)
            d = calc.diameters_mm
            amp = (0.55 * np.clip(d / sp, 0.4, 1.0) * lesion.visibility).astype(np.float32)
            splat(signal, cj, ci, amp, np.maximum(0.45, 0.5 * d / sp))
            findings.append(Finding(
                "calcification", lesion.severity, round(float(ci.mean()), 1), round(float(cj.mean()), 1),
                round(float(np.sqrt((ci - ci.mean()) ** 2 + (cj - cj.mean()) ** 2).max()) + 2.0, 1)))
    noise = rng.standard_normal((frame.rows, frame.cols), dtype=np.float32)
    pix = 40.0 + 3600.0 * signal + noise * (3.0 + 36.0 * np.sqrt(np.maximum(signal, 0.0) + 0.02) * body)
    vox = np.clip(np.rint(pix), 0, _MAX_BIT).astype(np.uint16)
    return vox, mask, tuple(findings)


def render_mammograms(anatomy: Anatomy, shape: tuple[int, int], spacing_mm: float,
                      textures: dict, rng: np.random.Generator, lesion: MammoLesion | None = None,
                      focal: FocalDensity | None = None, date: _dt.date | None = None,
                      description: str = "synthetic mammogram") -> list[Image]:
    """The four screening views as :class:`~BINDSLib.study.Image` objects.

    Parameters
    ----------
    anatomy : Anatomy
    shape : tuple of int
        ``(rows, cols)`` of each view.
    spacing_mm : float
        Pixel spacing.
    textures : dict
        From :func:`mammo_textures` with the same ``shape``.
    rng : numpy.random.Generator
        Quantum-noise stream.
    lesion, focal : optional
        What to draw in the lesion's breast (the other breast's masks stay empty).

    Returns
    -------
    list of Image
        ``uint16`` voxels ``(1, rows, cols)`` with a ``uint8`` lesion mask each, in
        :data:`MG_ORDER`.
    """
    images = []
    for lat, view in MG_ORDER:
        frame = view_frame(anatomy, lat, view, shape, spacing_mm)
        vox, mask, findings = _render_view(frame, anatomy, textures[(lat, view)], rng, lesion, focal)
        images.append(Image(vox, frame.geometry(), Role(Modality.MG, laterality=lat, view=view),
                            acquisition_date=date, lesion_mask=mask, findings=findings,
                            source=SourceInfo(manufacturer="BINDS synthetic phantom",
                                              description=f"{description}, {lat} {view}")))
    return images
