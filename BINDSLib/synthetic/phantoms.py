"""Write batches of synthetic cases to disk (the ``binds phantoms`` command calls this).

Layout::

    OUT/
      manifest.csv
      case-0000/ ...            study folders (write_study_folder), or
      woman-0000/ ...           exam-history folders (write_history) with --longitudinal
      case-0000-dicom/ ...      with dicom=True (BINDSLib.io.dicom.write_study_dicom)

Case ``i`` uses seed ``derive_seed(seed, i)``, so a batch is reproducible and case ``i`` is
the same whatever the batch size.
"""

from __future__ import annotations

import csv
import inspect
import io
import logging
import os
import shutil
from pathlib import Path
from typing import Sequence

from ..errors import OutputError
from ..fsutil import atomic_write_text
from ..studyfolder import write_history, write_study_folder
from .cases import make_case, size_preset
from .fields import derive_seed
from .longitudinal import make_history, sample_woman

__all__ = ["MANIFEST", "CASE_COLUMNS", "LONGITUDINAL_COLUMNS", "write_phantoms"]

log = logging.getLogger(__name__)

MANIFEST = "manifest.csv"
#: Columns of ``manifest.csv`` for multimodal cases (one row per case).
CASE_COLUMNS = ("study_folder", "seed", "diagnosis", "subtype", "histology", "laterality",
                "clock_position", "lesion_diameter_mm", "density", "age_years", "dicom_folder")
#: Columns for longitudinal histories (one row per exam).
LONGITUDINAL_COLUMNS = ("woman", "study_folder", "exam_date", "diagnosis", "years_to_cancer",
                        "years_observed", "cancer_date", "followup_end", "detection", "subtype",
                        "histology", "laterality", "log_hazard",
                        "five_year_risk", "density_at_first_exam", "age_at_first_exam", "seed",
                        "dicom_folder")


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _csv(columns: Sequence[str], rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _fmt(r.get(k)) for k in columns})
    return buf.getvalue()


def _dicom_writer():
    try:
        from ..io.dicom import write_study_dicom
    except ImportError as e:
        raise OutputError(f"DICOM output is not available in this BINDS ({e}); write study "
                          "folders instead (leave out --dicom)") from None
    return write_study_dicom


def _write_dicom(writer, study, path: Path, overwrite: bool) -> None:
    params = inspect.signature(writer).parameters
    if "overwrite" in params:
        writer(study, path, overwrite=overwrite)
        return
    if path.exists():
        shutil.rmtree(path)          # existence without overwrite was refused up front
    writer(study, path)


def write_phantoms(out_dir: str | os.PathLike, cases: int, seed: int = 0, longitudinal: bool = False,
                   size: str = "demo", overwrite: bool = False, dicom: bool = False, *,
                   modalities: Sequence[str] = ("MG", "US", "MR"), diagnosis: str | None = None,
                   n_exams: int | None = None) -> list[Path]:
    """Generate ``cases`` synthetic studies (or women) under ``out_dir`` with a manifest.

    Parameters
    ----------
    out_dir : path
        Created if missing.
    cases : int
        Number of studies, or of women with ``longitudinal=True``.
    seed : int
        Batch seed; item ``i`` uses ``derive_seed(seed, i)``.
    longitudinal : bool
        Write exam histories (``woman-0000/``, MG only) instead of multimodal studies.
    size : {'demo', 'full'}
    overwrite : bool
        Replace existing outputs; without it nothing is written when any exists.
    dicom : bool
        Also write each study as DICOM next to it (``case-0000-dicom/``; for a woman,
        ``woman-0000-dicom/<date>_<study_id>/`` per exam).
    modalities, diagnosis : optional
        Passed to :func:`~BINDSLib.synthetic.make_study` (multimodal cases only).
    n_exams : int, optional
        Planned exams per woman (longitudinal only).

    Returns
    -------
    list of Path
        The study (or woman) folders, in order; ``manifest.csv`` lies in ``out_dir``.

    Raises
    ------
    OutputError
        An output exists and ``overwrite`` is false, or DICOM output is unavailable.
    """
    cases = int(cases)
    if cases < 0:
        raise ValueError(f"cases must be >= 0, not {cases}")
    size_preset(size)                                  # fail early on a bad size
    out = Path(out_dir)
    prefix = "woman" if longitudinal else "case"
    names = [f"{prefix}-{i:04d}" for i in range(cases)]
    targets = [out / MANIFEST] + [out / n for n in names]
    if dicom:
        targets += [out / f"{n}-dicom" for n in names]
    if not overwrite:
        for t in targets:
            if t.exists():
                raise OutputError("already exists; use --overwrite to replace it", t)
    writer = _dicom_writer() if dicom else None
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    written: list[Path] = []
    for i, name in enumerate(names):
        item_seed = derive_seed(seed, i)
        folder = out / name
        dicom_folder = out / f"{name}-dicom" if dicom else None
        if longitudinal:
            history = make_history(item_seed, n_exams=n_exams, size=size, woman_id=name)
            woman = sample_woman(item_seed, n_exams=n_exams)
            write_history(history, folder, overwrite=overwrite)
            for ex in history.exams:
                sub = f"{ex.study_date.isoformat()}_{ex.study_id}"
                if writer is not None:
                    _write_dicom(writer, ex, dicom_folder / sub, overwrite)
                rows.append({
                    "woman": name, "study_folder": f"{name}/{sub}", "exam_date": ex.study_date.isoformat(),
                    "diagnosis": None if ex.diagnosis is None else ex.diagnosis.value,
                    "subtype": woman.cancer_subtype, "histology": woman.cancer_histology,
                    "years_to_cancer": history.years_to_cancer(ex),
                    "years_observed": history.years_observed(ex),
                    "cancer_date": None if history.cancer_date is None else history.cancer_date.isoformat(),
                    "followup_end": history.followup_end.isoformat(), "detection": woman.detection,
                    "laterality": woman.laterality, "log_hazard": woman.log_hazard,
                    "five_year_risk": woman.five_year_risk, "density_at_first_exam": woman.density,
                    "age_at_first_exam": woman.age_years, "seed": item_seed,
                    "dicom_folder": None if dicom_folder is None else f"{dicom_folder.name}/{sub}"})
            log.info("wrote %s (%d exams, cancer %s)", folder, len(history.exams), history.cancer_date)
        else:
            case = make_case(item_seed, size=size, modalities=modalities, diagnosis=diagnosis,
                             study_id=name)
            write_study_folder(case.study, folder, overwrite=overwrite)
            if writer is not None:
                _write_dicom(writer, case.study, dicom_folder, overwrite)
            t = case.truth
            rows.append({
                "study_folder": name, "seed": item_seed, "diagnosis": t.diagnosis, "subtype": t.subtype,
                "histology": None if t.pathology is None else t.pathology.histology,
                "laterality": t.laterality if t.phenotype is not None else None,
                "clock_position": t.clock_position if t.phenotype is not None else None,
                "lesion_diameter_mm": t.lesion_diameter_mm, "density": t.density,
                "age_years": t.age_years,
                "dicom_folder": None if dicom_folder is None else dicom_folder.name})
            log.info("wrote %s (%s)", folder, t.diagnosis)
        written.append(folder)
    atomic_write_text(out / MANIFEST, _csv(LONGITUDINAL_COLUMNS if longitudinal else CASE_COLUMNS, rows))
    return written
