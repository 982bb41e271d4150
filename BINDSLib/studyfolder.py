"""The study folder: NRRD images plus ``study.json`` (schema ``binds.study`` version 1).

Layout (documented in docs/STUDY_FOLDER.md)::

    STUDY/
      study.json
      images/<label>.nrrd      one per image, voxels + geometry (LPS)
      masks/<label>.nrrd       optional lesion mask (uint8; BINDS writes it on the image's grid)
      comparison/<label>.nrrd  optional images given only for comparison (``comparison_images``
                               in study.json, ``Study.comparison``; their masks under
                               masks/comparison/)

Writing then reading gives identical voxels and geometry. Folders are written atomically.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import re
from pathlib import Path

import numpy as np

from .errors import InputError
from .fsutil import STUDY_SIGNS, atomic_dir, json_dumps
from .io.files import write_image
from .study import (
    Diagnosis, ExamHistory, Finding, Geometry, Image, Pathology, Role, SourceInfo, Study,
    parse_date, pseudonym,
)
from .threads import thread_map

SCHEMA = "binds.study"
SCHEMA_VERSION = 1
STUDY_JSON = "study.json"
COMPARISON_DIR = "comparison"
_LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _date_str(d: _dt.date | None) -> str | None:
    return None if d is None else d.isoformat()


def write_nrrd(path: Path, voxels: np.ndarray, geometry: Geometry) -> None:
    """Write voxels with geometry as a compressed NRRD through SimpleITK."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(voxels))
    geometry.apply_to_sitk(img)
    write_image(img, path, compress=True)


def read_volume(path: Path):
    """Read an image file through SimpleITK (:func:`.io.files.read_image`: its header checked
    first; a clear :class:`InputError` if it cannot)."""
    from .io.files import read_image

    return read_image(path)


def study_to_json(study: Study, keep_identifiers: bool = False) -> dict:
    """The ``study.json`` document for ``study`` (image paths relative to the folder)."""
    pid = study.patient_id
    if pid is not None and not keep_identifiers and not pid.startswith("anon-"):
        pid = pseudonym(pid)
    images = [_image_entry(im, "images", keep_identifiers) for im in study.images]
    doc = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "study_id": study.study_id,
        "patient_id": pid,
        "study_date": _date_str(study.study_date),
        "synthetic": bool(study.synthetic),
        "description": study.description,
        "diagnosis": None if study.diagnosis is None else study.diagnosis.value,
        "pathology": None if study.pathology is None else study.pathology.to_json(),
        "attributes": {str(k): str(v) for k, v in study.attributes.items()},
        "images": images,
    }
    if study.comparison:
        doc["comparison_images"] = [_image_entry(im, COMPARISON_DIR, keep_identifiers)
                                    for im in study.comparison]
    return doc


def _image_entry(im, folder: str, keep_identifiers: bool) -> dict:
    """The ``study.json`` entry of one image stored under ``folder`` (its mask under ``masks``)."""
    entry = {
        "label": im.label,
        "path": f"{folder}/{im.label}.nrrd",
        "modality": im.modality.value,
        "role": im.role.key,
        "role_detail": im.role.to_json(),
        "laterality": im.role.laterality,
        "view": im.role.view,
        "phase": im.role.phase,
        "shape": list(im.shape),
        "geometry": im.geometry.to_json(),
        "acquisition_date": _date_str(im.acquisition_date),
    }
    if im.lesion_mask is not None:
        masks = "masks" if folder == "images" else f"masks/{folder}"
        entry["lesion_mask"] = f"{masks}/{im.label}.nrrd"
    if im.findings:
        entry["findings"] = [f.to_json() for f in im.findings]
    src = im.source.to_json()
    if not keep_identifiers:
        src.pop("files", None)
    if src:
        entry["source"] = src
    return entry


def write_study_folder(study: Study, path: str | os.PathLike, overwrite: bool = False,
                       keep_identifiers: bool = False) -> Path:
    """Write ``study`` as a study folder at ``path`` (atomically). Returns ``path``."""
    path = Path(path)
    doc = study_to_json(study, keep_identifiers=keep_identifiers)
    with atomic_dir(path, overwrite=overwrite, signs=STUDY_SIGNS) as tmp:
        (tmp / "images").mkdir()
        for entry, im in zip(doc["images"] + doc.get("comparison_images", []),
                             study.images + study.comparison):
            for key, voxels in (("path", im.voxels), ("lesion_mask", im.lesion_mask)):
                if voxels is not None:
                    (tmp / entry[key]).parent.mkdir(parents=True, exist_ok=True)
                    write_nrrd(tmp / entry[key], voxels, im.geometry)
        (tmp / STUDY_JSON).write_text(json_dumps(doc), encoding="utf-8")
    return path


def is_study_folder(path: str | os.PathLike) -> bool:
    return (Path(path) / STUDY_JSON).is_file()


def _without_file_names(doc):
    """``doc`` with the images' source file names replaced by their number (``--keep-identifiers``
    writes them as given, relative to the folder a command ran in; the voxels are compared
    instead)."""
    if not isinstance(doc, dict):
        return doc
    out = dict(doc)
    for key in ("images", "comparison_images"):
        if isinstance(out.get(key), list):
            out[key] = [{**e, "source": {k: len(v) if k == "files" and isinstance(v, list) else v
                                         for k, v in e["source"].items()}}
                        if isinstance(e, dict) and isinstance(e.get("source"), dict) else e for e in out[key]]
    return out


def holds_study(path: str | os.PathLike, study: Study, keep_identifiers: bool = False) -> bool:
    """Whether the folder ``path`` is already the study folder :func:`write_study_folder` would
    write for ``study``: the same ``study.json`` and the same voxels in every image and mask
    (how ``binds convert`` run again after an interruption tells a study it converted before
    from another one it must not replace). A folder that cannot be read does not hold it."""
    import SimpleITK as sitk

    root = Path(path)
    try:
        there = json.loads((root / STUDY_JSON).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return False
    doc = study_to_json(study, keep_identifiers=keep_identifiers)
    if _without_file_names(there) != _without_file_names(json.loads(json_dumps(doc))):  # (as JSON: lists)
        return False
    for entry, im in zip(doc["images"] + doc.get("comparison_images", []), study.images + study.comparison):
        for key, voxels in (("path", im.voxels), ("lesion_mask", im.lesion_mask)):
            if voxels is None:
                continue
            try:
                held = sitk.GetArrayFromImage(read_volume(root / entry[key]))
            except InputError:
                return False
            if held.dtype != voxels.dtype or held.shape != voxels.shape or not np.array_equal(held, voxels):
                return False
    return True


def _safe_relpath(root: Path, rel: str, json_path: Path, what: str = "image path",
                  inside: str = "the study folder") -> Path:
    p = Path(rel)
    if p.is_absolute() or ".." in p.parts:
        raise InputError(f"{what} {rel!r} must be relative and inside {inside}", json_path)
    return root / p


def read_study_folder(path: str | os.PathLike, load_voxels: bool = True,
                      reference_masks: bool = True) -> Study:
    """Read a study folder written by :func:`write_study_folder` (or by hand, see the schema).

    ``reference_masks=False`` leaves the images' reference lesion masks (``lesion_mask``: ground
    truth for training and evaluation) unread: diagnosis and risk scoring never use them (in a
    paper-size synthetic study they are 38 MiB held through the whole diagnosis)."""
    root = Path(path)
    jpath = root / STUDY_JSON
    if not jpath.is_file():
        raise InputError(f"not a study folder (no {STUDY_JSON})", root)
    try:
        doc = json.loads(jpath.read_text(encoding="utf-8-sig"))  # a byte-order mark is allowed
    except (UnicodeDecodeError, ValueError) as e:  # (ValueError: also an integer of over 4300 digits)
        raise InputError(f"invalid JSON: {e}", jpath) from None
    except RecursionError:
        raise InputError("invalid JSON: nested too deeply", jpath) from None
    return study_from_json(doc, root, load_voxels=load_voxels, json_path=jpath,
                           reference_masks=reference_masks)


def study_from_json(doc, root: Path, load_voxels: bool = True, json_path: Path | None = None,
                    reference_masks: bool = True) -> Study:
    """Build a :class:`Study` from a parsed ``study.json`` document (validating it)."""
    jpath = json_path or (root / STUDY_JSON)
    if not isinstance(doc, dict):
        raise InputError("study.json must hold a JSON object", jpath)
    if doc.get("schema") != SCHEMA:
        raise InputError(f"not a BINDS study file (schema is {doc.get('schema')!r}, expected {SCHEMA!r})", jpath)
    ver = doc.get("schema_version")
    if not isinstance(ver, int) or ver < 1:
        raise InputError(f"invalid schema_version {ver!r}", jpath)
    if ver > SCHEMA_VERSION:
        raise InputError(f"schema_version {ver} is newer than this BINDS supports ({SCHEMA_VERSION}); "
                         "upgrade BINDS", jpath)
    images_doc = doc.get("images")
    if not isinstance(images_doc, list):
        raise InputError("'images' must be a list", jpath)
    for key, types in _STUDY_FIELDS.items():
        _check_type(doc, key, types, "study", jpath)
    try:
        study = Study(
            study_id=str(doc.get("study_id") or root.name),
            patient_id=doc.get("patient_id"),
            study_date=parse_date(doc.get("study_date")),
            diagnosis=None if doc.get("diagnosis") is None else Diagnosis(doc["diagnosis"]),
            pathology=None if doc.get("pathology") is None else Pathology.from_json(doc["pathology"]),
            synthetic=bool(doc.get("synthetic", False)),
            description=doc.get("description"),
            attributes={str(k): str(v) for k, v in (doc.get("attributes") or {}).items()},
        )
    except (ValueError, TypeError) as e:
        raise InputError(f"invalid study fields: {e}", jpath) from None
    comparison_doc = doc.get("comparison_images")
    if comparison_doc is None:
        comparison_doc = []
    elif not isinstance(comparison_doc, list):
        raise InputError("'comparison_images' must be a list", jpath)
    for key, docs in (("images", images_doc), ("comparison_images", comparison_doc)):
        labels = set()
        # the image files are read on a few threads (decompression releases the GIL)
        images = thread_map(lambda ne: _image_from_entry(ne[1], f"{key}[{ne[0]}]", root, jpath, load_voxels,
                                                         reference_masks),
                            enumerate(docs), threads=None if load_voxels else 1)
        for n, image in enumerate(images):
            if image.label in labels:
                raise InputError(f"{key}[{n}]: duplicate image label {image.label!r}", jpath)
            labels.add(image.label)
        getattr(study, "images" if key == "images" else "comparison").extend(images)
    return study


_STUDY_FIELDS = {
    "study_id": (str,), "patient_id": (str,), "study_date": (str,), "synthetic": (bool,),
    "description": (str,), "diagnosis": (str,), "pathology": (dict,), "attributes": (dict,),
}
_IMAGE_FIELDS = {
    "path": (str,), "label": (str,), "role": (str,), "role_detail": (dict,), "modality": (str,),
    "findings": (list,), "source": (dict,), "acquisition_date": (str,), "lesion_mask": (str,),
    "geometry": (dict,), "shape": (list,), "laterality": (str,), "view": (str,), "phase": (int,),
}


def _check_type(d: dict, key: str, types: tuple, where: str, jpath: Path) -> None:
    """Refuse a field of the wrong JSON type (``None`` is allowed: the field is optional)."""
    v = d.get(key)
    if v is not None and (not isinstance(v, types) or (isinstance(v, bool) and bool not in types)):
        names = " or ".join(t.__name__.replace("dict", "object").replace("list", "array") for t in types)
        raise InputError(f"{where}: '{key}' must be {names}, not {type(v).__name__}", jpath)


def _image_from_entry(entry, where: str, root: Path, jpath: Path, load_voxels: bool,
                      reference_masks: bool = True) -> Image:
    if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
        raise InputError(f"{where} must be an object with a 'path' string", jpath)
    for key, types in _IMAGE_FIELDS.items():
        _check_type(entry, key, types, where, jpath)
    try:
        if entry.get("role_detail") is not None:
            role = Role.from_json(entry["role_detail"])
        elif entry.get("role") is not None:
            role = Role.parse(entry["role"])
        else:
            raise ValueError("needs a 'role' (e.g. MG_L_CC)")
        if entry.get("modality") is not None and entry["modality"] != role.modality.value:
            raise ValueError(f"modality {entry['modality']!r} contradicts role {role.key}")
        # the copies beside role_detail must agree with it: a hand edit of one would be ignored
        if entry.get("role_detail") is not None and entry.get("role") is not None \
                and Role.parse(entry["role"]).key != role.key:
            raise ValueError(f"role {entry['role']!r} contradicts role_detail ({role.key}); edit both")
        for key in ("laterality", "view", "phase"):  # (a copy the role has no value for is not read)
            given, held = entry.get(key), getattr(role, key)
            if given is not None and held is not None and str(given).upper() != str(held).upper():
                raise ValueError(f"{key} {entry[key]!r} contradicts role {role.key} "
                                 f"({key} {getattr(role, key)!r}); edit both")
        findings = tuple(Finding.from_json(f) for f in entry.get("findings") or [])
        source = SourceInfo.from_json(entry.get("source") or {})
        acq = parse_date(entry.get("acquisition_date"))
        geom_doc = None if entry.get("geometry") is None else Geometry.from_json(entry["geometry"])
    except (ValueError, TypeError, KeyError) as e:
        raise InputError(f"{where}: {e}", jpath) from None
    label = entry.get("label") or role.key
    if not _LABEL_RE.match(label):
        raise InputError(f"{where}: label {label!r} must be a file-name-safe name (letters, digits, . _ -)", jpath)
    ipath = _safe_relpath(root, entry["path"], jpath)
    mask = None
    if load_voxels:
        from .io.files import sitk_to_voxels

        voxels, geom = sitk_to_voxels(read_volume(ipath), ipath)
        geom = _reconcile_geometry(geom, entry, ipath, voxels.shape)
        mpath = _safe_relpath(root, entry["lesion_mask"], jpath) if entry.get("lesion_mask") else None
        if mpath is not None and reference_masks:  # placed by its grid, as a --lesion-mask
            from .io.files import read_mask_file

            mask = read_mask_file(mpath, voxels.shape, geom)
    else:
        if geom_doc is None or entry.get("shape") is None:
            raise InputError(f"{where}: needs 'geometry' and 'shape' to be read without voxels", jpath)
        geom = geom_doc
        voxels = np.zeros((1, 1, 1), dtype=np.uint8)
    if not source.files:
        source = dataclasses.replace(source, files=(str(ipath),))
    try:
        return Image(voxels, geom, role, acquisition_date=acq, source=source,
                     lesion_mask=mask, findings=findings, name=label)
    except ValueError as e:
        raise InputError(f"{where}: {e}", jpath) from None


def _reconcile_geometry(file_geom: Geometry, entry: dict, path: Path, shape) -> Geometry:
    """The file's geometry, checked against (and made bit-exact by) the one in study.json.

    NRRD stores spacing times direction, so spacing comes back with float rounding; the JSON
    copy restores the exact values. A real disagreement means the file was replaced.
    """
    # both fields are optional (absent or null): without them the file's own geometry stands
    if entry.get("shape") is not None and tuple(entry["shape"]) != tuple(shape):
        raise InputError(f"image shape {tuple(shape)} differs from study.json {tuple(entry['shape'])}", path)
    if entry.get("geometry") is None:
        return file_geom
    try:
        recorded = Geometry.from_json(entry["geometry"])
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"invalid geometry in study.json: {e}", path) from None
    a = file_geom.ijk_to_lps_matrix()
    b = recorded.ijk_to_lps_matrix()
    if not np.allclose(a, b, rtol=1e-6, atol=1e-5):
        raise InputError("image geometry (spacing/origin/direction) differs from study.json: "
                         "the file was changed after the study folder was written", path)
    return recorded


def write_history(history: ExamHistory, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """A woman's exams as ``path/<date>_<study_id>/`` study folders plus ``history.json``."""
    path = Path(path)
    with atomic_dir(path, overwrite=overwrite, signs=("history.json",)) as tmp:
        entries = []
        for s in history.exams:
            name = f"{s.study_date.isoformat()}_{s.study_id}"
            write_study_folder(s, tmp / name)
            entries.append({"study_folder": name, "study_date": s.study_date.isoformat()})
        doc = {
            "schema": "binds.history", "schema_version": 1, "woman_id": history.woman_id,
            "cancer_date": _date_str(history.cancer_date),
            "followup_end": _date_str(history.followup_end), "exams": entries,
        }
        (tmp / "history.json").write_text(json_dumps(doc), encoding="utf-8")
    return path


def read_history(path: str | os.PathLike, load_voxels: bool = True,
                 reference_masks: bool = True) -> ExamHistory:
    path = Path(path)
    jpath = path / "history.json"
    if not jpath.is_file():
        raise InputError("not an exam-history folder (no history.json)", path)
    try:
        doc = json.loads(jpath.read_text(encoding="utf-8-sig"))
        if not isinstance(doc, dict) or doc.get("schema") != "binds.history":
            raise ValueError("not a BINDS exam history (its schema must be \"binds.history\")")
        exams = [read_study_folder(_safe_relpath(path, e["study_folder"], jpath, "study_folder",
                                                 "the history folder"), load_voxels, reference_masks)
                 for e in doc["exams"]]
        for e, st in zip(doc["exams"], exams):  # which date would the trajectory believe?
            listed = parse_date(e.get("study_date"))
            if listed is not None and st.study_date is not None and listed != st.study_date:
                raise ValueError(f"{e['study_folder']} is dated {listed} here but {st.study_date} in its "
                                 "study.json")
        if not isinstance(doc["woman_id"], str) or not doc["woman_id"].strip():
            raise ValueError(f"'woman_id' must be non-empty text, not {doc['woman_id']!r}")
        return ExamHistory(doc["woman_id"], exams, parse_date(doc.get("cancer_date")),
                           parse_date(doc.get("followup_end")))
    except (KeyError, TypeError, ValueError, json.JSONDecodeError, RecursionError) as e:
        raise InputError(f"invalid history file: {e}", jpath) from None
