"""Synthetic bilateral breast MRI: DCE (pre-contrast T1 and post-contrast phases), T2,
DWI and ADC on one axial grid.

Grid: an axial LPS box holding both breasts and the front of the chest (identity direction:
columns to the patient's left, rows to posterior, slices to superior). Every sequence,
DWI and ADC included, shares the same geometry, so a lesion mask drawn on one serves all.

Tissue model: fat, fibroglandular tissue (3D shaped noise thresholded to the woman's
glandular fraction), skin, pectoralis, chest wall, heart and lungs, each with a signal per
sequence; the lesion replaces tissue by its partial-volume occupancy.

* DCE: fat-suppressed T1; each tissue's relative enhancement ``E(t)`` multiplies the
  pre-contrast signal by ``1 + E(t)``. The lesion curve is
  ``(1 - exp(-t / tau_in)) exp(-k_out t)``, with ``k_out`` solved so that the late/first
  phase ratio falls in the drawn kinetic class (persistent > 1.1, plateau 0.9-1.1,
  washout < 0.9). Glandular tissue shows progressive background enhancement.
* T2 (no fat suppression): fat bright, fluid very bright; fibroadenomas bright, most
  cancers iso/dark, necrotic triple-negative centres bright.
* DWI: ``S0 exp(-b ADC)`` with fat suppressed; ADC stored as ``uint16`` in 1e-6 mm^2/s
  (scanner convention: 1000 = 1.0e-3 mm^2/s), 0 outside tissue.

All images have Rician noise and a shared smooth coil-sensitivity field; voxels are
``uint16``.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass

import numpy as np

from ..study import Geometry, Image, Modality, MRSequence, Role, SourceInfo
from .anatomy import Anatomy
from .fields import powerlaw_noise, quantile_threshold, sigmoid
from .lesion import LesionShape, Phenotype

__all__ = ["MR_FOV_MM", "ADC_UNIT_MM2_PER_S", "MRLesion", "mr_lesion", "mr_geometry",
           "kinetic_curve", "curve_type", "render_mri"]

#: Field of view (x, y, z) in mm, the same for every size preset.
MR_FOV_MM = (320.0, 160.0, 160.0)
_Y_MIN_MM = -122.5        # anterior edge of the box (the chest wall is y = 0)
#: Unit of the stored ADC voxels.
ADC_UNIT_MM2_PER_S = 1e-6

# signal per tissue: T1 pre (fat-suppressed), T2, DWI S0 (fat-suppressed), ADC (1e-3 mm^2/s)
_TISSUES = ("fat", "gland", "skin", "muscle", "chest", "heart", "lung")
_T1 = dict(fat=110.0, gland=300.0, skin=260.0, muscle=330.0, chest=250.0, heart=320.0, lung=15.0)
_T2 = dict(fat=520.0, gland=230.0, skin=300.0, muscle=140.0, chest=200.0, heart=120.0, lung=20.0)
_S0 = dict(fat=35.0, gland=260.0, skin=150.0, muscle=170.0, chest=150.0, heart=80.0, lung=8.0)
_ADC = dict(fat=0.3, gland=1.85, skin=1.2, muscle=1.4, chest=1.5, heart=2.8, lung=0.0)

_RATIO_BY_KINETICS = {"persistent": (1.15, 1.6), "plateau": (0.93, 1.07), "washout": (0.6, 0.85)}
_TAU_BY_KINETICS = {"persistent": (120.0, 260.0), "plateau": (40.0, 70.0), "washout": (20.0, 45.0)}
_T2_RATIO = {"dark": (0.6, 0.85), "iso": (0.95, 1.3), "bright": (1.8, 2.8), "fluid": (3.5, 4.5),
             "necrotic": (1.0, 1.3)}


@dataclass(frozen=True)
class MRLesion:
    """The lesion as MRI sees it: shape, kinetics and relative signals."""

    shape: LesionShape
    phenotype: Phenotype
    tau_in_s: float
    late_to_early: float
    t1_ratio: float
    t2_ratio: float
    t2_center_ratio: float


def mr_lesion(rng: np.random.Generator, shape: LesionShape, phenotype: Phenotype,
              slow_kinetics: bool = False) -> MRLesion:
    """Draw the MR-specific parameters of a lesion from its phenotype.

    ``slow_kinetics`` (luminal A) lengthens the wash-in time by 30 %.
    """
    lo, hi = _RATIO_BY_KINETICS[phenotype.kinetics]
    tlo, thi = _TAU_BY_KINETICS[phenotype.kinetics]
    tau = rng.uniform(tlo, thi) * (1.3 if slow_kinetics else 1.0)
    t2lo, t2hi = _T2_RATIO[phenotype.t2]
    t2 = rng.uniform(t2lo, t2hi)
    center = rng.uniform(2.5, 3.5) if phenotype.t2 == "necrotic" else t2
    t1 = 0.45 if phenotype.t2 == "fluid" else rng.uniform(0.85, 1.05)
    return MRLesion(shape, phenotype, float(tau), float(rng.uniform(lo, hi)), float(t1), float(t2),
                    float(center))


def kinetic_curve(times_s, tau_in_s: float, late_to_early: float) -> np.ndarray:
    """Relative enhancement at ``times_s`` (``(T,)``), peak-normalised to 1.

    ``k_out`` is chosen so that the last/first phase ratio is ``late_to_early``.
    """
    t = np.asarray(times_s, dtype=float)
    up = 1.0 - np.exp(-t / tau_in_s)
    if t.size >= 2 and t[-1] > t[0]:
        k_out = np.log(up[-1] / up[0] / late_to_early) / (t[-1] - t[0])
    else:
        k_out = 0.0
    f = up * np.exp(-k_out * t)
    fine = np.linspace(0.0, float(t.max()), 256)
    fmax = float(np.max((1.0 - np.exp(-fine / tau_in_s)) * np.exp(-k_out * fine)))
    return f / max(fmax, 1e-6)


def curve_type(first: float, last: float) -> str:
    """BI-RADS delayed-phase curve type from the first and last post-contrast signals
    (enhancement, or signal minus pre-contrast): > +10 % persistent, < -10 % washout."""
    change = (last - first) / max(abs(first), 1e-6)
    return "persistent" if change > 0.10 else ("washout" if change < -0.10 else "plateau")


def mr_geometry(shape: tuple[int, int, int], spacing_mm: tuple[float, float, float]) -> Geometry:
    """The axial LPS grid ``(slices, rows, cols)`` centred left-right and head-foot."""
    nz, ny, nx = shape
    sx, sy, sz = spacing_mm
    origin = (-(nx - 1) / 2.0 * sx, _Y_MIN_MM + 0.5 * sy, -(nz - 1) / 2.0 * sz)
    return Geometry((sx, sy, sz), origin)


def _rician(rng: np.random.Generator, signal: np.ndarray, sigma: float) -> np.ndarray:
    n1 = rng.standard_normal(signal.shape, dtype=np.float32)
    n2 = rng.standard_normal(signal.shape, dtype=np.float32)
    return np.sqrt((signal + sigma * n1) ** 2 + (sigma * n2) ** 2)


def _u16(a: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(a), 0, 65535).astype(np.uint16)


def render_mri(rng: np.random.Generator, anatomy: Anatomy, shape: tuple[int, int, int],
               spacing_mm: tuple[float, float, float], lesion: MRLesion | None = None,
               dce_times_s=(90.0, 180.0, 360.0), b_value: float = 800.0,
               date: _dt.date | None = None) -> list[Image]:
    """Render the MR sequences of one study.

    Parameters
    ----------
    rng : numpy.random.Generator
    anatomy : Anatomy
    shape : tuple of int
        ``(slices, rows, cols)``.
    spacing_mm : tuple of float
        ``(x, y, z)`` voxel spacing.
    lesion : MRLesion, optional
    dce_times_s : sequence of float
        Post-contrast phase times after injection (increasing, at least one).
    b_value : float
        DWI b-value in s/mm^2.

    Returns
    -------
    list of Image
        ``MR_T1_PRE``, ``MR_DCE1``.. ``MR_DCEk``, ``MR_T2``, ``MR_DWI_b<b>``, ``MR_ADC``, each
        ``uint16`` ``(slices, rows, cols)`` with the same lesion mask.
    """
    geom = mr_geometry(shape, spacing_mm)
    nz, ny, nx = shape
    sx, sy, sz = spacing_mm
    soft = 0.5 * min(spacing_mm)
    x = (geom.origin_mm[0] + np.arange(nx, dtype=np.float32) * sx)[None, None, :]
    y = (geom.origin_mm[1] + np.arange(ny, dtype=np.float32) * sy)[None, :, None]
    z = (geom.origin_mm[2] + np.arange(nz, dtype=np.float32) * sz)[:, None, None]
    frac = {t: np.zeros(shape, dtype=np.float32) for t in _TISSUES}
    breast = np.zeros(shape, dtype=np.float32)
    prior = np.full(shape, -5.0, dtype=np.float32)
    for b in (anatomy.left, anatomy.right):
        dx, dy, dz = (x - b.center_x_mm) / b.radius_mm, y / b.depth_mm, z / b.radius_mm
        rho = np.sqrt(dx * dx + dy * dy + dz * dz)
        r_dir = np.sqrt((x - b.center_x_mm) ** 2 + y * y + z * z) / np.maximum(rho, 1e-6)
        edge = (1.0 - rho) * r_dir
        inside = sigmoid(edge / soft) * sigmoid(-y / soft)
        breast = np.maximum(breast, inside)
        frac["skin"] = np.maximum(frac["skin"], inside * sigmoid((1.6 - edge) / soft))
        p = 1.4 * (1.0 - np.clip(rho, 0, 1) ** 2) - 0.8 * np.exp(-np.maximum(edge, 0) / 5.0) - np.exp(y / 6.0)
        prior = np.where(inside > 0.5, p, prior)
    tex = powerlaw_noise(rng, shape, (sz, sy, sx), beta=3.0, f0_per_mm=1 / 30.0, stretch=(1.0, 2.0, 1.0))
    fine = powerlaw_noise(rng, shape, (sz, sy, sx), beta=2.0, f0_per_mm=1 / 4.0)
    zfield = tex + prior
    thr = quantile_threshold(zfield[breast > 0.5], anatomy.glandular_fraction)
    tissue = breast - frac["skin"]
    frac["gland"] = sigmoid((zfield - thr) / 0.3) * tissue
    frac["fat"] = tissue - frac["gland"]
    m = anatomy.muscle_mm
    body = sigmoid(y / soft) * np.ones(shape, dtype=np.float32)
    frac["muscle"] = body * sigmoid((m - y) / soft)
    deep = body - frac["muscle"]
    heart_r = np.sqrt((x / 55.0) ** 2 + ((y - m - 60.0) / 55.0) ** 2 + (z / 60.0) ** 2)
    heart_shape = sigmoid((1.0 - heart_r) * 20.0)
    lung_shape = sigmoid((np.abs(x) - 50.0) / 3.0) * sigmoid((y - m - 6.0) / soft)
    frac["heart"] = deep * heart_shape * (1 - lung_shape)
    frac["lung"] = deep * lung_shape * (1 - heart_shape)
    frac["chest"] = deep - frac["heart"] - frac["lung"]
    occ = np.zeros(shape, dtype=np.float32)
    rnorm = np.ones(shape, dtype=np.float32) * 2.0
    mask = np.zeros(shape, dtype=np.uint8)
    if lesion is not None:
        ext = lesion.shape.extent_mm
        c = lesion.shape.center_lps
        lo = np.floor((c - ext - np.array(geom.origin_mm)) / np.array(spacing_mm)).astype(int)
        hi = np.ceil((c + ext - np.array(geom.origin_mm)) / np.array(spacing_mm)).astype(int) + 1
        lo = np.maximum(lo, 0)
        hi = np.minimum(hi, [nx, ny, nz])
        kk, jj, ii = np.mgrid[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]]
        pts = np.stack([geom.origin_mm[0] + ii * sx, geom.origin_mm[1] + jj * sy,
                        geom.origin_mm[2] + kk * sz], axis=-1).reshape(-1, 3)
        o, r, sd = lesion.shape.evaluate(pts, float(np.cbrt(sx * sy * sz)))
        sl = (slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0]))
        occ[sl] = o.reshape(kk.shape)
        rnorm[sl] = r.reshape(kk.shape)
        mask[sl] = (sd <= 0).reshape(kk.shape)
        if not mask.any():
            ijk = np.rint((c - np.array(geom.origin_mm)) / np.array(spacing_mm)).astype(int)
            mask[tuple(np.clip(ijk[::-1], 0, np.array(shape) - 1))] = 1
        for t in _TISSUES:
            frac[t] *= 1.0 - occ
    # coil sensitivity: a smooth random quadratic over the box, about +-10 %
    xn, yn, zn = x / (MR_FOV_MM[0] / 2), (y - y.mean()) / (MR_FOV_MM[1] / 2), z / (MR_FOV_MM[2] / 2)
    cb = rng.normal(0.0, 0.05, size=6).astype(np.float32)
    bias = 1.0 + cb[0] * xn + cb[1] * yn + cb[2] * zn + cb[3] * xn * xn + cb[4] * yn * yn + cb[5] * xn * yn

    def mix(table, lesion_value):
        s = sum(frac[t] * np.float32(table[t]) for t in _TISSUES)
        return s + occ * lesion_value

    les_t1 = les_t2 = les_s0 = les_adc = np.float32(0.0)
    weight = np.zeros(shape, dtype=np.float32)
    curve = np.zeros(len(dce_times_s))
    if lesion is not None:
        ph = lesion.phenotype
        core = np.clip(1.0 - rnorm / 0.6, 0.0, 1.0)               # necrotic / central part
        les_t1 = np.float32(_T1["gland"] * lesion.t1_ratio) * (1.0 + 0.05 * fine)
        t2map = lesion.t2_ratio + (lesion.t2_center_ratio - lesion.t2_ratio) * core
        les_t2 = np.float32(_T2["gland"]) * t2map * (1.0 + 0.08 * fine)
        les_s0 = np.float32(_S0["gland"]) * np.minimum(t2map, 2.5) * 0.9
        les_adc = (ph.adc_1e3 + (0.5 * core if ph.t2 == "necrotic" else 0.0)) * (1.0 + 0.06 * fine)
        weight = {
            "homogeneous": 0.9 + 0.1 * sigmoid(fine),
            "heterogeneous": 0.4 + 0.6 * sigmoid(fine / 0.5),
            "rim": 0.2 + 0.8 * np.clip((rnorm - 0.45) / 0.4, 0.0, 1.0),
            "none": 0.6 * np.clip((rnorm - 0.8) / 0.2, 0.0, 1.0),
        }[ph.pattern].astype(np.float32)
        curve = ph.peak_enhancement * kinetic_curve(dce_times_s, lesion.tau_in_s, lesion.late_to_early)
    t1 = mix(_T1, les_t1)
    images: list[Image] = []

    def add(vox, role, what):
        images.append(Image(vox, geom, role, acquisition_date=date, lesion_mask=mask.copy(),
                            source=SourceInfo(manufacturer="BINDS synthetic phantom",
                                              description=f"synthetic breast MRI, {what}")))

    add(_u16(_rician(rng, t1 * bias, 6.0)), Role(Modality.MR, sequence=MRSequence.T1_PRE),
        "T1 fat-suppressed pre-contrast")
    for k, t in enumerate(dce_times_s, start=1):
        enh = {"gland": anatomy.bpe * t / (t + 150.0), "muscle": 0.35 * (1 - np.exp(-t / 60.0)),
               "skin": 0.3 * (1 - np.exp(-t / 90.0)), "chest": 0.2, "heart": 3.0 * np.exp(-t / 300.0),
               "fat": 0.05, "lung": 0.0}
        post = sum(frac[n] * np.float32(_T1[n] * (1.0 + enh[n])) for n in _TISSUES)
        post = post + occ * les_t1 * (1.0 + np.float32(curve[k - 1]) * weight)
        add(_u16(_rician(rng, post * bias, 6.0)),
            Role(Modality.MR, sequence=MRSequence.DCE, phase=k, phase_time_s=float(t)),
            f"T1 fat-suppressed post-contrast phase {k} ({t:g} s)")
    add(_u16(_rician(rng, mix(_T2, les_t2) * bias, 8.0)), Role(Modality.MR, sequence=MRSequence.T2), "T2")
    adc = mix(_ADC, les_adc)
    s0 = mix(_S0, les_s0)
    dwi = s0 * np.exp(-b_value * adc * 1e-3)
    add(_u16(_rician(rng, dwi * bias, 5.0)),
        Role(Modality.MR, sequence=MRSequence.DWI, b_value=float(b_value)), f"DWI b={b_value:g}")
    present = sum(frac[t] for t in ("gland", "skin", "muscle", "chest", "heart")) + occ
    adc_meas = (adc + 0.06 * rng.standard_normal(shape, dtype=np.float32)) * (present > 0.5)
    add(_u16(np.maximum(adc_meas, 0.0) * 1000.0), Role(Modality.MR, sequence=MRSequence.ADC),
        "ADC map (1e-6 mm^2/s)")
    return images
