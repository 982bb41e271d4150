"""The diagnosis report (``report.json``, schema ``binds.report`` version 1) and ``results.csv``.

The report is deterministic for a given input and model (same bytes twice on CPU): wall-clock
timings are written separately to ``timings.json``.
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass, field

REPORT_SCHEMA = "binds.report"
REPORT_SCHEMA_VERSION = 1

RESULT_COLUMNS = (
    "study_id", "patient_id", "study_date", "stage", "modalities", "malignancy_probability",
    "finding_probability", "stage1_probability", "stage2_probability", "threshold", "recommendation", "subtype",
    "subtype_probability", "user_lesion_masks", "model", "model_version",
)
#: the columns a batch's ``results.csv`` adds: the input each study was read from (as
#: ``failures.csv`` names it) and its output folder under ``--out``
BATCH_COLUMNS = ("source", "output")


def told_apart(value: float, reference: float, fewest: int, most: int, scale: float = 1.0) -> tuple[str, str]:
    """``value`` and ``reference`` (times ``scale``) written with as many decimals, from
    ``fewest`` to ``most``, as it takes to tell them apart: a probability beside its threshold
    (``0.4321`` and ``0.4324``, not ``0.432`` twice), a risk beside the NCCN line."""
    digits = fewest
    while digits < most and f"{scale * value:.{digits}f}" == f"{scale * reference:.{digits}f}" and value != reference:
        digits += 1
    return f"{scale * value:.{digits}f}", f"{scale * reference:.{digits}f}"


@dataclass
class StageResult:
    """The outcome of one stage."""

    stage: int
    modalities: list[str]
    malignancy_probability: float
    subtype_probabilities: dict[str, float] = field(default_factory=dict)
    contributions: dict[str, float] = field(default_factory=dict)
    #: probability that the study shows a finding at all (abnormal vs normal); None: not given
    finding_probability: float | None = None


@dataclass
class ImageOutput:
    label: str
    role: str
    modality: str
    segmentation: str | None
    saliency: str | None
    lesion_source: str  # "predicted", "user", or "user_shared" (an MR sequence taking the outline given for another)
    #: the lesion's (salient region's) volume for MR; for a mammogram or an ultrasound image (a
    #: cine's maps lie on one frame) its area in mm^2 (the volume of a 1 mm slab)
    lesion_volume_mm3: float
    salient_volume_mm3: float
    lesion_probability_max: float


@dataclass
class DiagnosisReport:
    study_id: str
    patient_id: str | None
    study_date: str | None
    synthetic: bool
    stage: int
    stages: list[StageResult]
    malignancy_probability: float
    subtype_probabilities: dict[str, float]
    contributions: dict[str, float]
    threshold: float
    uncertainty_band: tuple[float, float]
    recommendation: str
    recommendation_detail: str
    user_lesion_masks: list[str]
    images: list[ImageOutput]
    model: dict
    inputs: list[dict]
    notes: list[str] = field(default_factory=list)

    @property
    def subtype(self) -> str | None:
        if not self.subtype_probabilities:
            return None
        return max(self.subtype_probabilities, key=self.subtype_probabilities.get)

    def to_json(self) -> dict:
        d = asdict(self)
        d["uncertainty_band"] = list(self.uncertainty_band)
        d["subtype"] = self.subtype
        d["finding_probability"] = self.finding_probability
        return {"schema": REPORT_SCHEMA, "schema_version": REPORT_SCHEMA_VERSION,
                "intended_use": "Research use only; not for clinical use.", **d}

    @property
    def finding_probability(self) -> float | None:
        """The final stage's finding probability (abnormal vs normal), None when not given."""
        return self.stages[-1].finding_probability if self.stages else None

    def result_row(self) -> dict:
        by_stage = {s.stage: s.malignancy_probability for s in self.stages}
        final = self.stages[-1]
        finding = self.finding_probability
        return {
            "study_id": self.study_id, "patient_id": self.patient_id or "",
            "study_date": self.study_date or "", "stage": self.stage,
            "modalities": "+".join(final.modalities),
            "malignancy_probability": f"{self.malignancy_probability:.6f}",
            "finding_probability": "" if finding is None else f"{finding:.6f}",
            "stage1_probability": "" if 1 not in by_stage else f"{by_stage[1]:.6f}",
            "stage2_probability": "" if 2 not in by_stage else f"{by_stage[2]:.6f}",
            "threshold": f"{self.threshold:.6f}", "recommendation": self.recommendation,
            "subtype": self.subtype or "",
            "subtype_probability": "" if not self.subtype else f"{self.subtype_probabilities[self.subtype]:.6f}",
            "user_lesion_masks": "+".join(self.user_lesion_masks),
            "model": self.model.get("name", ""), "model_version": self.model.get("version", ""),
        }


def results_csv(rows: list[dict], batch: bool = False) -> str:
    """``results.csv`` of ``rows`` (:meth:`DiagnosisReport.result_row`); ``batch`` adds
    :data:`BATCH_COLUMNS`."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=RESULT_COLUMNS + (BATCH_COLUMNS if batch else ()),
                       lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    return buf.getvalue()


def report_table_rows(report: dict) -> list[tuple[str, str]]:
    """(quantity, value) rows of a report for a two-column table (Slicer table node, PNG)."""
    rows = [("Stage", str(report["stage"])),
            ("Malignancy probability", f"{report['malignancy_probability']:.3f}")]
    if report.get("finding_probability") is not None:
        rows.append(("Finding probability (abnormal vs normal)", f"{report['finding_probability']:.3f}"))
    for s in report["stages"]:
        rows.append((f"Stage {s['stage']} probability ({'+'.join(s['modalities'])})",
                     f"{s['malignancy_probability']:.3f}"))
    rows.append(("Threshold (operating point)", f"{report['threshold']:.3f}"))
    rows.append(("Recommendation", report["recommendation"]))
    for name, p in report.get("subtype_probabilities", {}).items():
        rows.append((f"Subtype {name.replace('_', ' ')}", f"{p:.3f}"))
    for mod, c in report.get("contributions", {}).items():
        rows.append((f"Contribution {mod}", f"{c:.3f}"))
    if report.get("user_lesion_masks"):
        rows.append(("User-edited lesions", ", ".join(report["user_lesion_masks"])))
    return rows
