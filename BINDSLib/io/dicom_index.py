"""Index a folder of DICOM files: headers only, grouped into studies and series.

The walk is recursive, follows folder symlinks but never visits a folder twice (loops are
cut by real path), accepts any file name, and records every file it does not use with the
reason (:class:`~BINDSLib.io.dicom_common.Skipped`). See docs/DICOM.md for the grouping rules.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from ..errors import InputError
from ..study import MG_VIEWS, Modality, pseudonym
from .dicom_common import (
    MEDIA_STORAGE_DIRECTORY_SOP, Skipped, dcmread_safe, dicom_date, number, numbers, require_pydicom3,
    sop_class_name, text,
)

log = logging.getLogger(__name__)

INDEX_SCHEMA = "binds.dicom_index"
INDEX_SCHEMA_VERSION = 1

#: CBIS-DDSM style PatientID: ``Mass-Test_P_00173_LEFT_CC`` (one image per "patient").
VIEW_SUFFIX_RE = re.compile(
    r"^(?P<base>.+?)[_\- ](?P<laterality>LEFT|RIGHT)[_\- ](?P<view>" + "|".join(MG_VIEWS) + r")$",
    re.IGNORECASE)

#: SOP classes whose series BINDS reads, by modality.
_MG_SOPS = {"1.2.840.10008.5.1.4.1.1.1.2", "1.2.840.10008.5.1.4.1.1.1.2.1"}
_US_SOPS = {"1.2.840.10008.5.1.4.1.1.6.1", "1.2.840.10008.5.1.4.1.1.3.1",
            "1.2.840.10008.5.1.4.1.1.6.2"}
_MR_SOPS = {"1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.4.1",
            "1.2.840.10008.5.1.4.1.1.4.4"}
#: Projection-radiography SOP classes (CR, DX, secondary capture) read as MG for the breast.
_PROJECTION_SOPS = {"1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1",
                    "1.2.840.10008.5.1.4.1.1.1.1.1", "1.2.840.10008.5.1.4.1.1.7",
                    "1.2.840.10008.5.1.4.1.1.7.1", "1.2.840.10008.5.1.4.1.1.7.2",
                    "1.2.840.10008.5.1.4.1.1.7.3", "1.2.840.10008.5.1.4.1.1.7.4"}


@dataclass(eq=False)
class DicomFile:
    """One DICOM image file: its path and header (read without pixels)."""

    path: Path
    header: object  # pydicom.Dataset without pixel data

    @property
    def sop_instance_uid(self) -> str:
        return text(self.header, "SOPInstanceUID")

    def sort_key(self) -> tuple:
        n = number(self.header, "InstanceNumber")
        return (n if n is not None else float("inf"), str(self.path))


@dataclass(eq=False)
class DicomSeries:
    """The files of one series, with the modality BINDS reads it as."""

    series_instance_uid: str
    modality: Modality
    files: list[DicomFile] = field(default_factory=list)

    @property
    def header(self):
        """Header of the first file (series-level attributes)."""
        return self.files[0].header

    @property
    def description(self) -> str:
        return text(self.header, "SeriesDescription")

    @property
    def series_number(self) -> float | None:
        return number(self.header, "SeriesNumber")

    def to_json(self) -> dict:
        return {"series_instance_uid": self.series_instance_uid, "modality": self.modality.value,
                "description": self.description, "files": len(self.files)}


@dataclass(eq=False)
class IndexedStudy:
    """The readable series of one examination.

    ``study_key`` is the StudyInstanceUID, or for CBIS-DDSM-style images (one study per image,
    view in PatientID) a UID derived from PatientID-without-suffix and StudyDate.
    """

    study_key: str
    patient_id: str | None
    study_date: object  # datetime.date | None
    series: list[DicomSeries] = field(default_factory=list)

    def to_json(self, keep_identifiers: bool = False) -> dict:
        pid = self.patient_id
        if pid and not keep_identifiers and not pid.startswith("anon-"):
            pid = pseudonym(pid)
        return {"study_key": self.study_key, "patient_id": pid,
                "study_date": None if self.study_date is None else self.study_date.isoformat(),
                "series": [s.to_json() for s in self.series]}


@dataclass(eq=False)
class DicomIndex:
    """Result of :func:`index_dicom_folder`: studies of readable series, plus skipped files.

    JSON form (``to_json``): schema ``binds.dicom_index`` version 1 with ``root``,
    ``files_seen``, ``studies`` (``study_key``, ``patient_id`` pseudonymised unless
    ``keep_identifiers``, ``study_date``, ``series``: ``series_instance_uid``, ``modality``,
    ``description``, ``files``) and ``skipped`` (``path``, ``reason``).
    """

    root: Path
    studies: list[IndexedStudy] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    files_seen: int = 0

    def to_json(self, keep_identifiers: bool = False) -> dict:
        return {"schema": INDEX_SCHEMA, "schema_version": INDEX_SCHEMA_VERSION,
                "root": str(self.root), "files_seen": self.files_seen,
                "studies": [s.to_json(keep_identifiers) for s in self.studies],
                "skipped": [s.to_json() for s in self.skipped]}


# -- walking ---------------------------------------------------------------------------------

def iter_files(root: Path, skipped: list[Skipped]):
    """Every regular file under ``root`` once (by real path); folder loops are cut."""
    seen_dirs: set[str] = set()
    seen_files: set[str] = set()

    def onerror(err: OSError) -> None:
        skipped.append(Skipped(str(err.filename), f"cannot list folder ({err.strerror or err})"))

    def real(path) -> str | None:  # None: cannot be resolved (a /proc link of another user)
        try:
            return os.path.realpath(path)
        except OSError as e:
            skipped.append(Skipped(str(path), f"cannot read ({e.strerror or e})"))
            return None

    for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=onerror):
        here = real(dirpath)
        if here is None or here in seen_dirs:
            dirnames[:] = []
            continue
        seen_dirs.add(here)
        below = {d: real(os.path.join(dirpath, d)) for d in dirnames}
        dirnames[:] = sorted(d for d, r in below.items() if r is not None and r not in seen_dirs)
        for name in sorted(filenames):
            p = Path(dirpath) / name
            rp = real(p)
            if rp is None or rp in seen_files:
                continue
            if not os.path.isfile(rp):
                if not os.path.exists(rp):
                    skipped.append(Skipped(str(p), "broken symbolic link"))
                continue
            seen_files.add(rp)
            yield p


def read_header(path: Path):
    """The header of ``path`` without pixels, or a :class:`Skipped` saying why not.

    Files without the DICOM preamble are tried once more with ``force=True`` and accepted only
    if they then carry a SOP Class UID (old ACR-NEMA-style files written without meta header).
    """
    from pydicom.errors import InvalidDicomError

    try:
        if path.stat().st_size == 0:
            return Skipped(str(path), "empty file (0 bytes)")
    except OSError as e:
        return Skipped(str(path), f"cannot read ({e.strerror or e})")
    try:
        return _fully_decoded(dcmread_safe(path, stop_before_pixels=True))
    except InvalidDicomError:
        pass
    except PermissionError:
        return Skipped(str(path), "cannot read: permission denied")
    except OSError as e:
        return Skipped(str(path), f"cannot read ({e.strerror or e})")
    except Exception as e:  # noqa: BLE001 - damaged headers raise many kinds
        return Skipped(str(path), f"damaged DICOM header ({type(e).__name__}: {_first_line(e)})")
    try:
        ds = dcmread_safe(path, stop_before_pixels=True, force=True)
        if "SOPClassUID" in ds and "StudyInstanceUID" in ds:
            return _fully_decoded(ds)
    except Exception:  # noqa: BLE001 - not DICOM after all
        pass
    return Skipped(str(path), "not DICOM")


def _first_line(e: Exception) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return (lines[0] if lines else "")[:160]


def _fully_decoded(ds):
    """Convert every element now (pydicom decodes lazily), so that a damaged value (an unknown
    VR, a bad length) is found here, once, instead of deep inside a later reader."""
    ds.walk(lambda dataset, elem: None)
    if getattr(ds, "file_meta", None) is not None:
        ds.file_meta.walk(lambda dataset, elem: None)
    return ds


def series_modality(ds) -> Modality | None:
    """The modality BINDS reads a series as, from Modality, SOP class and body part."""
    modality = text(ds, "Modality").upper()
    sop = text(ds, "SOPClassUID")
    if sop in _MG_SOPS or modality == "MG":
        return Modality.MG
    if sop in _US_SOPS or modality == "US":
        return Modality.US
    if sop in _MR_SOPS or modality == "MR":
        return Modality.MR
    breast = "BREAST" in text(ds, "BodyPartExamined").upper()
    if sop in _PROJECTION_SOPS and modality in ("CR", "DX", "OT", "") and breast:
        return Modality.MG
    return None


def is_image(ds) -> bool:
    """Whether a header (read without pixels) describes an image."""
    return "Rows" in ds and "Columns" in ds


def study_key_of(ds) -> tuple[str, str | None]:
    """Grouping key and patient ID of an image (see the CBIS-DDSM rule in docs/DICOM.md)."""
    pid = text(ds, "PatientID") or None
    if series_modality(ds) is Modality.MG and pid:
        m = VIEW_SUFFIX_RE.match(pid)
        if m:
            return f"patient-date:{m['base']}|{text(ds, 'StudyDate')}", m["base"]
    uid = text(ds, "StudyInstanceUID")
    return (uid or "no-study-uid"), pid


# -- indexing --------------------------------------------------------------------------------

def index_dicom_folder(path: str | os.PathLike) -> DicomIndex:
    """Read the headers of every DICOM file under ``path`` and group them.

    Parameters
    ----------
    path : str or PathLike
        A folder (searched recursively) or a single DICOM file.

    Returns
    -------
    DicomIndex
        Studies (by StudyInstanceUID, or by PatientID-without-view-suffix and StudyDate for
        CBIS-DDSM-style images), each with its series (by SeriesInstanceUID) of MG, US or MR
        images; every other file is in ``skipped`` with the reason.

    Raises
    ------
    InputError
        If ``path`` does not exist.
    """
    root = Path(path)
    if not root.exists():
        raise InputError("folder not found", root)
    index = DicomIndex(root=root)
    paths = [root] if root.is_file() else iter_files(root, index.skipped)
    _index_paths(index, paths)
    return index


def index_dicom_files(files: Sequence[str | os.PathLike]) -> DicomIndex:
    """Like :func:`index_dicom_folder` for an explicit list of files (missing ones skipped)."""
    files = [Path(f) for f in files]
    index = DicomIndex(root=Path(os.path.commonpath([str(f) for f in files])) if files else Path("."))
    present = []
    for f in files:
        if f.is_file():
            present.append(f)
        else:
            index.files_seen += 1
            index.skipped.append(Skipped(str(f), "file not found"))
    _index_paths(index, present)
    return index


def _index_paths(index: DicomIndex, paths: Iterable[Path]) -> None:
    require_pydicom3()  # once per index, before any file: one clear line, not a skip per file
    groups: dict[str, dict] = {}
    seen_sops: dict[str, Path] = {}
    for p in paths:
        index.files_seen += 1
        f = _accept(p, index.skipped, seen_sops)
        if f is None:
            continue
        key, pid = study_key_of(f.header)
        g = groups.setdefault(key, {"pid": pid, "series": {}})
        uid = text(f.header, "SeriesInstanceUID") or f"{NO_SERIES_UID}{p.parent}"
        g["series"].setdefault(uid, []).append(f)
    for g in groups.values():
        _join_files_without_series_uid(g["series"])
    index.studies = _build_studies(groups, index.skipped)
    log.info("indexed %s: %d file(s), %d stud(ies), %d skipped", index.root, index.files_seen,
             len(index.studies), len(index.skipped))


NO_SERIES_UID = "no-series-uid:"
#: what a file without SeriesInstanceUID must share with a series to join it
_SERIES_SIGNS = ("Modality", "SeriesNumber", "SeriesDescription", "Rows", "Columns")


#: what tells the volumes of one MR series apart (as ``dicom_mr.split_volumes`` does)
_VOLUME_SIGNS = ("TemporalPositionIdentifier", "TriggerTime", "DiffusionBValue", "AcquisitionTime", "EchoTime")


def _position(f) -> tuple | None:
    """Where a slice lies in its series: its position and what tells the series' volumes apart
    (a DCE phase repeats every position); None without a position."""
    pos = numbers(f.header, "ImagePositionPatient", 3)
    if pos is None:
        return None
    return (tuple(round(v / 0.01) for v in pos), *(text(f.header, a) for a in _VOLUME_SIGNS))


def _join_files_without_series_uid(series: dict[str, list]) -> None:
    """An MR slice without SeriesInstanceUID (an anonymiser's slip) joins the one series of its
    study whose files lie in the same folder, share its modality, series number, description
    and image size, and lack a slice at its place (its position in its phase, b-value...): it
    fills the gap it would otherwise leave.
    Anything else (a copy of a slice the series has, a mammogram, a file without a position)
    stays in a series of its own with the folder's other files without one."""
    lost = [k for k in series if k.startswith(NO_SERIES_UID)]
    if not lost:
        return
    known = {uid: ({g.path.parent for g in files}, tuple(text(files[0].header, a) for a in _SERIES_SIGNS))
             for uid, files in series.items() if not uid.startswith(NO_SERIES_UID)}
    positions: dict[str, set] = {}
    for key in lost:
        stay = []
        for f in series[key]:
            sign = tuple(text(f.header, a) for a in _SERIES_SIGNS)
            pos = _position(f) if sign[0] == "MR" and number(f.header, "NumberOfFrames") in (None, 1) else None
            homes = [] if pos is None else \
                [uid for uid, (folders, s) in known.items() if s == sign and f.path.parent in folders]
            if len(homes) == 1:
                taken = positions.setdefault(homes[0], {_position(g) for g in series[homes[0]]})
                if pos not in taken:
                    log.warning("%s has no SeriesInstanceUID; read as part of series %s (same folder, "
                                "series number and description, a slice it lacks)", f.path, homes[0])
                    series[homes[0]].append(f)
                    taken.add(pos)
                    continue
            stay.append(f)
        if stay:
            series[key] = stay
        else:
            del series[key]


def _accept(p: Path, skipped: list[Skipped], seen_sops: dict[str, Path]) -> DicomFile | None:
    if p.name.upper() == "DICOMDIR":
        skipped.append(Skipped(str(p), "DICOMDIR (a media index, not an image)"))
        return None
    ds = read_header(p)
    if isinstance(ds, Skipped):
        log.debug("skipped %s: %s", p, ds.reason)  # the caller reports Skipped
        skipped.append(ds)
        return None
    meta_sop = text(getattr(ds, "file_meta", {}), "MediaStorageSOPClassUID")
    if meta_sop == MEDIA_STORAGE_DIRECTORY_SOP:
        skipped.append(Skipped(str(p), "DICOMDIR (a media index, not an image)"))
        return None
    if not is_image(ds):
        sop = text(ds, "SOPClassUID") or meta_sop
        skipped.append(Skipped(str(p), f"not an image: {sop_class_name(sop)} "
                                       f"(Modality {text(ds, 'Modality') or 'unknown'}) has no pixel data"))
        return None
    sop_uid = text(ds, "SOPInstanceUID")
    if sop_uid and sop_uid in seen_sops:
        skipped.append(Skipped(str(p), f"duplicate of {seen_sops[sop_uid]} (same SOP Instance UID)"))
        return None
    if sop_uid:
        seen_sops[sop_uid] = p
    return DicomFile(p, ds)


def _build_studies(groups: dict, skipped: list[Skipped]) -> list[IndexedStudy]:
    from pydicom.uid import generate_uid

    studies = []
    for key, g in groups.items():
        series = []
        for uid, files in g["series"].items():
            files.sort(key=DicomFile.sort_key)
            kind = series_modality(files[0].header)
            if kind is None:
                skipped.append(_unsupported(files))
                continue
            series.append(DicomSeries(uid, kind, files))
        if not series:
            continue
        series.sort(key=lambda s: (s.modality.value, s.series_number or 0, s.series_instance_uid))
        first = series[0].header
        study_key = key
        if key.startswith("patient-date:"):
            uids = {text(f.header, "StudyInstanceUID") for s in series for f in s.files}
            study_key = uids.pop() if len(uids) == 1 else generate_uid(entropy_srcs=[key])
        studies.append(IndexedStudy(study_key, g["pid"], dicom_date(text(first, "StudyDate")), series))
    studies.sort(key=lambda s: (s.patient_id or "", str(s.study_date or ""), s.study_key))
    return studies


def _unsupported(files: list[DicomFile]) -> Skipped:
    ds = files[0].header
    what = text(ds, "Modality") or sop_class_name(text(ds, "SOPClassUID"))
    desc = text(ds, "SeriesDescription")
    more = f" and {len(files) - 1} more file(s) of the series" if len(files) > 1 else ""
    reason = (f"{what} series{f' {desc!r}' if desc else ''} is not read by BINDS "
              f"(only MG, US and MR){more}")
    log.info("skipped %s: %s", files[0].path, reason)
    return Skipped(str(files[0].path), reason)
