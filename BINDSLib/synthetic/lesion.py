"""Lesions: pathology records, imaging phenotypes drawn from them, and 3D lesion shapes.

A case's lesion is decided in three steps, each a pure function of a random generator:

1. :func:`sample_pathology` - histology and (for cancers) receptor status giving the
   molecular subtype mix luminal A 40 %, luminal B 30 %, HER2-enriched 12 %,
   triple-negative 18 %.
2. :func:`sample_phenotype` - the BI-RADS-like imaging features (shape, margin, orientation,
   posterior acoustic features, kinetics, enhancement pattern, T2, ADC, calcifications) drawn
   from tables per histology / subtype. The tables overlap, and 20 % of cases are *atypical*:
   a few feature groups are drawn from the other class (benign lesions that look malignant
   and vice versa), so no single feature separates the classes.
3. :func:`make_lesion_shape` - a 3D shape (lobulated ellipsoid, optional spicules) placed in
   patient space; :meth:`LesionShape.evaluate` gives partial-volume occupancy at any points,
   so mammograms, ultrasound and MRI all see the same physical lesion.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from ..study import Pathology, Subtype

__all__ = [
    "SUBTYPE_PROBABILITIES", "BENIGN_HISTOLOGY_PROBABILITIES", "ATYPICAL_PROBABILITY",
    "sample_pathology", "Phenotype", "sample_phenotype", "LesionShape", "make_lesion_shape",
    "Calcifications", "make_calcifications",
]

#: Subtype mix of the synthetic cancers.
SUBTYPE_PROBABILITIES = {
    Subtype.LUMINAL_A: 0.40, Subtype.LUMINAL_B: 0.30,
    Subtype.HER2_ENRICHED: 0.12, Subtype.TRIPLE_NEGATIVE: 0.18,
}

#: Benign histologies and their frequencies (fat necrosis, sclerosing adenosis, radial scar
#: and papilloma are the classic malignant mimics).
BENIGN_HISTOLOGY_PROBABILITIES = {
    "fibroadenoma": 0.40, "fibrocystic change (cyst)": 0.25, "intraductal papilloma": 0.10,
    "fat necrosis": 0.08, "sclerosing adenosis": 0.09, "radial scar": 0.08,
}

_HISTOLOGY_BY_SUBTYPE = {
    Subtype.LUMINAL_A: {"invasive ductal carcinoma (NST)": 0.70, "invasive lobular carcinoma": 0.17,
                        "mucinous carcinoma": 0.05, "ductal carcinoma in situ": 0.08},
    Subtype.LUMINAL_B: {"invasive ductal carcinoma (NST)": 0.80, "invasive lobular carcinoma": 0.08,
                        "ductal carcinoma in situ": 0.12},
    Subtype.HER2_ENRICHED: {"invasive ductal carcinoma (NST)": 0.80, "ductal carcinoma in situ": 0.20},
    Subtype.TRIPLE_NEGATIVE: {"invasive ductal carcinoma (NST)": 0.95, "metaplastic carcinoma": 0.05},
}
_GRADE_BY_SUBTYPE = {
    Subtype.LUMINAL_A: [0.50, 0.45, 0.05], Subtype.LUMINAL_B: [0.05, 0.55, 0.40],
    Subtype.HER2_ENRICHED: [0.0, 0.30, 0.70], Subtype.TRIPLE_NEGATIVE: [0.0, 0.15, 0.85],
}

#: Probability that a lesion takes some feature groups from the other class.
ATYPICAL_PROBABILITY = 0.20


def _pick(rng: np.random.Generator, table: dict):
    keys = list(table)
    p = np.array([table[k] for k in keys], dtype=float)
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


def _r5(v: float) -> float:
    return float(np.round(v / 5.0) * 5.0)


def sample_pathology(rng: np.random.Generator, diagnosis: str,
                     subtype: Subtype | str | None = None) -> Pathology | None:
    """A pathology record for a ``'benign'`` or ``'malignant'`` lesion (``None`` for normal).

    Receptor values follow the St Gallen surrogate definitions that
    :attr:`BINDSLib.study.Pathology.subtype` applies, so the record's derived subtype is the
    drawn one. ``subtype`` forces a subtype (malignant only).
    """
    if diagnosis == "normal":
        return None
    if diagnosis == "benign":
        return Pathology(malignant=False, histology=_pick(rng, BENIGN_HISTOLOGY_PROBABILITIES))
    if diagnosis != "malignant":
        raise ValueError(f"diagnosis must be normal, benign or malignant, not {diagnosis!r}")
    st = _pick(rng, SUBTYPE_PROBABILITIES)
    if subtype is not None:
        st = Subtype(subtype)
    histology = _pick(rng, _HISTOLOGY_BY_SUBTYPE[st])
    grade = int(rng.choice([1, 2, 3], p=_GRADE_BY_SUBTYPE[st]))
    u = rng.uniform(size=6)
    her2_neg = lambda x: (0, None) if x < 0.45 else ((1, None) if x < 0.85 else (2, False))  # noqa: E731
    if st is Subtype.LUMINAL_A:
        er, pr, ki = _r5(50 + 50 * u[0]), _r5(20 + 80 * u[1]), float(round(3 + 16 * u[2]))
        her2, ish = her2_neg(u[3])
    elif st is Subtype.LUMINAL_B:
        er = _r5(10 + 90 * u[0])
        if u[3] < 0.3:                      # luminal B, HER2-positive
            her2, ish = (3, None) if u[4] < 0.7 else (2, True)
            pr, ki = _r5(100 * u[1]), float(round(15 + 45 * u[2]))
        else:                               # luminal B, HER2-negative: Ki-67 high or PR low
            her2, ish = her2_neg(u[4])
            if u[5] < 0.75:
                pr, ki = _r5(100 * u[1]), float(round(20 + 40 * u[2]))
            else:
                pr, ki = float(round(19 * u[1])), float(round(5 + 14 * u[2]))
    elif st is Subtype.HER2_ENRICHED:
        er, pr, ki = 0.0, 0.0, float(round(20 + 50 * u[2]))
        her2, ish = (3, None) if u[3] < 0.8 else (2, True)
    else:
        er, pr, ki = 0.0, 0.0, float(round(30 + 60 * u[2]))
        her2, ish = her2_neg(u[3])
    path = Pathology(malignant=True, histology=histology, grade=grade, er_percent=er,
                     pr_percent=pr, her2_score=her2, her2_ish_amplified=ish, ki67_percent=ki)
    if path.subtype is not st:  # pragma: no cover - guards the tables above
        raise RuntimeError(f"receptor draw gave {path.subtype}, expected {st}")
    return path


# --- imaging phenotype tables ---------------------------------------------------------------
# A feature spec is {category: probability} or ("normal", mean, sd) or ("uniform", lo, hi).
_FEATURE_GROUPS = {
    "morphology": ("shape", "margin"), "orientation": ("aspect",), "echo": ("echo", "halo"),
    "posterior": ("posterior",), "kinetics": ("kinetics", "pattern", "peak_enhancement"),
    "t2": ("t2",), "diffusion": ("adc_1e3",), "calcifications": ("calcifications",),
}

_BENIGN = {
    "fibroadenoma": dict(
        shape={"oval": 0.75, "round": 0.15, "irregular": 0.10},
        margin={"circumscribed": 0.70, "microlobulated": 0.15, "indistinct": 0.15},
        aspect=("normal", 0.65, 0.14), echo={"hypoechoic": 0.8, "heterogeneous": 0.15, "isoechoic": 0.05},
        halo={True: 0.03, False: 0.97},
        posterior={"enhancement": 0.35, "none": 0.55, "shadowing": 0.10},
        kinetics={"persistent": 0.70, "plateau": 0.20, "washout": 0.10},
        pattern={"homogeneous": 0.60, "heterogeneous": 0.35, "rim": 0.05},
        peak_enhancement=("uniform", 0.5, 1.4), t2={"bright": 0.70, "iso": 0.25, "dark": 0.05},
        adc_1e3=("normal", 1.55, 0.22), calcifications={"none": 0.85, "coarse": 0.15},
        diameter_mm=("uniform", 10.0, 30.0), mg_contrast=("uniform", 0.7, 1.0)),
    "fibrocystic change (cyst)": dict(
        shape={"round": 0.5, "oval": 0.5}, margin={"circumscribed": 0.85, "indistinct": 0.15},
        aspect=("normal", 0.8, 0.12), echo={"anechoic": 0.85, "hypoechoic": 0.15},
        halo={True: 0.0, False: 1.0},
        posterior={"enhancement": 0.85, "none": 0.15, "shadowing": 0.0},
        kinetics={"persistent": 1.0}, pattern={"none": 0.7, "rim": 0.3},
        peak_enhancement=("uniform", 0.0, 0.12), t2={"fluid": 1.0},
        adc_1e3=("normal", 2.3, 0.3), calcifications={"none": 0.8, "punctate": 0.2},
        diameter_mm=("uniform", 5.0, 25.0), mg_contrast=("uniform", 0.7, 1.0)),
    "intraductal papilloma": dict(
        shape={"oval": 0.6, "round": 0.2, "irregular": 0.2},
        margin={"circumscribed": 0.5, "microlobulated": 0.2, "indistinct": 0.3},
        aspect=("normal", 0.8, 0.15), echo={"hypoechoic": 0.85, "isoechoic": 0.15},
        halo={True: 0.05, False: 0.95},
        posterior={"enhancement": 0.3, "none": 0.6, "shadowing": 0.1},
        kinetics={"persistent": 0.30, "plateau": 0.35, "washout": 0.35},
        pattern={"homogeneous": 0.7, "heterogeneous": 0.3},
        peak_enhancement=("uniform", 0.8, 1.8), t2={"bright": 0.4, "iso": 0.6},
        adc_1e3=("normal", 1.3, 0.2), calcifications={"none": 0.9, "punctate": 0.1},
        diameter_mm=("uniform", 5.0, 15.0), mg_contrast=("uniform", 0.6, 0.9)),
    "fat necrosis": dict(
        shape={"irregular": 0.6, "round": 0.4},
        margin={"indistinct": 0.4, "angular": 0.2, "spiculated": 0.2, "circumscribed": 0.2},
        aspect=("normal", 0.9, 0.2), echo={"heterogeneous": 0.6, "hypoechoic": 0.4},
        halo={True: 0.1, False: 0.9},
        posterior={"enhancement": 0.2, "none": 0.4, "shadowing": 0.4},
        kinetics={"persistent": 0.5, "plateau": 0.3, "washout": 0.2},
        pattern={"rim": 0.5, "heterogeneous": 0.5},
        peak_enhancement=("uniform", 0.4, 1.3), t2={"bright": 0.3, "iso": 0.5, "dark": 0.2},
        adc_1e3=("normal", 1.4, 0.3), calcifications={"none": 0.6, "coarse": 0.4},
        diameter_mm=("uniform", 8.0, 25.0), mg_contrast=("uniform", 0.4, 0.8)),
    "sclerosing adenosis": dict(
        shape={"oval": 0.4, "irregular": 0.6},
        margin={"indistinct": 0.5, "microlobulated": 0.3, "circumscribed": 0.2},
        aspect=("normal", 0.85, 0.2), echo={"hypoechoic": 0.8, "heterogeneous": 0.2},
        halo={True: 0.05, False: 0.95},
        posterior={"enhancement": 0.1, "none": 0.6, "shadowing": 0.3},
        kinetics={"persistent": 0.5, "plateau": 0.3, "washout": 0.2},
        pattern={"homogeneous": 0.4, "heterogeneous": 0.6},
        peak_enhancement=("uniform", 0.6, 1.5), t2={"bright": 0.3, "iso": 0.7},
        adc_1e3=("normal", 1.35, 0.25), calcifications={"none": 0.4, "punctate": 0.6},
        diameter_mm=("uniform", 5.0, 20.0), mg_contrast=("uniform", 0.5, 0.8)),
    "radial scar": dict(
        shape={"irregular": 0.9, "oval": 0.1},
        margin={"spiculated": 0.7, "angular": 0.2, "indistinct": 0.1},
        aspect=("normal", 1.0, 0.2), echo={"hypoechoic": 0.7, "heterogeneous": 0.3},
        halo={True: 0.1, False: 0.9},
        posterior={"none": 0.5, "shadowing": 0.5},
        kinetics={"persistent": 0.6, "plateau": 0.3, "washout": 0.1},
        pattern={"homogeneous": 0.3, "heterogeneous": 0.7},
        peak_enhancement=("uniform", 0.4, 1.2), t2={"iso": 0.7, "dark": 0.3},
        adc_1e3=("normal", 1.5, 0.25), calcifications={"none": 0.8, "punctate": 0.2},
        diameter_mm=("uniform", 8.0, 20.0), mg_contrast=("uniform", 0.35, 0.65)),
}

_MALIGNANT = {
    Subtype.LUMINAL_A: dict(
        shape={"irregular": 0.80, "oval": 0.15, "round": 0.05},
        margin={"spiculated": 0.55, "angular": 0.15, "indistinct": 0.20, "microlobulated": 0.05,
                "circumscribed": 0.05},
        aspect=("normal", 1.15, 0.25), echo={"hypoechoic": 0.8, "heterogeneous": 0.2},
        halo={True: 0.45, False: 0.55},
        posterior={"shadowing": 0.6, "none": 0.3, "enhancement": 0.1},
        kinetics={"washout": 0.45, "plateau": 0.35, "persistent": 0.20},
        pattern={"heterogeneous": 0.6, "homogeneous": 0.35, "rim": 0.05},
        peak_enhancement=("uniform", 0.9, 2.0), t2={"dark": 0.4, "iso": 0.55, "bright": 0.05},
        adc_1e3=("normal", 1.05, 0.18), calcifications={"none": 0.75, "fine_pleomorphic": 0.25},
        diameter_mm=("uniform", 8.0, 22.0), mg_contrast=("uniform", 0.8, 1.1)),
    Subtype.LUMINAL_B: dict(
        shape={"irregular": 0.80, "oval": 0.15, "round": 0.05},
        margin={"spiculated": 0.35, "angular": 0.20, "indistinct": 0.30, "microlobulated": 0.15},
        aspect=("normal", 1.1, 0.25), echo={"hypoechoic": 0.7, "heterogeneous": 0.3},
        halo={True: 0.35, False: 0.65},
        posterior={"shadowing": 0.45, "none": 0.4, "enhancement": 0.15},
        kinetics={"washout": 0.60, "plateau": 0.30, "persistent": 0.10},
        pattern={"heterogeneous": 0.6, "homogeneous": 0.25, "rim": 0.15},
        peak_enhancement=("uniform", 1.0, 2.2), t2={"dark": 0.3, "iso": 0.6, "bright": 0.1},
        adc_1e3=("normal", 0.98, 0.18), calcifications={"none": 0.65, "fine_pleomorphic": 0.35},
        diameter_mm=("uniform", 10.0, 28.0), mg_contrast=("uniform", 0.8, 1.1)),
    Subtype.HER2_ENRICHED: dict(
        shape={"irregular": 0.70, "oval": 0.20, "round": 0.10},
        margin={"indistinct": 0.45, "microlobulated": 0.25, "spiculated": 0.15, "angular": 0.15},
        aspect=("normal", 1.0, 0.25), echo={"hypoechoic": 0.6, "heterogeneous": 0.4},
        halo={True: 0.25, False: 0.75},
        posterior={"none": 0.5, "enhancement": 0.25, "shadowing": 0.25},
        kinetics={"washout": 0.80, "plateau": 0.15, "persistent": 0.05},
        pattern={"heterogeneous": 0.6, "rim": 0.2, "homogeneous": 0.2},
        peak_enhancement=("uniform", 1.3, 2.5), t2={"iso": 0.6, "bright": 0.3, "dark": 0.1},
        adc_1e3=("normal", 1.0, 0.18), calcifications={"fine_pleomorphic": 0.70, "none": 0.30},
        diameter_mm=("uniform", 12.0, 30.0), mg_contrast=("uniform", 0.8, 1.1)),
    Subtype.TRIPLE_NEGATIVE: dict(
        shape={"round": 0.45, "oval": 0.30, "irregular": 0.25},
        margin={"circumscribed": 0.30, "microlobulated": 0.30, "indistinct": 0.30, "spiculated": 0.10},
        aspect=("normal", 0.95, 0.2), echo={"hypoechoic": 0.55, "heterogeneous": 0.45},
        halo={True: 0.15, False: 0.85},
        posterior={"enhancement": 0.45, "none": 0.40, "shadowing": 0.15},
        kinetics={"washout": 0.60, "plateau": 0.30, "persistent": 0.10},
        pattern={"rim": 0.70, "heterogeneous": 0.20, "homogeneous": 0.10},
        peak_enhancement=("uniform", 1.2, 2.4), t2={"necrotic": 0.5, "iso": 0.4, "bright": 0.1},
        adc_1e3=("normal", 1.05, 0.2), calcifications={"none": 0.9, "fine_pleomorphic": 0.1},
        diameter_mm=("uniform", 12.0, 30.0), mg_contrast=("uniform", 0.8, 1.1)),
}

#: Features that a histology changes whatever the subtype.
_HISTOLOGY_OVERRIDES = {
    "invasive lobular carcinoma": dict(
        shape={"irregular": 1.0}, margin={"indistinct": 0.5, "spiculated": 0.5},
        kinetics={"persistent": 0.35, "plateau": 0.35, "washout": 0.30},
        adc_1e3=("normal", 1.1, 0.18), calcifications={"none": 1.0},
        mg_contrast=("uniform", 0.35, 0.6)),
    "ductal carcinoma in situ": dict(
        shape={"irregular": 1.0}, margin={"indistinct": 1.0}, posterior={"none": 1.0},
        kinetics={"persistent": 0.35, "plateau": 0.40, "washout": 0.25},
        pattern={"heterogeneous": 1.0}, adc_1e3=("normal", 1.25, 0.2),
        calcifications={"fine_pleomorphic": 0.9, "none": 0.1}, mg_contrast=("uniform", 0.2, 0.4),
        diameter_mm=("uniform", 8.0, 25.0)),
    "mucinous carcinoma": dict(
        shape={"oval": 0.6, "round": 0.4}, margin={"circumscribed": 0.5, "microlobulated": 0.5},
        aspect=("normal", 0.8, 0.15), posterior={"enhancement": 0.7, "none": 0.3},
        kinetics={"persistent": 0.6, "plateau": 0.3, "washout": 0.1}, t2={"fluid": 1.0},
        adc_1e3=("normal", 1.8, 0.3)),
    "metaplastic carcinoma": dict(t2={"necrotic": 0.8, "bright": 0.2}, diameter_mm=("uniform", 20.0, 30.0)),
}

#: Class prototypes used for atypical cases (features borrowed from the other class).
_MIMIC_OF_BENIGN = _MALIGNANT[Subtype.LUMINAL_B]
_MIMIC_OF_MALIGNANT = _BENIGN["fibroadenoma"]


def _draw(rng: np.random.Generator, spec):
    if isinstance(spec, dict):
        return _pick(rng, spec)
    kind, a, b = spec
    return float(rng.normal(a, b)) if kind == "normal" else float(rng.uniform(a, b))


@dataclass(frozen=True)
class Phenotype:
    """Imaging features of one lesion (BI-RADS lexicon words where one exists).

    Attributes
    ----------
    diameter_mm : float
        Longest diameter.
    shape : {'oval', 'round', 'irregular'}
    margin : {'circumscribed', 'microlobulated', 'indistinct', 'angular', 'spiculated'}
    aspect : float
        Height (antero-posterior) over width: < 1 parallel ("wider than tall"), > 1 not parallel.
    echo : {'anechoic', 'hypoechoic', 'heterogeneous', 'isoechoic'}
    halo : bool
        Echogenic rim on ultrasound.
    posterior : {'enhancement', 'none', 'shadowing'}
    kinetics : {'persistent', 'plateau', 'washout'}
        DCE time-intensity curve type.
    pattern : {'homogeneous', 'heterogeneous', 'rim', 'none'}
        Internal enhancement.
    peak_enhancement : float
        Peak relative signal increase on DCE.
    t2 : {'dark', 'iso', 'bright', 'fluid', 'necrotic'}
    adc_1e3 : float
        Mean apparent diffusion coefficient in 1e-3 mm^2/s.
    calcifications : {'none', 'coarse', 'punctate', 'fine_pleomorphic'}
    mg_contrast : float
        Relative X-ray attenuation of the mass (1 = like a typical invasive cancer).
    atypical_groups : tuple of str
        Feature groups borrowed from the other class (empty for a typical lesion).
    """

    diameter_mm: float
    shape: str
    margin: str
    aspect: float
    echo: str
    halo: bool
    posterior: str
    kinetics: str
    pattern: str
    peak_enhancement: float
    t2: str
    adc_1e3: float
    calcifications: str
    mg_contrast: float
    atypical_groups: tuple[str, ...] = ()

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["atypical_groups"] = list(self.atypical_groups)
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in d.items()}


def sample_phenotype(rng: np.random.Generator, pathology: Pathology,
                     atypical_probability: float = ATYPICAL_PROBABILITY) -> Phenotype:
    """Draw the imaging features of the lesion with ``pathology`` (benign or malignant)."""
    if pathology.malignant:
        table = dict(_MALIGNANT[pathology.subtype])
        table.update(_HISTOLOGY_OVERRIDES.get(pathology.histology, {}))
        mimic = _MIMIC_OF_MALIGNANT
    else:
        table = dict(_BENIGN[pathology.histology])
        mimic = _MIMIC_OF_BENIGN
    atypical = rng.uniform() < atypical_probability
    groups = list(_FEATURE_GROUPS)
    n_borrow = int(rng.integers(2, 5))
    borrowed = tuple(sorted(rng.choice(groups, size=n_borrow, replace=False).tolist())) if atypical else ()
    for g in borrowed:
        for feat in _FEATURE_GROUPS[g]:
            table[feat] = mimic[feat]
    v = {k: _draw(rng, table[k]) for k in (
        "diameter_mm", "shape", "margin", "aspect", "echo", "halo", "posterior", "kinetics",
        "pattern", "peak_enhancement", "t2", "adc_1e3", "calcifications", "mg_contrast")}
    if pathology.malignant and pathology.grade == 3:
        v["diameter_mm"] *= 1.1
    v["diameter_mm"] = float(np.clip(v["diameter_mm"], 5.0, 30.0))
    v["aspect"] = float(np.clip(v["aspect"], 0.45, 1.7))
    v["adc_1e3"] = float(np.clip(v["adc_1e3"], 0.6, 3.0))
    v["halo"] = bool(v["halo"])
    return Phenotype(**v, atypical_groups=borrowed)


# --- calcifications -------------------------------------------------------------------------
@dataclass(eq=False)
class Calcifications:
    """Calcification particles: ``positions_lps`` ``(K, 3)`` mm and ``diameters_mm`` ``(K,)``."""

    kind: str
    positions_lps: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    diameters_mm: np.ndarray = field(default_factory=lambda: np.zeros(0))


def make_calcifications(rng: np.random.Generator, kind: str, center_lps: np.ndarray,
                        radius_mm: float, nipple_lps: np.ndarray) -> Calcifications:
    """Particles for a calcification ``kind`` around a lesion.

    ``fine_pleomorphic``: 8-40 particles of 0.1-0.5 mm along a few ducts pointing to the
    nipple (segmental / linear); ``punctate``: 5-15 round 0.2-0.5 mm particles in a cluster;
    ``coarse``: 2-6 "popcorn" particles of 1-3 mm inside the lesion.
    """
    c = np.asarray(center_lps, dtype=float)
    if kind == "none":
        return Calcifications(kind)
    if kind == "coarse":
        k = int(rng.integers(2, 7))
        pos = c + rng.normal(0.0, 0.4 * radius_mm, size=(k, 3))
        return Calcifications(kind, pos, rng.uniform(1.0, 3.0, size=k))
    if kind == "punctate":
        k = int(rng.integers(5, 16))
        pos = c + rng.normal(0.0, 0.6 * radius_mm + 2.0, size=(k, 3))
        return Calcifications(kind, pos, rng.uniform(0.2, 0.5, size=k))
    if kind != "fine_pleomorphic":
        raise ValueError(f"unknown calcification kind {kind!r}")
    k = int(rng.integers(8, 41))
    to_nipple = np.asarray(nipple_lps, dtype=float) - c
    to_nipple /= max(np.linalg.norm(to_nipple), 1e-6)
    n_ducts = int(rng.integers(1, 4))
    duct_dirs = to_nipple + rng.normal(0.0, 0.35, size=(n_ducts, 3))
    duct_dirs /= np.linalg.norm(duct_dirs, axis=1, keepdims=True)
    which = rng.integers(0, n_ducts, size=k)
    t = rng.uniform(-0.8, 1.6, size=k) * radius_mm
    pos = c + duct_dirs[which] * t[:, None] + rng.normal(0.0, 0.8, size=(k, 3))
    return Calcifications(kind, pos, rng.uniform(0.1, 0.5, size=k))


# --- 3D shape -------------------------------------------------------------------------------
@dataclass(eq=False)
class LesionShape:
    """A lesion in patient space: a lobulated ellipsoid with optional spicules.

    Attributes
    ----------
    center_lps : numpy.ndarray
        ``(3,)`` centre, LPS mm.
    semi_axes_mm : numpy.ndarray
        ``(3,)`` semi-axes along ``axes`` rows.
    axes : numpy.ndarray
        ``(3, 3)`` orthonormal rows: two horizontal axes (in the x-z plane) and the
        antero-posterior axis ``(0, 1, 0)``.
    lobe_dirs, lobe_amp, lobe_kappa : numpy.ndarray
        ``(K, 3)``, ``(K,)``, ``(K,)``: radial perturbation of the unit-sphere radius by
        bumps ``sum_k amp_k exp(kappa_k (u . dir_k - 1))`` (positive amplitudes are lobes,
        negative ones notches; large ``kappa`` makes small, sharp lobes).
    margin_blur_mm : float
        Width of the boundary transition (indistinct margins are wide).
    spicule_dirs, spicule_len_mm, spicule_width_mm : numpy.ndarray
        ``(S, 3)``, ``(S,)``, ``(S,)``.
    scale : float
        Size factor (1 = the drawn size); used for tumour growth over years.
    """

    center_lps: np.ndarray
    semi_axes_mm: np.ndarray
    axes: np.ndarray
    lobe_dirs: np.ndarray
    lobe_amp: np.ndarray
    lobe_kappa: np.ndarray
    margin_blur_mm: float
    spicule_dirs: np.ndarray
    spicule_len_mm: np.ndarray
    spicule_width_mm: np.ndarray
    scale: float = 1.0

    def scaled(self, scale: float) -> "LesionShape":
        """The same lesion at ``scale`` times its size."""
        return dataclasses.replace(self, scale=float(scale))

    def body_radius_mm(self, direction_lps=None) -> float:
        """Largest distance (mm) from the centre to the body boundary, over all directions or
        (given a unit ``direction_lps``) along that direction and its opposite."""
        if direction_lps is None:
            u = _FIBONACCI_SPHERE
        else:
            d = np.asarray(direction_lps, dtype=np.float32)
            u = np.stack([d, -d]) / np.linalg.norm(d)
        local = (u @ self.axes.T.astype(np.float32)) / self.semi_axes_mm.astype(np.float32)
        norm = np.linalg.norm(local, axis=1)
        r = self._radius_along(local / norm[:, None]) / norm
        return float(self.scale * r.max())

    @property
    def extent_mm(self) -> float:
        """Radius of a sphere around the centre that holds the lesion and its spicules."""
        sp = float(self.spicule_len_mm.max()) if self.spicule_len_mm.size else 0.0
        return self.body_radius_mm() + self.scale * sp + 2.0 * self.margin_blur_mm + 1.0

    def _radius_along(self, unit_local: np.ndarray) -> np.ndarray:
        """Perturbed unit-sphere radius for ``(N, 3)`` unit vectors in normalised coordinates."""
        cosang = unit_local @ self.lobe_dirs.T.astype(np.float32)
        bumps = np.exp(self.lobe_kappa.astype(np.float32) * (cosang - 1.0))
        pert = bumps @ self.lobe_amp.astype(np.float32)
        return np.maximum(1.0 + pert, 0.35).astype(np.float32)

    def evaluate(self, points_lps: np.ndarray, voxel_mm: float, spicules: bool = True
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Occupancy of the lesion at points.

        Parameters
        ----------
        points_lps : numpy.ndarray
            ``(N, 3)`` LPS positions (mm).
        voxel_mm : float
            Sampling size, used for the partial-volume ramp at the boundary.
        spicules : bool
            Include the spicules in ``occupancy``.

        Returns
        -------
        occupancy : numpy.ndarray
            ``(N,)`` float32 in [0, 1] (0.5 on the boundary).
        rnorm : numpy.ndarray
            ``(N,)`` float32 relative radius (0 at the centre, 1 on the boundary).
        signed_distance_mm : numpy.ndarray
            ``(N,)`` float32 distance to the body boundary along the ray from the centre
            (negative inside). ``signed_distance_mm <= 0`` is the lesion body without its
            spicules: what a radiologist outlines, and what the synthetic masks hold.
        """
        p = np.asarray(points_lps, dtype=np.float32) - self.center_lps.astype(np.float32)
        ramp = max(float(voxel_mm), float(self.margin_blur_mm))
        dist = np.sqrt((p * p).sum(axis=1))
        rmax = self.body_radius_mm()
        # points well outside the body: occupancy 0, distance bounded below by dist - rmax
        occ = np.zeros(p.shape[0], dtype=np.float32)
        sd = (dist - rmax).astype(np.float32)
        rnorm = (dist / max(rmax, 1e-6)).astype(np.float32)
        near = np.nonzero(dist <= rmax + ramp)[0]
        if near.size:
            semi = (self.semi_axes_mm * self.scale).astype(np.float32)
            pn = p[near]
            local = (pn @ self.axes.T.astype(np.float32)) / semi
            rho = np.sqrt((local * local).sum(axis=1))
            safe = np.maximum(rho, 1e-6)
            r = self._radius_along(local / safe[:, None])
            scale_mm = np.where(rho > 1e-6, dist[near] / safe, float(semi.min()))
            sd[near] = (rho - r) * scale_mm
            rnorm[near] = rho / r
            occ[near] = np.clip(0.5 - sd[near] / ramp, 0.0, 1.0)
        if spicules and self.spicule_dirs.shape[0]:
            start, end, width = self.spicule_segments()
            reach = float(np.linalg.norm(end - self.center_lps, axis=1).max()) + 2.0 * voxel_mm
            todo = np.nonzero((occ < 1.0) & (dist <= reach))[0]
            if todo.size:
                occ[todo] = np.maximum(occ[todo], _segment_occupancy(
                    p[todo], (start - self.center_lps).astype(np.float32),
                    (end - self.center_lps).astype(np.float32), width, voxel_mm))
        return occ, rnorm, sd

    def spicule_segments(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Spicules as tapered segments: ``start``, ``end`` ``(S, 3)`` LPS and root width
        ``(S,)`` mm (the width falls linearly to 15 % at the tip)."""
        dirs = self.spicule_dirs.astype(np.float32)
        semi = (self.semi_axes_mm * self.scale).astype(np.float32)
        loc = (dirs @ self.axes.T.astype(np.float32)) / semi
        norm = np.linalg.norm(loc, axis=1)
        boundary = self._radius_along(loc / norm[:, None]) / norm
        start = self.center_lps + dirs * (0.6 * boundary)[:, None]
        end = self.center_lps + dirs * (boundary + self.scale * self.spicule_len_mm)[:, None]
        return start, end, (self.spicule_width_mm * np.sqrt(self.scale)).astype(np.float32)


def _segment_occupancy(q: np.ndarray, start: np.ndarray, end: np.ndarray, width: np.ndarray,
                       voxel_mm: float) -> np.ndarray:
    """Partial-volume occupancy ``(n,)`` of tapered segments at points ``q`` ``(n, d)``
    (2D or 3D; ``start``/``end`` ``(S, d)``, root ``width`` ``(S,)``)."""
    seg = (end - start).astype(np.float32)
    seg_len2 = np.maximum((seg * seg).sum(axis=1), 1e-6)
    sdot = (start * seg).sum(axis=1)
    s2 = (start * start).sum(axis=1)
    out = np.zeros(q.shape[0], dtype=np.float32)
    chunk = 32768
    for a in range(0, q.shape[0], chunk):                     # chunks of points, not pixels
        qc = q[a:a + chunk]
        qs = qc @ seg.T
        t = np.clip((qs - sdot) / seg_len2, 0.0, 1.0)         # (n, S)
        # |q - start - t seg|^2 expanded to avoid an (n, S, d) array
        d2 = ((qc * qc).sum(axis=1)[:, None] - 2 * (qc @ start.T) - 2 * t * qs + s2
              + 2 * t * sdot + t * t * seg_len2)
        w = width * (1.0 - 0.85 * t)
        sig = np.maximum(w, 0.5 * voxel_mm)
        amp = np.minimum(1.0, 2.0 * w / voxel_mm)
        out[a:a + chunk] = (amp * np.exp(-np.maximum(d2, 0.0) / (2.0 * sig * sig))).max(axis=1)
    return out


def _fibonacci_sphere(n: int) -> np.ndarray:
    k = np.arange(n) + 0.5
    z = 1.0 - 2.0 * k / n
    phi = np.pi * (1.0 + 5 ** 0.5) * k
    r = np.sqrt(1.0 - z * z)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1).astype(np.float32)


_FIBONACCI_SPHERE = _fibonacci_sphere(2000)


def _unit_vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def make_lesion_shape(rng: np.random.Generator, phenotype: Phenotype, center_lps) -> LesionShape:
    """Build the 3D shape of a lesion with ``phenotype`` centred at ``center_lps``.

    Shape sets the in-plane elongation and lobulation, margin the boundary blur, extra
    micro-lobulation or spicules, and ``aspect`` the antero-posterior (ultrasound "height")
    semi-axis relative to the largest horizontal one.
    """
    ph = phenotype
    elong = {"oval": rng.uniform(0.6, 0.85), "round": rng.uniform(0.9, 1.0),
             "irregular": rng.uniform(0.7, 1.0)}[ph.shape]
    a1 = 1.0
    a2 = elong
    ay = ph.aspect * np.sqrt(a1 * a2)
    semi = np.array([a1, a2, ay])
    semi = semi / semi.max() * (ph.diameter_mm / 2.0)
    phi = rng.uniform(0.0, np.pi)
    axes = np.array([[np.cos(phi), 0.0, np.sin(phi)], [-np.sin(phi), 0.0, np.cos(phi)], [0.0, 1.0, 0.0]])
    # lobulation bumps: (count, amplitude range, kappa range) per shape and margin
    spec = [{"oval": (4, -0.05, 0.05, 2, 4), "round": (4, -0.03, 0.03, 2, 4),
             "irregular": (16, -0.3, 0.4, 8, 25)}[ph.shape]]
    if ph.margin == "microlobulated":
        spec.append((14, 0.03, 0.07, 25, 50))
    if ph.margin == "angular":
        spec.append((5, 0.12, 0.25, 15, 30))
    if ph.shape == "oval" and ph.margin == "circumscribed" and rng.uniform() < 0.5:
        spec.append((3, 0.08, 0.15, 4, 8))     # gently lobulated (fibroadenoma-like)
    n = sum(sp[0] for sp in spec)
    amp = np.concatenate([rng.uniform(sp[1], sp[2], sp[0]) for sp in spec])
    kappa = np.concatenate([rng.uniform(sp[3], sp[4], sp[0]) for sp in spec])
    blur = {"circumscribed": 0.2, "microlobulated": 0.3, "angular": 0.5, "spiculated": 0.8,
            "indistinct": float(rng.uniform(1.5, 3.0))}[ph.margin]
    if ph.margin == "spiculated":
        s = int(rng.integers(12, 31))
        sdir = _unit_vectors(rng, s)
        sdir[: s // 3, 2] = 0.0                 # a third in the axial plane through the centre,
        sdir[s // 3: s // 2, 0] = 0.0           # a sixth in the sagittal one (seen by ultrasound)
        sdir /= np.linalg.norm(sdir, axis=1, keepdims=True)
        slen = rng.uniform(0.3, 0.9, s) * ph.diameter_mm / 2.0
        swid = rng.uniform(0.4, 0.8, s)
    else:
        sdir, slen, swid = np.zeros((0, 3)), np.zeros(0), np.zeros(0)
    return LesionShape(
        center_lps=np.asarray(center_lps, dtype=float), semi_axes_mm=semi, axes=axes,
        lobe_dirs=_unit_vectors(rng, n), lobe_amp=amp, lobe_kappa=kappa, margin_blur_mm=blur,
        spicule_dirs=sdir, spicule_len_mm=slen, spicule_width_mm=swid)
