"""One entry point for every input: :func:`load`.

=====================================  ============================================
input                                  read as
=====================================  ============================================
folder with ``study.json``             one study folder
folder with ``history.json``           a woman's exams (one study per exam)
BUSI / mini-MIAS layout                labelled studies (:mod:`.datasets`)
folder of study folders                every study folder in it
any other folder, or a DICOM file      DICOM, indexed recursively (:mod:`.dicom`)
NRRD / NIfTI / MHA / PNG / JPEG files  one study, roles from ``roles`` or file names
=====================================  ============================================

A folder with some broken files yields the good studies plus the skipped files with reasons
(:class:`LoadResult`). Nothing usable at all is an :class:`~BINDSLib.errors.InputError`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from ..errors import InputError, UsageError
from ..study import Role, Study
from .dicom_common import Skipped
from .files import PICTURE_SUFFIXES, VOLUME_SUFFIXES, read_image_file, suffix_of


@dataclass
class LoadResult:
    studies: list[Study] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


def is_dicom_file(path: Path) -> bool:
    """True for a file with the DICOM preamble (``DICM`` at byte 128) or a parseable header."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    if len(head) == 132 and head[128:132] == b"DICM":
        return True
    if suffix_of(path) in (".dcm", ".dicom", ".ima"):
        return True
    return False


def load(path: str | os.PathLike, roles: Mapping[str, Role] | None = None,
         reference_masks: bool = True) -> LoadResult:
    """Read whatever ``path`` is into studies (see the module table).

    ``reference_masks=False``: the reference lesion masks of study folders, exam histories and
    dataset folders are left unread (diagnosis and risk scoring do not use them)."""
    p = Path(path)
    if not p.exists():
        raise InputError("no such file or folder", p)
    if p.is_file():
        if is_dicom_file(p):
            return _load_dicom([p], p)
        role = (roles or {}).get(p.name) or (roles or {}).get(str(p))
        return load_files([(p, role)])
    from ..studyfolder import is_study_folder, read_history, read_study_folder
    from .datasets import detect_layout, iter_dataset

    if is_study_folder(p):
        return LoadResult([read_study_folder(p, reference_masks=reference_masks)])
    if (p / "history.json").is_file():
        return LoadResult(list(read_history(p, reference_masks=reference_masks).exams))
    if detect_layout(p) is not None:
        return LoadResult(list(iter_dataset(p, reference_masks=reference_masks)))
    return _load_dicom(None, p)


def _load_dicom(files: Sequence[Path] | None, where: Path) -> LoadResult:
    from . import dicom

    studies, skipped = (dicom.load_dicom_files(files) if files is not None
                        else dicom.load_dicom_folder(where))
    result = LoadResult(list(studies), list(skipped))
    if not result.studies:
        reasons = "; ".join(f"{Path(s.path).name}: {s.reason}" for s in result.skipped[:5])
        more = f" (and {len(result.skipped) - 5} more)" if len(result.skipped) > 5 else ""
        raise InputError("no usable images found" + (f" ({reasons}{more})" if reasons else
                                                     " (empty folder or no DICOM files)"), where)
    return result


def load_files(files: Sequence[tuple[str | os.PathLike, Role | None]],
               study_id: str | None = None) -> LoadResult:
    """Plain image files (and single DICOM files) with optional roles, as one study."""
    images = []
    skipped: list[Skipped] = []
    first = None
    for path, role in files:
        path = Path(path)
        first = first or path
        if is_dicom_file(path):
            res = _load_dicom([path], path)
            for st in res.studies:
                for im in st.images:
                    if role is not None:
                        im.role = role
                    images.append(im)
            skipped += res.skipped
            continue
        if suffix_of(path) not in VOLUME_SUFFIXES + PICTURE_SUFFIXES:
            raise InputError("unsupported file type (give DICOM, NRRD, NIfTI, MHA, PNG or JPEG)", path)
        images.append(read_image_file(path, role=role))
    if not images:
        raise InputError("no images given")
    sid = study_id or (first.parent.name if first is not None else "study")
    return LoadResult([Study(study_id=sid, images=images)], skipped)


def parse_role_assignments(items: Sequence[str]) -> list[tuple[Path, Role]]:
    """``ROLE=FILE`` strings (``MG_L_CC=left_cc.png``) to (path, role) pairs."""
    out = []
    for item in items:
        role_key, sep, file = item.partition("=")
        if not sep or not file:
            raise UsageError(f"expected ROLE=FILE, got {item!r} (e.g. US_L=lesion.png)")
        try:
            out.append((Path(file), Role.parse(role_key)))
        except ValueError as e:
            raise InputError(str(e), file) from None
    return out
