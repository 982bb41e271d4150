"""Synthetic B-mode breast ultrasound through the lesion (or through normal tissue).

The frame is a linear-probe image: rows go down from the skin (LPS ``+y``, posterior),
columns go across the probe: transverse planes run towards the patient's left (``+x``),
sagittal ones towards the feet (``-z``, head on the image left). The plane is placed in
patient space so that it passes through the lesion centre at the lesion's true LPS
position. The breast is flattened under the probe (supine), so skin and layer depths are
those of a typical ultrasound, not of the prone 3D breast model (see docs/SYNTHETIC.md).

Image formation: an echogenicity map (skin, subcutaneous fat with Cooper's ligaments,
fibroglandular layer, retromammary fat, pectoralis, pleura) times a posterior attenuation
term (lesions that attenuate less than tissue enhance, more than tissue shadow), times
fully developed speckle (complex Gaussian noise through the point-spread function, whose
envelope is Rayleigh distributed), log-compressed to ``uint8``.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass

import numpy as np

from ..study import Geometry, Image, Modality, Role, SourceInfo
from .anatomy import Anatomy
from .fields import gaussian_blur, powerlaw_noise, sigmoid, smooth_curve, splat
from .lesion import Calcifications, LesionShape, Phenotype

__all__ = ["UltrasoundLesion", "render_ultrasound", "US_PLANES"]

#: Column directions of the ultrasound planes: transverse, then sagittal.
US_PLANES = (("transverse", (1.0, 0.0, 0.0)), ("sagittal", (0.0, 0.0, -1.0)))
_LOOKS = 3
_POSTERIOR_STRENGTH = {"enhancement": (-1.0, -0.45), "none": (-0.12, 0.12), "shadowing": (0.45, 1.0)}


@dataclass(eq=False)
class UltrasoundLesion:
    """The lesion as ultrasound sees it."""

    shape: LesionShape
    phenotype: Phenotype
    calcifications: Calcifications


def _layer(d: np.ndarray, top, bottom, soft: float) -> np.ndarray:
    return sigmoid((d - top) / soft) - sigmoid((d - bottom) / soft)


def render_ultrasound(rng: np.random.Generator, anatomy: Anatomy, laterality: str, clock_hour: int,
                      center_lps, shape: tuple[int, int], spacing_mm: float,
                      lesion: UltrasoundLesion | None = None, plane: int = 0,
                      date: _dt.date | None = None) -> Image:
    """One ultrasound frame through ``center_lps``.

    Parameters
    ----------
    rng : numpy.random.Generator
    anatomy : Anatomy
    laterality : {'L', 'R'}
    clock_hour : int
        Clock position recorded in the role (1-12).
    center_lps : array-like
        ``(3,)`` point the plane passes through (the lesion centre).
    shape : tuple of int
        ``(rows, cols)``: depth samples x lateral samples.
    spacing_mm : float
        Isotropic pixel spacing.
    lesion : UltrasoundLesion, optional
        ``None`` draws normal tissue and an empty mask.
    plane : int
        Index into :data:`US_PLANES` (0 transverse, 1 sagittal).

    Returns
    -------
    Image
        ``uint8`` voxels ``(1, rows, cols)`` with its lesion mask.
    """
    rows, cols = shape
    sp = float(spacing_mm)
    c = np.asarray(center_lps, dtype=float)
    gf = anatomy.glandular_fraction
    # layer boundaries (mm below the skin), each undulating across the probe
    curve = lambda corr: smooth_curve(rng, cols, sp, corr)[None, :]  # noqa: E731
    skin = rng.uniform(1.5, 2.2)
    f1 = skin + rng.uniform(3.0, 8.0) + 1.0 * curve(15.0)
    gland_th = (8.0 + 22.0 * gf) * rng.uniform(0.8, 1.2)
    f2 = f1 + gland_th + 1.5 * curve(20.0)
    f3 = f2 + rng.uniform(1.5, 3.0) + 0.3 * curve(10.0)
    f4 = f3 + rng.uniform(6.0, 10.0) + 0.5 * curve(25.0)
    ext_y = lesion.shape.body_radius_mm((0.0, 1.0, 0.0)) if lesion else 0.0
    depth_c = float(np.mean(f1)) + rng.uniform(0.3, 0.7) * gland_th
    depth_c = float(np.clip(depth_c, ext_y + 3.0, max(rows * sp - ext_y - 8.0, ext_y + 3.0)))
    col_c = rng.uniform(0.38, 0.62) * cols
    e_col = np.asarray(US_PLANES[plane][1])
    e_row = np.array([0.0, 1.0, 0.0])
    origin = c - col_c * sp * e_col - depth_c * e_row
    d = (np.arange(rows, dtype=np.float32) * sp)[:, None]
    soft = max(0.25, 0.5 * sp)
    lig_noise = powerlaw_noise(rng, shape, (sp, sp), beta=3.5, f0_per_mm=1 / 6.0, stretch=(1.0, 2.5))
    ligaments = np.exp(-(lig_noise / 0.07) ** 2)
    gland_tex = sigmoid(powerlaw_noise(rng, shape, (sp, sp), beta=2.5, f0_per_mm=1 / 3.0,
                                       stretch=(1.0, 2.0)) / 0.4)
    stripes = (0.5 + 0.5 * np.cos(2 * np.pi * d / 1.8 + 0.8 * curve(12.0))) ** 4
    echo = (0.8 * _layer(d, -5.0, skin, soft)
            + (0.025 + 0.45 * ligaments) * _layer(d, skin, f1, soft)
            + (0.10 + 0.55 * gland_tex + 0.25 * ligaments) * _layer(d, f1, f2, soft)
            + 0.02 * _layer(d, f2, f3, soft)
            + (0.04 + 0.25 * stripes) * _layer(d, f3, f4, soft)
            + 1.0 * _layer(d, f4, f4 + 1.0, soft)
            + (0.008 + 0.1 * (0.5 + 0.5 * np.cos(2 * np.pi * (d - f4) / 4.0)) ** 8)
            * sigmoid((d - f4 - 1.0) / soft))
    echo = echo.astype(np.float32)
    att_rel = np.zeros(shape, dtype=np.float32)
    mask = np.zeros(shape, dtype=np.uint8)
    if lesion is not None:
        ph = lesion.phenotype
        jj, ii = np.mgrid[:rows, :cols]
        pts = origin + ii.reshape(-1, 1) * sp * e_col + jj.reshape(-1, 1) * sp * e_row
        occ, rnorm, sd = (x.reshape(shape) for x in lesion.shape.evaluate(pts, sp))
        inner = {"anechoic": 0.0003, "hypoechoic": rng.uniform(0.007, 0.018),
                 "heterogeneous": rng.uniform(0.01, 0.025), "isoechoic": 0.03}[ph.echo]
        inner = inner * np.ones(shape, dtype=np.float32)
        if ph.echo == "heterogeneous":
            inner = inner * (0.4 + 1.6 * gland_tex)
        echo = echo * (1.0 - occ) + inner * occ
        if ph.halo:
            echo = echo + 0.35 * np.exp(-((sd - 1.2) / 0.8) ** 2) * (sd > 0)
        lo, hi = _POSTERIOR_STRENGTH[ph.posterior]
        strength = rng.uniform(lo, hi)
        body_occ = np.clip(0.5 - sd / max(sp, lesion.shape.margin_blur_mm), 0.0, 1.0)
        att_rel = (strength * 0.035 * body_occ).astype(np.float32)
        calc = lesion.calcifications
        if calc.positions_lps.shape[0]:
            q = calc.positions_lps - origin
            normal = np.cross(e_col, e_row)
            near = np.abs(q @ normal) < 1.5
            if near.any():
                splat(echo, q[near] @ e_row / sp, q[near] @ e_col / sp,
                      np.full(int(near.sum()), 1.5, np.float32),
                      np.full(int(near.sum()), max(0.5, 0.3 / sp), np.float32))
        mask = (sd <= 0).astype(np.uint8)
        if not mask.any():
            mask[int(np.clip(round(depth_c / sp), 0, rows - 1)), int(np.clip(round(col_c), 0, cols - 1))] = 1
    # attenuation relative to tissue, accumulated from the skin down (posterior features)
    path = np.cumsum(att_rel, axis=0) * sp - att_rel * sp
    gain = np.exp(np.clip(-2.0 * path, -3.0, 1.1))
    psf = (max(0.15, 0.6 * sp), max(0.35, 1.2 * sp))
    env = np.zeros(shape, dtype=np.float32)
    for _ in range(_LOOKS):                              # spatial compounding of a few looks
        re = gaussian_blur(rng.standard_normal(shape, dtype=np.float32), psf, (sp, sp))
        im = gaussian_blur(rng.standard_normal(shape, dtype=np.float32), psf, (sp, sp))
        look = np.sqrt(re * re + im * im)
        env += look / np.sqrt(np.mean(look * look))
    env /= _LOOKS
    db = 10.0 * np.log10(np.maximum(echo * gain, 0.0) + 1e-6) + 20.0 * np.log10(env + 1e-6)
    vox = np.clip(np.rint(205.0 + 8.5 * db), 0, 255).astype(np.uint8)
    geom = Geometry((sp, sp, 1.0), tuple(origin),
                    tuple(np.column_stack([e_col, e_row, np.cross(e_col, e_row)]).ravel()))
    role = Role(Modality.US, laterality=laterality, clock_position=float(clock_hour))
    name = None if plane == 0 else f"{role.key}_{US_PLANES[plane][0]}"
    return Image(vox, geom, role, acquisition_date=date, lesion_mask=mask, name=name,
                 source=SourceInfo(manufacturer="BINDS synthetic phantom",
                                   description=f"synthetic ultrasound, {US_PLANES[plane][0]} plane"))
