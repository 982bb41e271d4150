"""The study model: images with geometry and clinical role, studies, a woman's exam history.

Conventions
-----------
* Voxels are a numpy array shaped ``(depth, rows, cols)`` (SimpleITK's array order). A 2D
  image (mammogram, ultrasound frame) has ``depth == 1``; an ultrasound cine keeps its frames
  along ``depth`` (``role.frame`` names the representative frame when known).
* Geometry is ITK/DICOM's: ``spacing_mm`` and ``origin_mm`` in (x, y, z) = (column, row,
  slice) order, ``direction`` a row-major 3x3 matrix whose *columns* are the directions of the
  column, row and slice axes in patient LPS coordinates. This is exactly what
  ``SimpleITK.Image`` carries and what Slicer converts to RAS on load.
* Names say what a thing is in the clinic (``view``, ``laterality``, ``phase``) and units are
  in names (``spacing_mm``, ``phase_time_s``).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import hashlib
import re
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from .errors import InputError

__all__ = [
    "Modality", "MRSequence", "Diagnosis", "Subtype", "MG_VIEWS", "Role", "Geometry", "Image",
    "Finding", "Pathology", "Study", "ExamHistory", "pseudonym", "parse_date",
]


class Modality(str, enum.Enum):
    """Imaging modality (DICOM Modality codes)."""

    MG = "MG"
    US = "US"
    MR = "MR"


class MRSequence(str, enum.Enum):
    """MRI sequence kinds used by the diagnosis model."""

    T1_PRE = "T1_PRE"   #: T1-weighted pre-contrast (DCE phase 0)
    DCE = "DCE"         #: T1-weighted post-contrast phase k >= 1
    T2 = "T2"
    DWI = "DWI"         #: diffusion-weighted, with its b-value
    ADC = "ADC"         #: apparent diffusion coefficient map


class Diagnosis(str, enum.Enum):
    """The worst finding of a study, as a label."""

    NORMAL = "normal"
    BENIGN = "benign"
    MALIGNANT = "malignant"


class Subtype(str, enum.Enum):
    """Molecular subtype (St Gallen surrogate definitions)."""

    LUMINAL_A = "luminal_a"
    LUMINAL_B = "luminal_b"
    HER2_ENRICHED = "her2_enriched"
    TRIPLE_NEGATIVE = "triple_negative"


#: Mammography view codes (ACR BI-RADS / DICOM ViewPosition defined terms).
MG_VIEWS = ("CC", "MLO", "ML", "LM", "LMO", "XCCL", "XCCM", "FB", "SIO", "AT", "CV")
LATERALITIES = ("L", "R")


def _opt_float(v):
    return None if v is None else float(v)


def _opt_int(v):
    return None if v is None else int(v)


@dataclass(frozen=True)
class Role:
    """What an image is for the diagnosis: modality plus its modality-specific role.

    MG: ``view`` and ``laterality``. US: ``laterality``, ``clock_position`` (hours, 1-12) and
    ``frame`` when known. MR: ``sequence``; DCE ``phase`` (0 = pre-contrast, k >= 1 = k-th
    post-contrast) with ``phase_time_s`` after injection; DWI ``b_value`` (s/mm^2).
    """

    modality: Modality
    laterality: str | None = None
    view: str | None = None
    clock_position: float | None = None
    frame: int | None = None
    sequence: MRSequence | None = None
    phase: int | None = None
    phase_time_s: float | None = None
    b_value: float | None = None

    def __post_init__(self):
        object.__setattr__(self, "modality", Modality(self.modality))
        if self.sequence is not None:
            object.__setattr__(self, "sequence", MRSequence(self.sequence))
        if self.laterality is not None and self.laterality not in LATERALITIES:
            raise ValueError(f"laterality must be one of {LATERALITIES}, not {self.laterality!r}")
        if self.view is not None and self.view not in MG_VIEWS:
            raise ValueError(f"view must be one of {MG_VIEWS}, not {self.view!r}")
        if self.clock_position is not None and not 1 <= self.clock_position < 13:
            raise ValueError(f"clock position {self.clock_position:g}h is not on the clock face (1h to 12h)")
        if self.modality is Modality.MR:
            if self.sequence is None:
                raise ValueError("an MR role needs a sequence (T1_PRE, DCE, T2, DWI, ADC)")
            if self.sequence is MRSequence.T1_PRE and self.phase not in (None, 0):
                raise ValueError("T1_PRE is DCE phase 0")
            if self.sequence is MRSequence.T1_PRE:
                object.__setattr__(self, "phase", 0)
            if self.sequence is MRSequence.DCE and (self.phase is None or self.phase < 1):
                raise ValueError("a DCE post-contrast role needs phase >= 1")
        elif self.sequence is not None or self.phase is not None or self.b_value is not None:
            raise ValueError(f"sequence/phase/b_value only apply to MR, not {self.modality.value}")
        if self.modality is not Modality.MG and self.view is not None:
            raise ValueError("view only applies to MG")

    # -- string form, used for file names and on the command line -------------------------
    @property
    def key(self) -> str:
        """Compact, file-name-safe name: ``MG_L_CC``, ``US_R``, ``MR_DCE2``, ``MR_DWI_b800``."""
        m = self.modality
        if m is Modality.MG:
            return "_".join(p for p in ("MG", self.laterality, self.view) if p)
        if m is Modality.US:
            parts = ["US"] + ([self.laterality] if self.laterality else [])
            if self.clock_position is not None:
                parts.append(f"{self.clock_position:g}h")
            return "_".join(parts)
        s = self.sequence
        if s is MRSequence.DCE:
            return f"MR_DCE{self.phase}"
        if s is MRSequence.DWI and self.b_value is not None:
            return f"MR_DWI_b{self.b_value:g}"
        return f"MR_{s.value}"

    _KEY_RE = re.compile(
        r"^(?:(?P<mg>MG)(?:_(?P<mg_lat>[LR]))?(?:_(?P<view>[A-Z]+))?"
        r"|(?P<us>US)(?:_(?P<us_lat>[LR]))?(?:_(?P<clock>\d+(?:\.\d+)?)h)?"
        r"|MR_(?:(?P<t1>T1_PRE)|DCE(?P<phase>\d+)|(?P<t2>T2)|(?P<adc>ADC)|(?P<dwi>DWI)(?:_b(?P<b>\d+(?:\.\d+)?))?))$",
        re.IGNORECASE,
    )

    @classmethod
    def parse(cls, key: str) -> "Role":
        """Inverse of :attr:`key` (case-insensitive); raises ``ValueError`` on an unknown key."""
        if not isinstance(key, str):
            raise ValueError(f"a role is text such as MG_L_CC, not {type(key).__name__}")
        m = cls._KEY_RE.match(key.strip())
        if not m:
            raise ValueError(
                f"unknown role {key!r}; examples: MG_L_CC, MG_R_MLO, US_L, US_R_10h, MR_T1_PRE, "
                "MR_DCE1, MR_T2, MR_DWI_b800, MR_ADC")
        g = m.groupdict()
        upper = lambda v: None if v is None else v.upper()  # noqa: E731
        if g["mg"]:
            return cls(Modality.MG, laterality=upper(g["mg_lat"]), view=upper(g["view"]))
        if g["us"]:
            return cls(Modality.US, laterality=upper(g["us_lat"]), clock_position=_opt_float(g["clock"]))
        if g["t1"]:
            return cls(Modality.MR, sequence=MRSequence.T1_PRE)
        if g["phase"]:
            return cls(Modality.MR, sequence=MRSequence.DCE, phase=int(g["phase"]))
        if g["t2"]:
            return cls(Modality.MR, sequence=MRSequence.T2)
        if g["adc"]:
            return cls(Modality.MR, sequence=MRSequence.ADC)
        return cls(Modality.MR, sequence=MRSequence.DWI, b_value=_opt_float(g["b"]))

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["modality"] = self.modality.value
        d["sequence"] = None if self.sequence is None else self.sequence.value
        return {k: v for k, v in d.items() if v is not None}

    @classmethod
    def from_json(cls, d: dict) -> "Role":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown role fields {sorted(unknown)}")
        d = dict(d)
        for k in ("clock_position", "phase_time_s", "b_value"):
            d[k] = _opt_float(d.get(k))
        for k in ("frame", "phase"):
            d[k] = _opt_int(d.get(k))
        return cls(**d)


@dataclass(frozen=True)
class Geometry:
    """Physical placement of a voxel grid (ITK/DICOM LPS conventions, see module docstring)."""

    spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    def __post_init__(self):
        sp = tuple(float(s) for s in self.spacing_mm)
        org = tuple(float(o) for o in self.origin_mm)
        dr = tuple(float(x) for x in np.asarray(self.direction, dtype=float).ravel())
        if len(sp) != 3 or len(org) != 3 or len(dr) != 9:
            raise ValueError("geometry needs 3 spacings, 3 origin coordinates and a 3x3 direction")
        if not all(np.isfinite(sp)) or min(sp) <= 0:
            raise ValueError(f"spacing must be finite and positive, got {sp}")
        if not all(np.isfinite(org)) or not all(np.isfinite(dr)):
            raise ValueError("origin and direction must be finite")
        d = np.array(dr).reshape(3, 3)
        if not np.allclose(d.T @ d, np.eye(3), atol=1e-4):
            raise ValueError(f"direction must be orthonormal, got {dr}")
        object.__setattr__(self, "spacing_mm", sp)
        object.__setattr__(self, "origin_mm", org)
        object.__setattr__(self, "direction", dr)

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.array(self.direction).reshape(3, 3)

    def index_to_lps(self, ijk) -> np.ndarray:
        """Physical LPS position (mm) of continuous index ``(i, j, k)`` = (col, row, slice)."""
        ijk = np.asarray(ijk, dtype=float)
        return np.asarray(self.origin_mm) + self.direction_matrix @ (ijk * np.asarray(self.spacing_mm))

    def ijk_to_lps_matrix(self) -> np.ndarray:
        """4x4 homogeneous matrix from index (i, j, k) to LPS millimetres."""
        m = np.eye(4)
        m[:3, :3] = self.direction_matrix * np.asarray(self.spacing_mm)[None, :]
        m[:3, 3] = self.origin_mm
        return m

    def with_spacing(self, spacing_mm) -> "Geometry":
        return dataclasses.replace(self, spacing_mm=tuple(spacing_mm))

    def to_json(self) -> dict:
        return {"spacing_mm": list(self.spacing_mm), "origin_mm": list(self.origin_mm),
                "direction": list(self.direction)}

    @classmethod
    def from_json(cls, d: dict) -> "Geometry":
        return cls(tuple(d["spacing_mm"]), tuple(d["origin_mm"]), tuple(d["direction"]))

    @classmethod
    def from_sitk(cls, img) -> "Geometry":
        """Geometry of a ``SimpleITK.Image`` (2D images get a unit third axis)."""
        sp, org, dr = img.GetSpacing(), img.GetOrigin(), img.GetDirection()
        if img.GetDimension() == 2:
            sp = (sp[0], sp[1], 1.0)
            org = (org[0], org[1], 0.0)
            dr = (dr[0], dr[1], 0.0, dr[2], dr[3], 0.0, 0.0, 0.0, 1.0)
        elif img.GetDimension() != 3:
            raise ValueError(f"only 2D and 3D images are supported, not {img.GetDimension()}D")
        return cls(tuple(sp), tuple(org), tuple(dr))

    def apply_to_sitk(self, img) -> None:
        img.SetSpacing(self.spacing_mm)
        img.SetOrigin(self.origin_mm)
        img.SetDirection(self.direction)


@dataclass(frozen=True)
class Finding:
    """A radiologist's finding marked as a circle (mini-MIAS style), in pixels of the image.

    ``center_col``/``center_row`` are 0-based pixel coordinates with the origin at the top
    left of the stored array; ``radius_px`` may be ``None`` when the finding has no extent
    (e.g. calcifications spread over the whole breast).
    """

    abnormality: str
    severity: str | None = None
    center_col: float | None = None
    center_row: float | None = None
    radius_px: float | None = None

    def __post_init__(self):
        import math
        import numbers

        for name in ("center_col", "center_row", "radius_px"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v)):
                raise ValueError(f"finding {name} must be a number of pixels or null, not {v!r}")
        if self.radius_px is not None and not self.radius_px > 0:
            raise ValueError(f"finding radius_px must be a positive number of pixels, not {self.radius_px!r}")

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "Finding":
        return cls(**d)


@dataclass(frozen=True)
class SourceInfo:
    """Where an image came from (for provenance; identifiers are pseudonymised on export)."""

    files: tuple[str, ...] = ()
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    sop_instance_uids: tuple[str, ...] = ()
    manufacturer: str | None = None
    description: str | None = None
    #: a mammogram's EstimatedRadiographicMagnificationFactor (recorded, not applied)
    magnification: float | None = None
    #: how a mammogram stored otherwise than in the standard orientation was re-indexed from
    #: its PatientOrientation (``"transposed, mirrored"``), for the masks drawn on its stored pixels
    reoriented: str | None = None

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["files"] = list(self.files)
        d["sop_instance_uids"] = list(self.sop_instance_uids)
        return {k: v for k, v in d.items() if v not in (None, [], ())}

    @classmethod
    def from_json(cls, d: dict) -> "SourceInfo":
        """From ``study.json``'s ``source``; keys of a later BINDS are left out. ``ValueError`` on
        a ``magnification`` that is not a number from 1 to 5."""
        known = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        for key in ("files", "sop_instance_uids"):
            value = d.get(key, ())
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"source.{key} must be a list of texts, got {value!r}")
            d[key] = tuple(value)
        if not isinstance(d.get("reoriented") or "", str):
            raise ValueError(f"source.reoriented must be text, got {d['reoriented']!r}")
        m = d.get("magnification")
        if m is not None and (isinstance(m, bool) or not isinstance(m, (int, float)) or not 1.0 <= m <= 5.0):
            raise ValueError(f"source.magnification must be a number from 1 to 5, got {m!r}")
        return cls(**d)


@dataclass(eq=False)
class Image:
    """Voxels with geometry and role. ``voxels`` is ``(depth, rows, cols)``."""

    voxels: np.ndarray
    geometry: Geometry
    role: Role
    acquisition_date: _dt.date | None = None
    source: SourceInfo = field(default_factory=SourceInfo)
    lesion_mask: np.ndarray | None = None
    findings: tuple[Finding, ...] = ()
    name: str | None = None

    def __post_init__(self):
        v = np.asarray(self.voxels)
        if v.ndim == 2:
            v = v[None]
        if v.ndim != 3:
            raise ValueError(f"voxels must be (depth, rows, cols), got shape {v.shape}")
        if v.size == 0:
            raise ValueError("image has no voxels")
        self.voxels = v
        if self.lesion_mask is not None:
            m = np.asarray(self.lesion_mask)
            if m.ndim == 2:
                m = m[None]
            if m.shape != v.shape:
                raise ValueError(f"lesion mask shape {m.shape} differs from image shape {v.shape}")
            self.lesion_mask = (m > 0).astype(np.uint8)
        self.findings = tuple(self.findings)

    @property
    def modality(self) -> Modality:
        return self.role.modality

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.voxels.shape)

    @property
    def is_2d(self) -> bool:
        return self.voxels.shape[0] == 1

    @property
    def label(self) -> str:
        """A unique, file-name-safe name within its study (defaults to the role key)."""
        return self.name or self.role.key

    def to_sitk(self, voxels: np.ndarray | None = None):
        """A ``SimpleITK.Image`` of ``voxels`` (default: this image's) with this geometry."""
        import SimpleITK as sitk

        arr = self.voxels if voxels is None else voxels
        img = sitk.GetImageFromArray(np.ascontiguousarray(arr))
        self.geometry.apply_to_sitk(img)
        return img

    @classmethod
    def from_sitk(cls, img, role: Role, **kwargs) -> "Image":
        import SimpleITK as sitk

        if img.GetNumberOfComponentsPerPixel() != 1:
            raise ValueError("colour images must be converted to grayscale first")
        geom = Geometry.from_sitk(img)
        arr = sitk.GetArrayFromImage(img)
        return cls(arr, geom, role, **kwargs)


@dataclass(frozen=True)
class Pathology:
    """A pathology record. Receptor status: ``er``/``pr`` in percent of stained nuclei,
    ``her2`` as the IHC score 0-3 (2 with ``her2_ish`` amplification counts as positive),
    ``ki67`` in percent. ``wsi_features`` names an optional ``.npy`` of whole-slide features
    (relative to the study folder)."""

    malignant: bool
    histology: str | None = None
    grade: int | None = None
    er_percent: float | None = None
    pr_percent: float | None = None
    her2_score: int | None = None
    her2_ish_amplified: bool | None = None
    ki67_percent: float | None = None
    wsi_features: str | None = None

    def __post_init__(self):
        if not isinstance(self.malignant, bool):
            raise ValueError(f"pathology 'malignant' must be true or false, not {self.malignant!r}")
        for name in ("er_percent", "pr_percent", "ki67_percent"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 100):
                raise ValueError(f"pathology {name!r} must be a percentage 0-100, not {v!r}")
        for name, lo, hi in (("grade", 1, 3), ("her2_score", 0, 3)):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi):
                raise ValueError(f"pathology {name!r} must be an integer {lo}-{hi}, not {v!r}")
        for name in ("histology", "wsi_features"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, str):
                raise ValueError(f"pathology {name!r} must be text, not {v!r}")
        if self.her2_ish_amplified is not None and not isinstance(self.her2_ish_amplified, bool):
            raise ValueError("pathology 'her2_ish_amplified' must be true, false or null")

    @property
    def her2_positive(self) -> bool | None:
        if self.her2_score is None:
            return None
        if self.her2_score >= 3:
            return True
        if self.her2_score == 2 and self.her2_ish_amplified is not None:
            return bool(self.her2_ish_amplified)
        return False if self.her2_score <= 1 else None

    @property
    def subtype(self) -> Subtype | None:
        """St Gallen 2013 surrogate subtype; ``None`` for benign or incomplete records."""
        if not self.malignant or self.er_percent is None or self.pr_percent is None:
            return None
        her2 = self.her2_positive
        if her2 is None:
            return None
        hr = self.er_percent >= 1 or self.pr_percent >= 1
        if not hr:
            return Subtype.HER2_ENRICHED if her2 else Subtype.TRIPLE_NEGATIVE
        if her2:
            return Subtype.LUMINAL_B
        if self.ki67_percent is None:
            return None
        if self.ki67_percent < 20 and self.pr_percent >= 20:
            return Subtype.LUMINAL_A
        return Subtype.LUMINAL_B

    def to_json(self) -> dict:
        d = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        st = self.subtype
        if st is not None:
            d["subtype"] = st.value
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Pathology":
        d = {k: v for k, v in d.items() if k != "subtype"}
        return cls(**d)


@dataclass(eq=False)
class Study:
    """The images of one examination of one woman, with labels when known."""

    study_id: str
    images: list[Image] = field(default_factory=list)
    patient_id: str | None = None
    study_date: _dt.date | None = None
    diagnosis: Diagnosis | None = None
    pathology: Pathology | None = None
    synthetic: bool = False
    description: str | None = None
    #: Free-form dataset attributes kept with the study (e.g. BUSI ``dup_group``), str -> str.
    attributes: dict[str, str] = field(default_factory=dict)
    #: Images of the same woman given only for comparison (e.g. the other breast's film when
    #: a dataset makes one study per breast): the diagnosis compares an image's finding score
    #: with the other breast's (``DiagnosisConfig.bilateral_weight``) but never fuses,
    #: outlines or reports them. Labels are unique among them, apart from ``images``.
    comparison: list[Image] = field(default_factory=list)

    def __post_init__(self):
        if self.diagnosis is not None:
            self.diagnosis = Diagnosis(self.diagnosis)
        for name in ("images", "comparison"):
            labels = [im.label for im in getattr(self, name)]
            if len(set(labels)) != len(labels):
                setattr(self, name, _unique_names(getattr(self, name)))

    def add(self, image: Image) -> None:
        self.images.append(image)
        self.images = _unique_names(self.images)

    def modalities(self) -> list[Modality]:
        return sorted({im.modality for im in self.images}, key=lambda m: list(Modality).index(m))

    def of(self, modality: Modality | str) -> list[Image]:
        modality = Modality(modality)
        return [im for im in self.images if im.modality is modality]

    def image(self, label: str) -> Image:
        for im in self.images:
            if im.label == label:
                return im
        raise KeyError(f"no image {label!r} in study {self.study_id} "
                       f"(has {[im.label for im in self.images]})")


def _unique_names(images: Sequence[Image]) -> list[Image]:
    """Give images sharing a role key distinct names (``US_L``, ``US_L_2``, ...)."""
    seen: dict[str, int] = {}
    for im in images:
        base = im.label
        n = seen.get(base, 0) + 1
        seen[base] = n
        if n > 1:
            im.name = f"{base}_{n}"
    return list(images)


@dataclass(eq=False)
class ExamHistory:
    """A woman's screening exams by date, with the outcome when known.

    ``cancer_date`` is the date breast cancer was diagnosed (``None``: none during follow-up);
    ``followup_end`` is the last date she is known to be cancer-free or the cancer date.
    """

    woman_id: str
    exams: list[Study] = field(default_factory=list)
    cancer_date: _dt.date | None = None
    followup_end: _dt.date | None = None

    def __post_init__(self):
        for s in self.exams:
            if s.study_date is None:
                raise ValueError(f"exam {s.study_id} of {self.woman_id} has no date")
        self.exams = sorted(self.exams, key=lambda s: s.study_date)

    def years_observed(self, exam: Study) -> float | None:
        """Years of follow-up after ``exam`` (until cancer or last follow-up)."""
        end = self.cancer_date or self.followup_end
        if end is None:
            return None
        return (end - exam.study_date).days / 365.25

    def years_to_cancer(self, exam: Study) -> float | None:
        if self.cancer_date is None:
            return None
        return (self.cancer_date - exam.study_date).days / 365.25


def parse_date(value) -> _dt.date | None:
    """Parse ``YYYY-MM-DD`` or DICOM ``YYYYMMDD``; ``None``/empty gives ``None``."""
    if value in (None, ""):
        return None
    if isinstance(value, _dt.datetime):
        return value.date()
    if isinstance(value, _dt.date):
        return value
    s = str(value).strip()
    # a date, optionally with what a date-time carries after it (a time of day, a zone, a
    # spreadsheet's ".0"); letters or other text after the date are refused
    for pattern, fmt in ((_ISO_DATE_TIME, "%Y-%m-%d"), (_DICOM_DATE_TIME, "%Y%m%d")):
        match = pattern.fullmatch(s)
        if match:
            try:
                return _dt.datetime.strptime(match[1], fmt).date()
            except ValueError:
                break
    raise ValueError(f"not a date: {value!r} (use YYYY-MM-DD)")


_ISO_DATE_TIME = re.compile(r"(\d{4}-\d{1,2}-\d{1,2})(?:[T ][0-9:.]*(?:Z|[+-][0-9:]+)?)?")
_DICOM_DATE_TIME = re.compile(r"(\d{8})[0-9.]*(?:[+-]\d{4})?")


def pseudonym(identifier: str, salt: str = "binds") -> str:
    """A stable pseudonymous ID (``anon-`` + 12 hex digits of a salted SHA-256)."""
    h = hashlib.sha256(f"{salt}\0{identifier}".encode("utf-8")).hexdigest()
    return f"anon-{h[:12]}"


def public_id(identifier: str, keep_identifiers: bool = False) -> str:
    """``identifier`` as outputs and messages show it: its :func:`pseudonym`, unless
    ``keep_identifiers`` or it is a pseudonym already."""
    return identifier if keep_identifiers or identifier.startswith("anon-") else pseudonym(identifier)


def modalities_present(images: Iterable[Image]) -> set[Modality]:
    return {im.modality for im in images}


def require(condition: bool, message: str, path=None) -> None:
    """Raise :class:`InputError` with ``message`` (naming ``path``) unless ``condition``."""
    if not condition:
        raise InputError(message, path)
