"""Labelled dataset layouts: BUSI (ultrasound) and mini-MIAS (mammography), plus folders of
study folders. Each case becomes a labelled :class:`~BINDSLib.study.Study`.

BUSI (``manifest.csv``): one study per image, role ``US``, ``diagnosis`` from ``label``, the
lesion mask from ``mask`` (empty for normal cases). Pixel spacing is unknown in the release,
so 1 mm is recorded (``attributes["pixel_spacing_known"] = "0"``). ``dup_group`` and
``label_conflict`` are kept in ``attributes`` for leakage-free splits.

mini-MIAS (``images.csv`` + ``findings.csv``): one study per image (an MLO view), role
``MG_<laterality>_MLO``, ``patient_id`` the woman (split by it), ``diagnosis`` the worst
finding, findings as circles (:class:`~BINDSLib.study.Finding`) and a lesion mask drawn from
the circles that have coordinates (``None`` when an abnormal image has only spread
calcifications without coordinates). The woman's other-breast film(s) in the folder are
attached as ``Study.comparison`` (for the bilateral comparison of the finding score).
Finding rows for an image that images.csv does not list, or lists as normal, are ignored, and
abnormal images without a finding row load without a circle; a warning names those images.
Finding codes are upper-cased; a finding's image ID that differs from one in images.csv only in
case (``MDB001``) is matched to it, with a warning. An image without a ``patient`` is compared with no other film
(a warning names it). A circle whose centre lies outside its image (coordinates for another
image size), or whose radius exceeds the image (a unit mixed up), is refused when the reference
masks are read.

Both: the CSV files are UTF-8, with or without a byte-order mark, their names and values
stripped of surrounding spaces; an ID listed twice
(``case_id``, ``image_id``) is refused, naming both rows; BUSI lesions without a mask are
named in a warning (they count in the AUCs, not in the lesion Dice or pointing game).
"""

from __future__ import annotations

import csv
import logging
import math
import os
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import InputError
from ..fsutil import visible_entries
from ..study import Diagnosis, Finding, Role, Study
from .files import read_image_file, read_mask_file

log = logging.getLogger(__name__)

BUSI_COLUMNS = {"case_id", "label", "image", "mask"}
MIAS_IMAGE_COLUMNS = {"image_id", "patient", "laterality", "view", "label", "image"}
MIAS_FINDING_COLUMNS = {"image_id", "abnormality", "center_col", "center_row", "radius"}  # severity optional


class _Row(dict):
    """A CSV row (column -> text stripped of surrounding spaces) and its ``line`` in the file
    (header = line 1), for messages."""

    line = 0


def _read_csv(path: Path, required: set[str]) -> list[_Row]:
    """The rows of a UTF-8 CSV file (a byte-order mark, as spreadsheet programs write, is
    skipped), names and values stripped of surrounding spaces; blank rows (also ``,,,`` as a
    spreadsheet saves an emptied row) are left out. :class:`InputError` naming the file when it
    cannot be read or lacks a column."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            names = [(n or "").strip() for n in reader.fieldnames or ()]
            missing = required - set(names)
            if missing and _other_separator(names):
                raise InputError("columns are separated by ';' or tabs: save it as comma-separated CSV", path)
            if missing:
                raise InputError(f"missing column(s) {sorted(missing)}", path)
            rows = []
            for raw in reader:
                row = _Row({k.strip(): (v or "").strip() for k, v in raw.items() if k is not None})
                if any(row.values()):
                    row.line = reader.line_num
                    rows.append(row)
            return rows
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"cannot read CSV: {e}", path) from None


def _listed_file(root: Path, text: str) -> Path:
    """The file a CSV cell names, relative to the dataset folder; a path written on Windows
    (``images\\mdb001.png``) is read with ``/`` when that is the file that exists."""
    path = root / text
    if "\\" in text and not path.exists() and (root / text.replace("\\", "/")).exists():
        return root / text.replace("\\", "/")
    return path


def _check_files(csv_path: Path, root: Path, rows: list[_Row], columns: tuple[str, ...]) -> None:
    """:class:`InputError` before any study is read when a listed file is missing (naming the
    first and counting the others): a held-out set fails at once, not after its other studies."""
    missing = [(row.line, c, row[c]) for row in rows for c in columns
               if row.get(c) and not _listed_file(root, row[c]).is_file()]
    if missing:
        line, column, text = missing[0]
        more = f" (and {len(missing) - 1} more listed file(s) missing)" if len(missing) > 1 else ""
        raise InputError(f"row {line}: {column} {text!r}: file not found in {root}{more}", csv_path)


def _csv_columns(path: Path) -> set[str] | None:
    """The column names of a CSV file; None when it is not a UTF-8 CSV with commas (its loader
    then says why)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            names = [c.strip() for c in next(csv.reader(f), [])]
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    return None if _other_separator(names) else set(names)


def _other_separator(names: list[str]) -> bool:
    """Whether a header read as one column was written with semicolons or tabs."""
    return len(names) == 1 and any(sep in names[0] for sep in ";\t")


def detect_layout(path: str | os.PathLike) -> str | None:
    """``"busi"``, ``"mini-mias"``, ``"study-folders"`` or ``None`` for a folder. A folder that
    is none of them but whose ``images.csv`` (``image_id``, ``patient``) or ``manifest.csv``
    (``case_id``) says what it was meant to be is taken as that layout, so that its loader
    names what is missing (``findings.csv``, a column)."""
    p = Path(path)
    if not p.is_dir():
        return None
    manifest, images = p / "manifest.csv", p / "images.csv"
    if manifest.is_file() and BUSI_COLUMNS <= (_csv_columns(manifest) or set()):
        return "busi"
    if images.is_file() and (p / "findings.csv").is_file():
        return "mini-mias"
    if any((d / "study.json").is_file() for d in visible_entries(p) if d.is_dir()):
        return "study-folders"
    if images.is_file() and {"image_id", "patient"} <= (_csv_columns(images) or set()):
        return "mini-mias"
    cols = _csv_columns(manifest) if manifest.is_file() else set()
    if cols is None and (p / "images").is_dir():
        return "busi"  # a manifest beside images/ that cannot be read: its loader says why
    if cols and "case_id" in cols:
        return "busi"
    return None


def _diagnosis(value: str, path: Path, row: int) -> Diagnosis:
    try:
        return Diagnosis(value.strip().lower())
    except ValueError:
        raise InputError(f"row {row}: label {value!r} is not normal, benign or malignant", path) from None


def iter_busi(root: str | os.PathLike, reference_masks: bool = True) -> Iterator[Study]:
    """Studies of a BUSI folder (``manifest.csv``, ``images/``, ``masks/``), in manifest order
    (``reference_masks=False``: the lesion masks left unread)."""
    root = Path(root)
    manifest = root / "manifest.csv"
    rows = _read_csv(manifest, BUSI_COLUMNS)
    _check_unique(manifest, rows, "case_id")
    _check_unique(manifest, rows, "image", files=True)  # one image under two IDs: counted twice
    for row in rows:
        _diagnosis(row["label"], manifest, row.line)
    normal = [r for r in rows if r["label"].lower() == "normal"]
    lost = [r for r in normal if r["mask"] and not _listed_file(root, r["mask"]).is_file()]
    if reference_masks and lost:  # a normal case's mask is empty anyway
        log.warning("%s: the mask file of %d normal case(s) is missing (taken as empty): %s", manifest,
                    len(lost), _some([r["case_id"] for r in lost]))
    unread = {r["case_id"] for r in lost} if reference_masks else set()
    _check_files(manifest, root, [r for r in rows if r["case_id"] not in unread],
                 ("image", "mask") if reference_masks else ("image",))
    unmasked = [r["case_id"] for r in rows if not r["mask"] and r["label"].lower() in ("benign", "malignant")]
    if reference_masks and unmasked:
        log.warning("%s: no mask for %d benign or malignant case(s) (left out of the lesion Dice and "
                    "pointing game): %s", manifest, len(unmasked), _some(unmasked))
    for row in rows:
        diagnosis = _diagnosis(row["label"], manifest, row.line)
        image = read_image_file(_listed_file(root, row["image"]), role=Role.parse("US"))
        mask = None
        if reference_masks and diagnosis is Diagnosis.NORMAL:
            mask = np.zeros(image.shape, np.uint8)
        elif reference_masks and row["mask"]:
            mask = read_mask_file(_listed_file(root, row["mask"]), image.shape)
            if not mask.any():
                log.warning("%s: row %d: the mask of %s case %s is empty (left out of the lesion Dice and "
                            "pointing game)", manifest, row.line, diagnosis.value, row["case_id"])
        image.lesion_mask = mask
        attrs = {k: row[k] for k in ("dup_group", "label_conflict", "lesions") if row.get(k) not in (None, "")}
        attrs["pixel_spacing_known"] = "0"
        attrs["dataset"] = "busi"
        yield Study(study_id=row["case_id"], images=[image], diagnosis=diagnosis,
                    description="BUSI breast ultrasound", attributes=attrs)


def disc_mask(shape_rows_cols: tuple[int, int], findings) -> np.ndarray | None:
    """A ``(rows, cols)`` uint8 mask of the finding circles; ``None`` if none has coordinates."""
    rows, cols = shape_rows_cols
    mask = np.zeros((rows, cols), np.uint8)
    any_circle = False
    rr, cc = np.ogrid[:rows, :cols]
    for f in findings:
        if f.center_col is None or f.center_row is None or f.radius_px is None:
            continue
        any_circle = True
        mask[(rr - f.center_row) ** 2 + (cc - f.center_col) ** 2 <= f.radius_px ** 2] = 1
    return mask if any_circle else None


#: mini-MIAS finding codes (calcification, circumscribed, spiculated, ill-defined mass,
#: architectural distortion, asymmetry)
MIAS_ABNORMALITIES = ("CALC", "CIRC", "SPIC", "MISC", "ARCH", "ASYM")


def _check_unique(path: Path, rows: list[_Row], column: str, files: bool = False) -> None:
    """:class:`InputError` naming the first ``column`` value that two rows of ``path`` share
    (and their rows): a study counted twice would bias every figure. ``files``: the values are
    file paths, compared as paths (``a.png`` and ``./a.png`` are one file)."""
    first: dict[str, int] = {}
    for row in rows:
        i, n = row[column], row.line
        if files and i:
            i = os.path.normpath(i.replace("\\", "/"))
        if not i:
            raise InputError(f"row {n}: {column} is empty", path)
        if i in first:
            raise InputError(f"rows {first[i]} and {n}: {column} {i!r} is listed twice", path)
        first[i] = n


def _some(ids: list[str]) -> str:
    return ", ".join(ids[:10]) + (" ..." if len(ids) > 10 else "")


def _opt_float(v: str | None) -> float | None:
    return None if v is None or v.strip() == "" else float(v)


def _number(row: _Row, column: str, path: Path) -> float | None:
    """A numeric cell (None when blank or absent), or :class:`InputError` naming row and column."""
    try:
        return _opt_float(row.get(column))
    except ValueError:
        hint = " (write decimals with a point: 0.4)" if "," in row[column] else ""
        raise InputError(f"row {row.line}: {column} {row[column]!r} is not a number{hint}", path) from None


def iter_mini_mias(root: str | os.PathLike, reference_masks: bool = True) -> Iterator[Study]:
    """Studies of a mini-MIAS folder (``images.csv``, ``findings.csv``, ``images/``)
    (``reference_masks=False``: no lesion masks drawn from the finding circles)."""
    root = Path(root)
    images_csv, findings_csv = root / "images.csv", root / "findings.csv"
    if not findings_csv.is_file():
        raise InputError("not found: a mini-MIAS folder holds images.csv and findings.csv (one row "
                         "per finding; only its header when there is none)", findings_csv)
    by_image: dict[str, list[Finding]] = {}
    for row in _read_csv(findings_csv, MIAS_FINDING_COLUMNS):
        n = row.line
        radius = _number(row, "radius", findings_csv)
        if radius is not None and not radius > 0:
            raise InputError(f"row {n}: radius {row['radius']!r} is not a positive number of pixels", findings_csv)
        try:
            f = Finding(abnormality=row["abnormality"].strip().upper(), severity=row.get("severity") or None,
                        center_col=_number(row, "center_col", findings_csv),
                        center_row=_number(row, "center_row", findings_csv), radius_px=radius)
        except ValueError as e:
            raise InputError(f"row {n}: {e}", findings_csv) from None
        given = [c for c in ("center_col", "center_row", "radius") if row[c]]
        if 0 < len(given) < 3:  # all three make a circle; none: calcifications spread over the breast
            log.warning("%s: row %d: the %s finding of %s has %s but not %s: kept without a circle (left out "
                        "of the lesion Dice and pointing game)", findings_csv, n, f.abnormality, row["image_id"],
                        " and ".join(given), " and ".join(c for c in ("center_col", "center_row", "radius")
                                                          if c not in given))
        if f.abnormality not in MIAS_ABNORMALITIES:
            log.warning("%s: row %d: abnormality %r is none of %s (kept as given)", findings_csv, n,
                        f.abnormality, ", ".join(MIAS_ABNORMALITIES))
        by_image.setdefault(row["image_id"], []).append(f)
    rows = []
    listed = _read_csv(images_csv, MIAS_IMAGE_COLUMNS)
    _check_unique(images_csv, listed, "image_id")
    _check_unique(images_csv, listed, "image", files=True)
    for row in listed:
        n = row.line
        diagnosis = _diagnosis(row["label"], images_csv, n)
        try:
            role = Role.parse(f"MG_{row['laterality']}_{row['view']}")
        except ValueError:
            raise InputError(f"row {n}: laterality {row['laterality']!r} and view {row['view']!r} are not a "
                             "mammogram's (laterality L or R; view CC, MLO, ML, LM or XCCL)", images_csv) from None
        spacing = _number(row, "pixel_spacing_mm", images_csv)
        if spacing is not None and not (math.isfinite(spacing) and spacing > 0):
            raise InputError(f"row {n}: pixel_spacing_mm {row['pixel_spacing_mm']!r} is not a positive "
                             "number of millimetres", images_csv)
        if spacing is not None and not 0.01 <= spacing <= 5.0:  # films are digitised at 0.05-1 mm
            log.warning("%s: row %d: pixel_spacing_mm %g is implausible for a mammogram", images_csv, n, spacing)
        rows.append((row, diagnosis, role, None if spacing is None else (spacing, spacing)))
    _match_finding_ids(findings_csv, by_image, [r[0]["image_id"] for r in rows])
    _warn_stray_findings(findings_csv, by_image, rows)
    _check_files(images_csv, root, listed, ("image",))
    by_woman: dict[str, list] = {}
    for r in rows:
        by_woman.setdefault(r[0]["patient"], []).append(r)
    if by_woman.get(""):  # an unknown woman: no other breast, no split group of her own
        log.warning("%s: no patient for %d image(s) (not compared with another film): %s", images_csv,
                    len(by_woman[""]), _some([r[0]["image_id"] for r in by_woman[""]]))
    for row, diagnosis, role, spacing in rows:
        findings = () if diagnosis is Diagnosis.NORMAL else tuple(by_image.get(row["image_id"], ()))
        image = read_image_file(_listed_file(root, row["image"]), role=role, spacing_mm=spacing, findings=findings)
        _, n_rows, n_cols = image.shape
        for f in findings if reference_masks else ():  # circles in pixels of this image (edges included)
            if f.center_col is not None and f.center_row is not None and not (
                    0 <= f.center_col <= n_cols and 0 <= f.center_row <= n_rows):
                raise InputError(f"the {f.abnormality} circle of {row['image_id']} (column {f.center_col:g}, "
                                 f"row {f.center_row:g}) lies outside its {n_cols} x {n_rows} image",
                                 findings_csv)
            if f.radius_px is not None and f.radius_px > max(n_rows, n_cols):  # (e.g. a unit mixed up)
                raise InputError(f"the {f.abnormality} circle of {row['image_id']} has a radius of "
                                 f"{f.radius_px:g} pixels, larger than its {n_cols} x {n_rows} image",
                                 findings_csv)
        if reference_masks and diagnosis is Diagnosis.NORMAL:
            image.lesion_mask = np.zeros(image.shape, np.uint8)
        elif reference_masks:
            m = disc_mask(image.shape[1:], findings)
            image.lesion_mask = None if m is None else m[None]
        # the woman's other breast, for the bilateral comparison of the finding score
        woman = row["patient"]
        comparison = [read_image_file(_listed_file(root, other["image"]), role=other_role, spacing_mm=other_spacing)
                      for other, _, other_role, other_spacing in (by_woman[woman] if woman else ())
                      if other_role.laterality != role.laterality]
        attrs = {"dataset": "mini-mias", "tissue": row.get("tissue", "")}
        yield Study(study_id=row["image_id"], images=[image], patient_id=woman or None,
                    diagnosis=diagnosis, description="mini-MIAS digitised screen-film mammogram",
                    attributes=attrs, comparison=comparison)


def _match_finding_ids(findings_csv: Path, by_image: dict[str, list], ids: list[str]) -> None:
    """Give findings whose image ID differs from one in images.csv only in case (``MDB001`` for
    ``mdb001``: a spreadsheet's upper-casing) to that image, in place; an ID that matches
    several, or none, stays as it is (and is warned about as not in images.csv)."""
    by_fold: dict[str, list[str]] = {}
    for i in ids:
        by_fold.setdefault(i.casefold(), []).append(i)
    listed, moved = set(ids), []
    for key in [k for k in by_image if k not in listed]:
        same = by_fold.get(key.casefold(), [])
        if len(same) == 1:
            by_image.setdefault(same[0], []).extend(by_image.pop(key))
            moved.append(f"{key} -> {same[0]}")
    if moved:
        log.warning("%s: %d image ID(s) differ from images.csv's only in case, matched: %s", findings_csv,
                    len(moved), _some(moved))


def _warn_stray_findings(findings_csv: Path, by_image: dict[str, list], rows: list) -> None:
    """Warn about findings.csv rows that cannot count - for an image not in images.csv, or for
    one labelled normal (both ignored) - and about abnormal images without a finding row (no
    circle, no finding type)."""
    listed = {r[0]["image_id"]: r[1] for r in rows}
    problems = (("finding rows for %d image(s) not in images.csv, ignored", sorted(set(by_image) - set(listed))),
                ("finding rows for %d image(s) labelled normal in images.csv, ignored",
                 sorted(i for i in by_image if listed.get(i) is Diagnosis.NORMAL)),
                ("no finding row for %d benign or malignant image(s) (no circle, no finding type)",
                 sorted(i for i, d in listed.items() if d is not Diagnosis.NORMAL and i not in by_image)))
    for what, ids in problems:
        if ids:
            log.warning("%s: " + what + ": %s", findings_csv, len(ids), _some(ids))


def iter_study_folders(root: str | os.PathLike, reference_masks: bool = True) -> Iterator[Study]:
    """Every ``*/study.json`` folder directly under ``root`` (sorted by name). Two folders with
    one study ID are refused before any is read (a study would count twice)."""
    import json

    from ..studyfolder import read_study_folder

    folders = [d for d in visible_entries(root) if d.is_dir() and (d / "study.json").is_file()]
    first: dict[str, Path] = {}
    for d in folders:
        try:
            doc = json.loads((d / "study.json").read_text(encoding="utf-8-sig"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError):
            continue  # read_study_folder names the problem when it reaches this folder
        sid = str(doc.get("study_id") or d.name) if isinstance(doc, dict) else d.name
        if sid in first:
            raise InputError(f"study ID {sid!r} is also that of {first[sid].name}: give each study its own ID", d)
        first[sid] = d
    for d in folders:
        yield read_study_folder(d, reference_masks=reference_masks)


def iter_dataset(root: str | os.PathLike, reference_masks: bool = True) -> Iterator[Study]:
    """Labelled studies of a dataset folder, its layout detected automatically.
    ``reference_masks=False`` leaves the lesion masks (ground truth) unread."""
    layout = detect_layout(root)
    if layout == "busi":
        return iter_busi(root, reference_masks)
    if layout == "mini-mias":
        return iter_mini_mias(root, reference_masks)
    if layout == "study-folders":
        return iter_study_folders(root, reference_masks)
    raise InputError("not a known dataset layout (expected BUSI manifest.csv, mini-MIAS "
                     "images.csv + findings.csv, or a folder of study folders)", root)


def load_dataset(root: str | os.PathLike) -> list[Study]:
    return list(iter_dataset(root))
