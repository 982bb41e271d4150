"""DICOM in and out: read a folder of DICOM files as :class:`~BINDSLib.study.Study` objects, and
write any study as real DICOM.

pydicom reads headers and decodes pixels (``pydicom.pixels`` for the modality LUT, VOI LUT,
colour conversion); SimpleITK reads classic MR series. Nothing here parses tags by hand.
docs/DICOM.md describes the grouping, the classification into roles and every fallback.

Public API
----------
index_dicom_folder(path) -> DicomIndex / index_dicom_files(files) -> DicomIndex
    Headers only: studies, series, skipped files.
load_dicom_folder(path) / load_dicom_files(files) -> (list[Study], list[Skipped])
    Pixels too; anything unusable is in the skipped list with the reason.
write_study_dicom(study, out_dir, overwrite=False, *, keep_identifiers=False) -> Path
    Real DICOM (MG For Presentation, US, MR one file per slice), deterministic UIDs.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from typing import Sequence

from ..errors import InputError
from ..study import Image, Modality, Study
from .dicom_common import Skipped, damaged, image_order, text
from .dicom_index import (
    DicomFile, DicomIndex, DicomSeries, IndexedStudy, index_dicom_files, index_dicom_folder,
)
from .dicom_mg import read_mg_series
from .dicom_mr import read_mr_series
from .dicom_us import read_us_series
from .dicom_write import SYNTHETIC_MARK, write_study_dicom

__all__ = [
    "Skipped", "DicomFile", "DicomSeries", "IndexedStudy", "DicomIndex", "index_dicom_folder",
    "index_dicom_files", "load_dicom_folder", "load_dicom_files", "load_index", "load_indexed_study",
    "write_study_dicom",
]

log = logging.getLogger(__name__)

_READERS = {Modality.MG: read_mg_series, Modality.US: read_us_series, Modality.MR: read_mr_series}


def _is_synthetic(indexed: IndexedStudy) -> bool:
    """Written by BINDS from a synthetic study: SeriesDescription and ImageComments start with
    the ``SYNTHETIC`` mark."""
    return any(text(s.header, "SeriesDescription").upper().startswith(SYNTHETIC_MARK)
               and text(s.header, "ImageComments").upper().startswith(SYNTHETIC_MARK)
               for s in indexed.series)


def load_indexed_study(indexed: IndexedStudy) -> tuple[Study | None, list[Skipped]]:
    """Read the pixels of one indexed study.

    Returns
    -------
    study : Study or None
        ``None`` when none of its images could be read.
    skipped : list of Skipped
    """
    images: list[Image] = []
    skipped: list[Skipped] = []
    for modality, reader in _READERS.items():
        series = [s for s in indexed.series if s.modality is modality]
        if series:
            try:
                got, lost = reader(series)
            except InputError:
                raise
            except Exception as e:  # noqa: BLE001 - a damaged file must not stop the other modalities
                log.debug("reader failed", exc_info=True)
                got, lost = [], [Skipped(str(f.path), damaged(e)) for s in series for f in s.files]
            images.extend(got)
            skipped.extend(lost)
    if not images:
        return None, skipped
    images.sort(key=image_order)
    first = indexed.series[0].header
    study = Study(study_id=indexed.study_key, images=images, patient_id=indexed.patient_id,
                  study_date=indexed.study_date, synthetic=_is_synthetic(indexed),
                  description=text(first, "StudyDescription") or None)
    log.info("study %s: %s", study.study_id, ", ".join(im.label for im in study.images))
    return study, skipped


def load_dicom_folder(path: str | os.PathLike) -> tuple[list[Study], list[Skipped]]:
    """Read every DICOM study under ``path``.

    Parameters
    ----------
    path : str or PathLike
        A folder (searched recursively, any file names) or one DICOM file.

    Returns
    -------
    studies : list of Study
        Images are float32 ``(depth, rows, cols)``: MG ``(1, rows, cols)`` display values, US
        grayscale frames, MR volumes in modality values with LPS geometry.
    skipped : list of Skipped
        Every file or series not used, with the reason.

    Raises
    ------
    InputError
        If ``path`` does not exist or holds no readable DICOM image (the message summarises
        why the files were skipped).
    """
    return load_index(index_dicom_folder(path))


def load_dicom_files(files: Sequence[str | os.PathLike]) -> tuple[list[Study], list[Skipped]]:
    """Like :func:`load_dicom_folder` for an explicit list of DICOM files."""
    return load_index(index_dicom_files(files))


def load_index(index: DicomIndex) -> tuple[list[Study], list[Skipped]]:
    """Read the pixels of every study of ``index`` (see :func:`load_dicom_folder`)."""
    studies: list[Study] = []
    skipped = list(index.skipped)
    for indexed in index.studies:
        study, lost = load_indexed_study(indexed)
        skipped.extend(lost)
        if study is not None:
            studies.append(study)
    if not studies:
        raise InputError(_nothing_found(index, skipped), index.root)
    return studies, skipped


def _nothing_found(index: DicomIndex, skipped: list[Skipped]) -> str:
    if not skipped:
        return "no DICOM images found" + (" (the folder has no files)" if index.files_seen == 0 else "")
    reasons = Counter(s.reason for s in skipped)
    top = "; ".join(f"{n} x {r}" if n > 1 else r for r, n in reasons.most_common(3))
    more = f"; and {len(reasons) - 3} other reason(s)" if len(reasons) > 3 else ""
    return f"no DICOM images found ({len(skipped)} file(s) skipped: {top}{more})"
