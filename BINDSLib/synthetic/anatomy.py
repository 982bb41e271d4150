"""The synthetic woman: breast shape and position in patient (LPS) millimetres, density, age.

Patient frame (LPS, mm): the chest wall under the breasts is the plane ``y = 0``; breast
tissue lies anterior to it (``y < 0``). Each breast is a half-ellipsoid on that plane: a
circular base of radius ``radius_mm`` centred at ``(center_x_mm, 0, 0)`` and an anterior
projection ``depth_mm`` to the nipple at ``(center_x_mm, -depth_mm, 0)``. The left breast has
``center_x_mm > 0`` (LPS ``+x`` is the patient's left). One shape serves every modality (no
compression in mammography, no supine/prone difference): see docs/SYNTHETIC.md.

Clock positions are as seen by an observer facing the patient: 12 o'clock is superior
(``+z``) and 3 o'clock points to the patient's left (``+x``) for both breasts, so 3 o'clock
is lateral in the left breast and medial in the right.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

__all__ = ["DENSITY_CATEGORIES", "Breast", "Anatomy", "sample_anatomy", "density_category",
           "sample_lesion_center", "clock_position"]

#: BI-RADS breast density categories and the glandular-fraction range each stands for.
DENSITY_CATEGORIES = {"a": (0.08, 0.20), "b": (0.20, 0.40), "c": (0.40, 0.60), "d": (0.60, 0.80)}


def density_category(glandular_fraction: float) -> str:
    """BI-RADS density letter (a-d) of a glandular fraction in [0, 1]."""
    for cat, (_, hi) in DENSITY_CATEGORIES.items():
        if glandular_fraction < hi:
            return cat
    return "d"


@dataclass(frozen=True)
class Breast:
    """One breast as a half-ellipsoid on the chest-wall plane ``y = 0`` (LPS mm)."""

    laterality: str
    center_x_mm: float
    radius_mm: float
    depth_mm: float

    @property
    def nipple_lps(self) -> np.ndarray:
        """``(3,)`` LPS position of the nipple."""
        return np.array([self.center_x_mm, -self.depth_mm, 0.0])

    def normalized_radius(self, points_lps: np.ndarray) -> np.ndarray:
        """``(N,)`` ellipsoidal radius of ``(N, 3)`` points: <= 1 inside (for ``y <= 0``)."""
        p = np.asarray(points_lps, dtype=np.float32)
        dx = (p[..., 0] - self.center_x_mm) / self.radius_mm
        dz = p[..., 2] / self.radius_mm
        dy = p[..., 1] / self.depth_mm
        return np.sqrt(dx * dx + dy * dy + dz * dz)

    def skin_y(self, x_mm, z_mm):
        """LPS ``y`` of the anterior skin surface above ``(x, z)`` (0 outside the base)."""
        r2 = ((np.asarray(x_mm) - self.center_x_mm) ** 2 + np.asarray(z_mm) ** 2) / self.radius_mm ** 2
        return -self.depth_mm * np.sqrt(np.clip(1.0 - r2, 0.0, 1.0))


@dataclass(frozen=True)
class Anatomy:
    """A woman's anatomy and the parameters shared by all her images.

    Attributes
    ----------
    age_years : float
    glandular_fraction : float
        Fraction of fibroglandular tissue (0-1); sets the BI-RADS density category.
    left, right : Breast
    mlo_angle_deg : float
        MLO tube angle from vertical.
    pectoral_mm : tuple of float
        Width (at the top edge) and height (along the chest-wall edge) of the pectoral
        muscle triangle on MLO views.
    muscle_mm : float
        Thickness of the pectoralis major in MR.
    bpe : float
        MR background parenchymal enhancement (relative signal rise of the gland at late phases).
    """

    age_years: float
    glandular_fraction: float
    left: Breast
    right: Breast
    mlo_angle_deg: float
    pectoral_mm: tuple[float, float]
    muscle_mm: float
    bpe: float

    @property
    def density(self) -> str:
        """BI-RADS density letter a-d."""
        return density_category(self.glandular_fraction)

    def breast(self, laterality: str) -> Breast:
        return self.left if laterality == "L" else self.right

    def with_glandular_fraction(self, fraction: float) -> "Anatomy":
        return dataclasses.replace(self, glandular_fraction=float(np.clip(fraction, 0.05, 0.85)))


def sample_anatomy(rng: np.random.Generator, age_years: float | None = None,
                   density: str | None = None) -> Anatomy:
    """Draw a woman: age 40-75, density a-d (10/40/40/10 %, denser when younger), breasts.

    Breast base radius 48-68 mm, projection 45-110 mm, half the gap between the breasts
    8-18 mm: sizes that fit the field of view of every preset.
    """
    age = float(rng.uniform(40.0, 75.0)) if age_years is None else float(age_years)
    z = 0.9 * rng.standard_normal() - 0.04 * (age - 55.0)
    cat = "abcd"[int(np.searchsorted([-1.24, 0.0, 1.24], z))]
    if density is not None:
        if density not in DENSITY_CATEGORIES:
            raise ValueError(f"density must be one of a, b, c, d, not {density!r}")
        cat = density
    lo, hi = DENSITY_CATEGORIES[cat]
    gf = float(rng.uniform(lo + 0.02, hi - 0.02))
    radius = float(rng.uniform(48.0, 68.0))
    depth = float(np.clip(radius * rng.uniform(0.85, 1.6), 45.0, 110.0))
    gap = float(rng.uniform(8.0, 18.0))
    asym = rng.uniform(0.97, 1.03, size=2)
    left = Breast("L", radius + gap, radius * float(asym[0]), depth * float(asym[1]))
    right = Breast("R", -(radius + gap), radius, depth)
    bpe_level = rng.choice([0.08, 0.2, 0.4, 0.65], p=[0.4, 0.35, 0.18, 0.07])
    bpe = float(bpe_level * (1.3 if age < 50 else 1.0))
    return Anatomy(
        age_years=round(age, 1), glandular_fraction=gf, left=left, right=right,
        mlo_angle_deg=float(rng.uniform(40.0, 50.0)),
        pectoral_mm=(float(rng.uniform(22.0, 40.0)), float(rng.uniform(70.0, 115.0))),
        muscle_mm=float(rng.uniform(8.0, 14.0)), bpe=bpe)


def sample_lesion_center(rng: np.random.Generator, breast: Breast, radius_mm: float) -> np.ndarray:
    """A lesion centre ``(3,)`` LPS inside ``breast``, at least ``radius_mm`` + 2 mm from its
    skin and chest wall, preferring the upper-outer quadrant (about half of cases)."""
    quad = rng.choice(["UO", "UI", "LO", "LI", "C"], p=[0.5, 0.15, 0.12, 0.08, 0.15])
    outer = 1.0 if breast.laterality == "L" else -1.0    # +x is lateral in the left breast
    margin = radius_mm + 2.0
    for _ in range(64):
        if quad == "C":
            r = rng.uniform(0.0, 0.25) * breast.radius_mm
            ang = rng.uniform(0.0, 2 * np.pi)
            dx, dz = r * np.sin(ang), r * np.cos(ang)
        else:
            r = rng.uniform(0.2, 0.75) * breast.radius_mm
            ang = rng.uniform(0.05, 0.5 * np.pi - 0.05)
            sx = outer if quad[1] == "O" else -outer
            sz = 1.0 if quad[0] == "U" else -1.0
            dx, dz = sx * r * np.sin(ang), sz * r * np.cos(ang)
        skin = -breast.depth_mm * np.sqrt(max(0.0, 1.0 - (dx * dx + dz * dz) / breast.radius_mm ** 2))
        lo, hi = skin + margin, -margin          # y between the skin and the chest wall
        if hi - lo < 0.0:
            continue
        y = rng.uniform(lo + 0.15 * (hi - lo), hi - 0.15 * (hi - lo))
        c = np.array([breast.center_x_mm + dx, y, dz])
        if breast.normalized_radius(c[None])[0] < 1.0 - margin / max(breast.depth_mm, breast.radius_mm):
            return c
    # small breast and large lesion: put it in the middle of the breast
    return np.array([breast.center_x_mm, -0.45 * breast.depth_mm, 0.0])


def clock_position(breast: Breast, point_lps) -> int:
    """Clock hour (1-12) of ``point_lps`` around the nipple, as seen facing the patient."""
    p = np.asarray(point_lps, dtype=float)
    ang = np.degrees(np.arctan2(p[0] - breast.center_x_mm, p[2])) % 360.0
    hour = int(round(ang / 30.0)) % 12
    return 12 if hour == 0 else hour
