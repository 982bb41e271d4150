"""Synthetic multimodal teaching cases: :func:`make_study` and :func:`make_case`.

A case is a pure function of its seed (and the keyword arguments): the seed is split with
``numpy.random.SeedSequence`` into independent streams (label, anatomy, lesion, MG, US, MR,
metadata), so the same seed gives byte-identical voxels, and asking for fewer modalities
leaves the remaining images unchanged.
"""

from __future__ import annotations

import datetime as _dt
import logging
from dataclasses import dataclass
from typing import Sequence

from ..study import Diagnosis, Modality, Pathology, Study, Subtype, pseudonym
from .anatomy import Anatomy, clock_position, sample_anatomy, sample_lesion_center
from .fields import child_rngs
from .lesion import (
    Phenotype, make_calcifications, make_lesion_shape, sample_pathology, sample_phenotype,
)
from .mammography import MammoLesion, mammo_textures, render_mammograms
from .mri import MRLesion, mr_lesion, render_mri
from .ultrasound import UltrasoundLesion, render_ultrasound

__all__ = ["SizePreset", "SIZES", "size_preset", "DIAGNOSIS_PROBABILITIES", "CaseTruth",
           "SyntheticCase", "make_case", "make_study"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SizePreset:
    """Image sizes of a synthetic study. Fields of view are the same for every preset.

    ``mg_shape``/``us_shape`` are ``(rows, cols)``; ``mr_shape`` is ``(slices, rows, cols)``
    and ``mr_spacing_mm`` is ``(x, y, z)``.
    """

    name: str
    mg_shape: tuple[int, int]
    mg_spacing_mm: float
    us_shape: tuple[int, int]
    us_spacing_mm: float
    mr_shape: tuple[int, int, int]
    mr_spacing_mm: tuple[float, float, float]


#: ``demo``: small images that train quickly on a CPU (a study in well under a second);
#: ``full``: clinical-like resolution (MG 0.1 mm, US 0.09 mm, MR 1 x 1 x 2 mm).
SIZES = {
    "demo": SizePreset("demo", (256, 192), 0.75, (128, 160), 0.35, (40, 64, 128), (2.5, 2.5, 4.0)),
    "full": SizePreset("full", (1920, 1440), 0.1, (512, 640), 0.0875, (80, 160, 320), (1.0, 1.0, 2.0)),
}

#: Label mix when ``make_study`` is not told the diagnosis.
DIAGNOSIS_PROBABILITIES = {"normal": 0.2, "benign": 0.4, "malignant": 0.4}
_MODALITY_ORDER = ("MG", "US", "MR")


def size_preset(size: str | SizePreset) -> SizePreset:
    """The :class:`SizePreset` named ``size`` (``'demo'`` or ``'full'``)."""
    if isinstance(size, SizePreset):
        return size
    try:
        return SIZES[str(size)]
    except KeyError:
        raise ValueError(f"size must be one of {sorted(SIZES)}, not {size!r}") from None


@dataclass(frozen=True)
class CaseTruth:
    """What was simulated, for teaching and for checking models (JSON via :meth:`to_json`).

    Attributes
    ----------
    seed : int
    diagnosis : str
    age_years : float
    density : str
        BI-RADS density a-d.
    glandular_fraction : float
    laterality : str
        Breast holding the lesion (for a normal case: the breast scanned by ultrasound).
    clock_position : int
    lesion_center_lps : tuple of float
        For a normal case: the ultrasound location.
    lesion_diameter_mm : float or None
    phenotype : Phenotype or None
    kinetics_late_to_early : float or None
        Ratio of the last to the first post-contrast lesion enhancement.
    """

    seed: int
    diagnosis: str
    age_years: float
    density: str
    glandular_fraction: float
    laterality: str
    clock_position: int
    lesion_center_lps: tuple[float, float, float]
    lesion_diameter_mm: float | None = None
    phenotype: Phenotype | None = None
    kinetics_late_to_early: float | None = None
    pathology: Pathology | None = None

    @property
    def subtype(self) -> str | None:
        st = None if self.pathology is None else self.pathology.subtype
        return None if st is None else st.value

    def to_json(self) -> dict:
        return {
            "seed": self.seed, "diagnosis": self.diagnosis, "age_years": self.age_years,
            "density": self.density, "glandular_fraction": round(self.glandular_fraction, 3),
            "laterality": self.laterality, "clock_position": self.clock_position,
            "lesion_center_lps": [round(v, 2) for v in self.lesion_center_lps],
            "lesion_diameter_mm": None if self.lesion_diameter_mm is None
            else round(self.lesion_diameter_mm, 1),
            "phenotype": None if self.phenotype is None else self.phenotype.to_json(),
            "kinetics_late_to_early": None if self.kinetics_late_to_early is None
            else round(self.kinetics_late_to_early, 3),
            "pathology": None if self.pathology is None else self.pathology.to_json(),
            "subtype": self.subtype,
        }


@dataclass(eq=False)
class SyntheticCase:
    """A generated study and the truth behind it."""

    study: Study
    truth: CaseTruth


def _check_modalities(modalities: Sequence[str]) -> list[str]:
    if isinstance(modalities, str):
        modalities = [modalities]
    mods = []
    for m in modalities:
        try:
            mods.append(Modality(str(getattr(m, "value", m)).upper()).value)
        except ValueError:
            raise ValueError(f"modalities must be among MG, US, MR; got {m!r}") from None
    if not mods:
        raise ValueError("ask for at least one modality (MG, US, MR)")
    return [m for m in _MODALITY_ORDER if m in mods]


def _check_times(times) -> tuple[float, ...]:
    t = tuple(float(v) for v in times)
    if not t or min(t) <= 0 or any(b <= a for a, b in zip(t, t[1:])):
        raise ValueError(f"dce_times_s must be increasing positive seconds, got {times!r}")
    return t


def _describe(truth: CaseTruth, mods: list[str]) -> str:
    head = "Synthetic teaching case (BINDS phantom, not a patient data set)"
    side = {"L": "left", "R": "right"}[truth.laterality]
    parts = [f"{head}; {'+'.join(mods)}; breast density {truth.density}; age {truth.age_years:g}"]
    if truth.phenotype is None:
        parts.append("normal: no lesion")
        return "; ".join(parts) + "."
    ph, p = truth.phenotype, truth.pathology
    what = p.histology + (f" grade {p.grade}" if p.grade else "")
    if truth.subtype:
        what += f", {truth.subtype.replace('_', ' ')}"
    parts.append(f"{truth.diagnosis}: {what}")
    parts.append(f"{side} breast {truth.clock_position} o'clock, {truth.lesion_diameter_mm:.0f} mm")
    orient = "parallel" if ph.aspect < 1 else "not parallel"
    parts.append(f"{ph.shape}, {ph.margin}, {orient}, {ph.echo}, posterior {ph.posterior}"
                 + (", echogenic halo" if ph.halo else ""))
    parts.append(f"MR {ph.kinetics} kinetics, {ph.pattern} enhancement, T2 {ph.t2}, "
                 f"ADC {ph.adc_1e3:.2f}e-3 mm2/s; calcifications {ph.calcifications.replace('_', ' ')}")
    if ph.atypical_groups:
        parts.append("atypical features: " + ", ".join(ph.atypical_groups))
    return "; ".join(parts) + "."


def make_case(seed: int, *, diagnosis: str | Diagnosis | None = None,
              subtype: str | Subtype | None = None,
              modalities: Sequence[str] = ("MG", "US", "MR"), size: str | SizePreset = "demo",
              dce_times_s: Sequence[float] = (90.0, 180.0, 360.0), dwi_b_value: float = 800.0,
              us_planes: int = 1, study_date: _dt.date | None = None,
              study_id: str | None = None) -> SyntheticCase:
    """A synthetic multimodal breast study and its ground truth.

    Parameters
    ----------
    seed : int
        Everything is a function of the seed and the other arguments.
    diagnosis : {'normal', 'benign', 'malignant'}, optional
        Drawn (20/40/40 %) when omitted.
    subtype : Subtype or str, optional
        Force a molecular subtype (implies malignant).
    modalities : sequence of {'MG', 'US', 'MR'}
    size : {'demo', 'full'} or SizePreset
    dce_times_s : sequence of float
        Post-contrast phase times after injection (``MR_DCE1``...).
    dwi_b_value : float
    us_planes : {1, 2}
        Transverse, or transverse and sagittal ultrasound planes.
    study_date : datetime.date, optional
        Drawn between 2018 and 2023 when omitted.
    study_id : str, optional
        Defaults to ``synthetic-<seed>``.

    Returns
    -------
    SyntheticCase
        ``study`` (``synthetic=True``, every image with a lesion mask) and ``truth``.
    """
    mods = _check_modalities(modalities)
    preset = size_preset(size)
    times = _check_times(dce_times_s)
    if us_planes not in (1, 2):
        raise ValueError(f"us_planes must be 1 or 2, not {us_planes!r}")
    if diagnosis is not None:
        try:
            diagnosis = Diagnosis(getattr(diagnosis, "value", diagnosis)).value
        except ValueError:
            raise ValueError(f"diagnosis must be normal, benign or malignant, not {diagnosis!r}") from None
    if subtype is not None:
        try:
            subtype = Subtype(getattr(subtype, "value", subtype))
        except ValueError:
            raise ValueError(f"subtype must be one of {[s.value for s in Subtype]}, "
                             f"not {subtype!r}") from None
        if diagnosis not in (None, "malignant"):
            raise ValueError(f"a {subtype.value} subtype needs a malignant case, not {diagnosis}")
        diagnosis = "malignant"
    r = child_rngs(seed, ("label", "anatomy", "lesion", "mg", "us", "mr", "meta"))
    keys = list(DIAGNOSIS_PROBABILITIES)
    drawn = keys[int(r["label"].choice(len(keys), p=list(DIAGNOSIS_PROBABILITIES.values())))]
    diag = diagnosis or drawn
    pathology = sample_pathology(r["label"], diag, subtype)
    anatomy: Anatomy = sample_anatomy(r["anatomy"])
    lat = "L" if r["lesion"].uniform() < 0.5 else "R"
    breast = anatomy.breast(lat)
    phenotype = shape = calcs = mr_les = None
    if diag == "normal":
        center = sample_lesion_center(r["lesion"], breast, 5.0)
    else:
        phenotype = sample_phenotype(r["lesion"], pathology)
        center = sample_lesion_center(r["lesion"], breast, phenotype.diameter_mm / 2.0)
        shape = make_lesion_shape(r["lesion"], phenotype, center)
        calcs = make_calcifications(r["lesion"], phenotype.calcifications, center,
                                    phenotype.diameter_mm / 2.0, breast.nipple_lps)
        mr_les: MRLesion = mr_lesion(r["lesion"], shape, phenotype,
                                     slow_kinetics=pathology.subtype is Subtype.LUMINAL_A)
    clock = clock_position(breast, center)
    if study_date is None:
        study_date = _dt.date(2018, 1, 1) + _dt.timedelta(days=int(r["meta"].integers(0, 6 * 365)))
    truth = CaseTruth(
        seed=int(seed), diagnosis=diag, age_years=anatomy.age_years, density=anatomy.density,
        glandular_fraction=anatomy.glandular_fraction, laterality=lat, clock_position=clock,
        lesion_center_lps=tuple(float(v) for v in center),
        lesion_diameter_mm=None if phenotype is None else phenotype.diameter_mm, phenotype=phenotype,
        kinetics_late_to_early=None if mr_les is None else mr_les.late_to_early, pathology=pathology)
    images = []
    if "MG" in mods:
        tex = mammo_textures(r["mg"], anatomy, preset.mg_shape, preset.mg_spacing_mm)
        mg_les = None if shape is None else MammoLesion(
            lat, shape, phenotype.mg_contrast, calcs, "malignant" if diag == "malignant" else "benign")
        images += render_mammograms(anatomy, preset.mg_shape, preset.mg_spacing_mm, tex, r["mg"],
                                    lesion=mg_les, date=study_date)
    if "US" in mods:
        us_les = None if shape is None else UltrasoundLesion(shape, phenotype, calcs)
        for plane in range(us_planes):
            images.append(render_ultrasound(r["us"], anatomy, lat, clock, center, preset.us_shape,
                                            preset.us_spacing_mm, us_les, plane=plane, date=study_date))
    if "MR" in mods:
        images += render_mri(r["mr"], anatomy, preset.mr_shape, preset.mr_spacing_mm, mr_les,
                             dce_times_s=times, b_value=dwi_b_value, date=study_date)
    study = Study(
        study_id=study_id or f"synthetic-{seed}", images=images,
        patient_id=pseudonym(f"binds-synthetic-{seed}"), study_date=study_date,
        diagnosis=Diagnosis(diag), pathology=pathology, synthetic=True,
        description=_describe(truth, mods))
    log.debug("synthetic case %s: %s", seed, study.description)
    return SyntheticCase(study, truth)


def make_study(seed: int, *, diagnosis: str | Diagnosis | None = None,
               subtype: str | Subtype | None = None,
               modalities: Sequence[str] = ("MG", "US", "MR"), size: str | SizePreset = "demo",
               dce_times_s: Sequence[float] = (90.0, 180.0, 360.0), dwi_b_value: float = 800.0,
               us_planes: int = 1, study_date: _dt.date | None = None,
               study_id: str | None = None) -> Study:
    """A synthetic multimodal breast study (see :func:`make_case`; this returns its study).

    The study holds, per requested modality: ``MG_L_CC``, ``MG_L_MLO``, ``MG_R_CC``,
    ``MG_R_MLO`` (``uint16``); ``US_<lat>_<clock>h`` (``uint8``); ``MR_T1_PRE``,
    ``MR_DCE1``..``MR_DCEk``, ``MR_T2``, ``MR_DWI_b800``, ``MR_ADC`` (``uint16``, ADC in
    1e-6 mm^2/s). Every image carries ``lesion_mask`` (empty for a normal case and for the
    other breast's mammograms).
    """
    return make_case(seed, diagnosis=diagnosis, subtype=subtype, modalities=modalities, size=size,
                     dce_times_s=dce_times_s, dwi_b_value=dwi_b_value, us_planes=us_planes,
                     study_date=study_date, study_id=study_id).study
