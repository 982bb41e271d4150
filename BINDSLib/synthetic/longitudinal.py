"""Synthetic screening histories: annual 4-view mammograms and a cancer outcome.

Risk model (per woman, see docs/SYNTHETIC.md):

* log annual hazard ``log h = log(BASELINE_ANNUAL_HAZARD) + 0.45 (density index - 1.5)
  + 0.25 (age - 55) / 10 + 0.9 hidden`` with density index 0-3 for BI-RADS a-d and a
  hidden factor ``hidden ~ N(0, 1)`` that no image shows directly;
* time to cancer ``T ~ Exponential(h)`` years from the first exam; screening is annual
  (+-3 weeks) for the planned number of exams, then follow-up continues 0.25-3 years, so
  women with few exams are censored early;
* a cancer is screen-detected (70 %, when it arises less than a year before an exam: that
  exam is its diagnosis date and shows it) or an interval cancer (diagnosed between
  exams); no exams follow the diagnosis.

Image changes before a cancer: the tumour grows (volume doubling time 0.3-0.9 years, drawn
at 2.5 mm or more, so usually visible 1-3 exams early) inside a focal density that
builds up over the 4 years before diagnosis; glandular density drifts by
``-0.008 + 0.01 hidden`` per year (high-risk women keep dense breasts). About 11 % of the
synthetic women are diagnosed within 5 years of their first exam (enriched about 10-fold
over screening populations so that a model can learn; the tests check 8-15 %).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
from dataclasses import dataclass

import numpy as np

from ..study import Diagnosis, ExamHistory, Study, pseudonym
from .anatomy import density_category, sample_anatomy, sample_lesion_center
from .cases import size_preset
from .fields import child_rngs, derive_seed
from .lesion import Calcifications, make_calcifications, make_lesion_shape, sample_pathology, sample_phenotype
from .mammography import FocalDensity, MammoLesion, mammo_textures, render_mammograms

__all__ = ["BASELINE_ANNUAL_HAZARD", "MAX_EXAMS", "WomanRisk", "sample_woman", "make_history",
           "make_cohort"]

log = logging.getLogger(__name__)

#: Annual hazard of a woman aged 55 with density between b and c and hidden factor 0.
BASELINE_ANNUAL_HAZARD = 0.019
MAX_EXAMS = 7
_EXAM_WEIGHTS = np.array([1.0, 1.0, 1.2, 1.4, 1.6, 1.8, 2.0])
_SCREEN_DETECTED = 0.7
_FOCAL_YEARS = 4.0
_MIN_VISIBLE_MM = 2.5


def _years(d0: _dt.date, years: float) -> _dt.date:
    return d0 + _dt.timedelta(days=int(round(years * 365.25)))


@dataclass(frozen=True)
class WomanRisk:
    """A synthetic woman's latent risk and outcome (no images).

    Attributes
    ----------
    seed : int
    age_years : float
        Age at the first exam.
    density : str
        BI-RADS density at the first exam.
    glandular_fraction : float
        At the first exam.
    density_change_per_year : float
        Change of the glandular fraction per year.
    hidden_factor : float
        The latent risk factor (standard normal) not shown by the images.
    log_hazard : float
        Natural log of the annual cancer hazard.
    exam_dates : tuple of datetime.date
        Annual screening exams actually done (none after a diagnosis).
    cancer_date : datetime.date or None
    followup_end : datetime.date
        Cancer date, or the last date known cancer-free.
    detection : {'screen', 'interval'} or None
    laterality : str
        Breast of the (future) cancer.
    cancer_subtype, cancer_histology : str or None
        Of the cancer, when there is one.
    """

    seed: int
    age_years: float
    density: str
    glandular_fraction: float
    density_change_per_year: float
    hidden_factor: float
    log_hazard: float
    exam_dates: tuple[_dt.date, ...]
    cancer_date: _dt.date | None
    followup_end: _dt.date
    detection: str | None
    laterality: str
    cancer_subtype: str | None = None
    cancer_histology: str | None = None

    @property
    def annual_hazard(self) -> float:
        return float(np.exp(self.log_hazard))

    @property
    def five_year_risk(self) -> float:
        """Model risk of cancer within 5 years of the first exam, ``1 - exp(-5 h)``."""
        return float(1.0 - np.exp(-5.0 * self.annual_hazard))

    def cancer_within(self, years: float) -> bool:
        """Whether the cancer was diagnosed within ``years`` of the first exam."""
        return self.cancer_date is not None and \
            (self.cancer_date - self.exam_dates[0]).days / 365.25 <= years

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["exam_dates"] = [x.isoformat() for x in self.exam_dates]
        for k in ("cancer_date", "followup_end"):
            d[k] = None if d[k] is None else d[k].isoformat()
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in d.items()}


def _streams(seed: int) -> dict[str, np.random.Generator]:
    return child_rngs(seed, ("risk", "anatomy", "tumour", "mg", "meta"))


def sample_woman(seed: int, *, n_exams: int | None = None) -> WomanRisk:
    """Draw a woman's risk, exam schedule and outcome (cheap: no images).

    ``n_exams`` (1-7) is the planned number of annual exams; drawn (more often many) when
    omitted. ``make_history(seed)`` renders exactly this woman.
    """
    if n_exams is not None and not 1 <= int(n_exams) <= MAX_EXAMS:
        raise ValueError(f"n_exams must be between 1 and {MAX_EXAMS}, not {n_exams!r}")
    r = _streams(seed)
    rng = r["risk"]
    anatomy = sample_anatomy(r["anatomy"])
    tumour = sample_pathology(r["tumour"], "malignant")   # the same draw as make_history's
    hidden = float(rng.standard_normal())
    d_idx = "abcd".index(anatomy.density)
    log_h = (np.log(BASELINE_ANNUAL_HAZARD) + 0.45 * (d_idx - 1.5)
             + 0.25 * (anatomy.age_years - 55.0) / 10.0 + 0.9 * hidden)
    planned = int(rng.choice(MAX_EXAMS, p=_EXAM_WEIGHTS / _EXAM_WEIGHTS.sum())) + 1
    n = planned if n_exams is None else int(n_exams)
    times = np.arange(n, dtype=float) + np.concatenate([[0.0], rng.uniform(-0.06, 0.06, n - 1)])
    censor = times[-1] + rng.uniform(0.25, 3.0)
    t_cancer = float(rng.exponential(1.0 / np.exp(log_h)))
    screen_u = rng.uniform()
    laterality = "L" if rng.uniform() < 0.5 else "R"
    first = _dt.date(2008, 1, 1) + _dt.timedelta(days=int(r["meta"].integers(0, 5 * 365)))
    detection = None
    t_dx = None
    if t_cancer < censor:
        later = times[times >= t_cancer]
        if later.size and later[0] - t_cancer < 1.0 and screen_u < _SCREEN_DETECTED:
            detection, t_dx = "screen", float(later[0])
        else:
            detection, t_dx = "interval", t_cancer
        times = times[times <= t_dx] if detection == "screen" else times[times < t_dx]
        if times.size == 0:           # cannot happen: the first exam is at 0 <= t_cancer
            times = np.array([0.0])
    exam_dates = tuple(_years(first, t) for t in times)
    cancer_date = None if t_dx is None else _years(first, t_dx)
    if cancer_date is not None and detection == "screen":
        cancer_date = exam_dates[-1]
    if cancer_date is not None and detection == "interval" and cancer_date <= exam_dates[-1]:
        cancer_date = exam_dates[-1] + _dt.timedelta(days=1)
    return WomanRisk(
        seed=int(seed), age_years=anatomy.age_years, density=anatomy.density,
        glandular_fraction=anatomy.glandular_fraction,
        density_change_per_year=float(-0.008 + 0.01 * hidden), hidden_factor=hidden,
        log_hazard=float(log_h), exam_dates=exam_dates, cancer_date=cancer_date,
        followup_end=cancer_date if cancer_date is not None else _years(first, censor),
        detection=detection, laterality=laterality,
        cancer_subtype=None if cancer_date is None else tumour.subtype.value,
        cancer_histology=None if cancer_date is None else tumour.histology)


def make_history(seed: int, *, n_exams: int | None = None, size: str = "demo",
                 woman_id: str | None = None) -> ExamHistory:
    """A woman's annual screening mammograms (4 views each) and her outcome.

    Parameters
    ----------
    seed : int
    n_exams : int, optional
        Planned annual exams, 1-7 (fewer are done when a cancer is diagnosed earlier).
    size : {'demo', 'full'}
        Mammogram size preset (see :data:`BINDSLib.synthetic.SIZES`).
    woman_id : str, optional
        Defaults to ``synthetic-woman-<seed>``.

    Returns
    -------
    ExamHistory
        Exams ordered by date, ``cancer_date`` and ``followup_end`` set. Each exam is a
        ``synthetic`` :class:`~BINDSLib.study.Study` whose images carry lesion masks (the
        growing tumour where it is drawn, empty otherwise); the exam on a screen-detected
        cancer's date has ``diagnosis='malignant'`` and its pathology, the others no label.
    """
    preset = size_preset(size)
    woman = sample_woman(seed, n_exams=n_exams)
    woman_id = woman_id or f"synthetic-woman-{seed}"
    r = _streams(seed)
    anatomy = sample_anatomy(r["anatomy"])
    textures = mammo_textures(r["mg"], anatomy, preset.mg_shape, preset.mg_spacing_mm)
    # the tumour (drawn for every woman so that the streams do not depend on the outcome)
    tr = r["tumour"]
    pathology = sample_pathology(tr, "malignant")
    phenotype = sample_phenotype(tr, pathology)
    breast = anatomy.breast(woman.laterality)
    center = sample_lesion_center(tr, breast, phenotype.diameter_mm / 2.0)
    shape = make_lesion_shape(tr, phenotype, center)
    calcs = make_calcifications(tr, phenotype.calcifications, center, phenotype.diameter_mm / 2.0,
                                breast.nipple_lps)
    vdt_years = float(tr.uniform(0.3, 0.9))
    dx_scale = float(tr.uniform(0.6, 0.85)) if woman.detection == "screen" else 1.0
    focal_sigma = float(tr.uniform(9.0, 15.0))
    first = woman.exam_dates[0]
    t_dx = None if woman.cancer_date is None else (woman.cancer_date - first).days / 365.25
    exams = []
    for k, date in enumerate(woman.exam_dates):
        t = (date - first).days / 365.25
        anat_k = dataclasses.replace(
            anatomy.with_glandular_fraction(anatomy.glandular_fraction + woman.density_change_per_year * t),
            age_years=round(anatomy.age_years + t, 1))
        lesion = focal = None
        if t_dx is not None:
            before = t_dx - t
            scale = dx_scale * 2.0 ** (-before / (3.0 * vdt_years))
            if scale * phenotype.diameter_mm >= _MIN_VISIBLE_MM:
                shown = calcs if scale >= 0.6 * dx_scale else Calcifications("none")
                if shown.positions_lps.shape[0]:
                    shown = Calcifications(shown.kind, center + (shown.positions_lps - center) * scale,
                                           shown.diameters_mm)
                lesion = MammoLesion(woman.laterality, shape.scaled(scale), phenotype.mg_contrast, shown,
                                     "malignant", visibility=float(0.5 + 0.5 * min(1.0, scale / dx_scale)))
            amp = 0.35 * float(np.clip(1.0 - before / _FOCAL_YEARS, 0.0, 1.0))
            if amp > 0:
                focal = FocalDensity(woman.laterality, tuple(center), focal_sigma, amp)
        noise = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF, 7, k]))
        images = render_mammograms(anat_k, preset.mg_shape, preset.mg_spacing_mm, textures, noise,
                                   lesion=lesion, focal=focal, date=date,
                                   description=f"synthetic screening mammogram, exam {k + 1}")
        at_dx = woman.detection == "screen" and date == woman.cancer_date
        exams.append(Study(
            study_id=f"{woman_id}-e{k + 1}", images=images, patient_id=pseudonym(woman_id),
            study_date=date, diagnosis=Diagnosis.MALIGNANT if at_dx else None,
            pathology=pathology if at_dx else None, synthetic=True,
            description=(f"Synthetic screening exam {k + 1} of {len(woman.exam_dates)} (BINDS phantom, "
                         f"not a patient); density {density_category(anat_k.glandular_fraction)}; "
                         f"age {anat_k.age_years:g}" + ("; screen-detected cancer" if at_dx else ""))))
    log.debug("synthetic woman %s: %d exams, cancer %s", seed, len(exams), woman.cancer_date)
    return ExamHistory(woman_id, exams, woman.cancer_date, woman.followup_end)


def make_cohort(seed: int, n_women: int, *, n_exams: int | None = None,
                size: str = "demo") -> list[ExamHistory]:
    """``n_women`` histories; woman ``i`` is ``make_history(derive_seed(seed, i),
    woman_id=f"woman-{i:04d}")``."""
    if int(n_women) < 0:
        raise ValueError(f"n_women must be >= 0, not {n_women!r}")
    return [make_history(derive_seed(seed, i), n_exams=n_exams, size=size, woman_id=f"woman-{i:04d}")
            for i in range(int(n_women))]
