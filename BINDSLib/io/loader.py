"""One entry point for every input: :func:`load`.

=====================================  ============================================
input                                  read as
=====================================  ============================================
folder with ``study.json``             one study folder
folder with ``history.json``           a woman's exams (one study per exam)
BUSI / mini-MIAS layout                labelled studies (:mod:`.datasets`)
folder of study / history folders      every study and exam in it (other entries skipped)
any other folder, or a DICOM file      DICOM, indexed recursively (:mod:`.dicom`)
folder of image files, no DICOM        one study, roles from file names
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
from ..fsutil import visible_entries
from ..study import Role, Study
from .dicom_common import Skipped
from .files import IMAGE_SUFFIXES, file_stem, read_image_file, role_from_name, role_name_hint, suffix_of


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
    from .datasets import detect_layout, iter_dataset, iter_study_folders

    if is_study_folder(p):
        return LoadResult([read_study_folder(p, reference_masks=reference_masks)])
    if (p / "history.json").is_file():
        return LoadResult(list(read_history(p, reference_masks=reference_masks).exams))
    folders = collection(p)
    if folders is not None:
        result = LoadResult(skipped=folders.skipped)
        where: dict[str, str] = {}  # study ID -> what holds it, for the message
        if folders.studies:  # the study folders, their IDs checked for repeats among them
            for st in iter_study_folders(p, reference_masks=reference_masks):
                where[st.study_id] = "a study folder here"
                result.studies.append(st)
        for h in folders.histories:  # and against every exam of the histories
            for st in read_history(h, reference_masks=reference_masks).exams:
                if st.study_id in where:  # a study would count twice
                    raise InputError(f"study ID {st.study_id!r} of an exam of {h.name} is also that of "
                                     f"{where[st.study_id]}: give each study its own ID", p)
                where[st.study_id] = f"an exam of {h.name}"
                result.studies.append(st)
        return result
    if detect_layout(p) is not None:
        return LoadResult(list(iter_dataset(p, reference_masks=reference_masks)))
    try:
        result = _load_dicom(None, p)
    except InputError as e:
        nothing = e
    else:  # image files beside the DICOM ones are not read: say why, not only "not DICOM"
        for i, sk in enumerate(result.skipped):
            if sk.reason == "not DICOM" and suffix_of(Path(sk.path)) in IMAGE_SUFFIXES:
                result.skipped[i] = Skipped(sk.path, "not read: image files beside DICOM images are not "
                                                     "read with them; give this file on its own or with "
                                                     "--role ROLE=FILE")
        return result
    # a folder of image files, no DICOM: one study, as when the files are given together
    entries = visible_entries(p)
    pictures = [f for f in entries if f.is_file() and suffix_of(f) in IMAGE_SUFFIXES]
    named = [(f, (roles or {}).get(f.name) or role_from_name(f)) for f in pictures]
    folders = [d for d in entries if d.is_dir()]
    if not any(role for _, role in named):
        below = [d.name for d in folders if any(role_from_name(f) for f in visible_entries(d) if f.is_file())]
        if below:  # e.g. one folder per patient
            raise InputError(f"no DICOM images; image files named after roles are in its subfolder(s) "
                             f"{', '.join(below[:5])}{' ...' if len(below) > 5 else ''}: give each such folder "
                             "(one study each)", p)
        if pictures:
            raise InputError(f"no DICOM images, and none of its {len(pictures)} image file(s) is named after a "
                             "role (e.g. MG_L_CC.png, US_L.png): give them with --role ROLE=FILE", p)
        raise nothing
    result = load_files([(f, role) for f, role in named if role is not None],
                        study_id=Path(os.path.abspath(p)).name)  # "." and ".." name their folder
    result.skipped += [Skipped(str(f), "not read: the name is not a role (e.g. MG_L_CC.png); give it with "
                                       "--role ROLE=FILE" + role_name_hint(f)) for f, role in named if role is None]
    result.skipped += [Skipped(str(d), "not read: a folder of image files is one study, read without its "
                                       "subfolders; give this folder on its own") for d in folders]
    return result


@dataclass
class Collection:
    """A folder holding study folders and/or exam-history folders (one woman's exams each)."""

    studies: list[Path]
    histories: list[Path]
    skipped: list[Skipped]


def collection(path: str | os.PathLike) -> Collection | None:
    """The study and exam-history folders directly in ``path``, and the images beside them that
    are not read (DICOM or image files, other folders), or None when it holds neither kind or
    is a dataset layout (BUSI, mini-MIAS) or a study or history folder itself."""
    from ..studyfolder import is_study_folder
    from .datasets import detect_layout

    p = Path(path)
    if not p.is_dir() or is_study_folder(p) or (p / "history.json").is_file():
        return None
    if detect_layout(p) not in (None, "study-folders"):
        return None
    found = Collection([], [], [])
    rest = []
    for e in visible_entries(p):
        if e.is_dir() and is_study_folder(e):
            found.studies.append(e)
        elif e.is_dir() and (e / "history.json").is_file():
            found.histories.append(e)
        else:
            rest.append(e)
    if not (found.studies or found.histories):
        return None  # (a plain DICOM folder: its files are not opened here)
    name = Path(os.path.abspath(p)).name  # (of "." too)
    for e in rest:
        if e.is_dir() or is_dicom_file(e) or suffix_of(e) in IMAGE_SUFFIXES:
            found.skipped.append(Skipped(str(e), f"not read: {name} is read as a folder of study folders "
                                                 f"and exam histories; give this {'folder' if e.is_dir() else 'file'}"
                                                 " on its own"))
    return found


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
    """Plain image files (and single DICOM files) with optional roles, as one study: its ID
    ``study_id``, else the file's name without its suffix (one file whose name is not a role) or
    their folder's name."""
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
        if suffix_of(path) not in IMAGE_SUFFIXES:
            raise InputError("unsupported file type (give DICOM, NRRD, NIfTI, MHA, PNG or JPEG)", path)
        images.append(read_image_file(path, role=role))
    if not images:
        raise InputError("no images given")
    # one file is its own study (two BUSI images of one folder are two studies), unless its name
    # is its role (patient/US_L.png): that and several files are their folder's study
    stem = file_stem(first) if first is not None else ""
    if len(files) == 1 and stem and role_from_name(first) is None:
        sid = study_id or stem
    else:
        sid = study_id or (Path(os.path.abspath(first)).parent.name if first is not None else "") or "study"
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
