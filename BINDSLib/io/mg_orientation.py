"""A mammogram stored turned is turned back to the standard orientation.

The models read a mammogram in the standard orientation of DICOM's mammography examples and the
usual storage: the chest wall - nipple axis along the rows, the rows of a left breast running to
the front (``A``, the chest wall at the left edge) and of a right breast to the back (``P``);
in the views with a head - foot axis (MLO, ML, LM, LMO, SIO) the columns run to the feet (the
head at the top), in the CC views to the middle (the lateral side at the top): ``A\\R`` left
CC, ``P\\L`` right CC, ``A\\F`` / ``P\\F`` MLO. A file may store it otherwise: a GE Senographe
left CC in the shared vendor headers has PatientOrientation ``R\\P`` (rows toward the patient's
right, columns toward the back: the chest wall at the bottom edge). DICOM's PatientOrientation
(0020,0020) says toward which patient directions (A, P, R, L, H, F; oblique as ``FR``) the rows
(first value: along a row, as the column index grows) and the columns (second value: down a
column) of the stored pixels run; the first letter is the main direction.

Only turns are undone (a file stored turned a quarter, or a half: upside down); a file stored
mirrored stays so (:func:`reorientation`). Re-indexing keeps every pixel where it is in space:
the voxels are transposed and/or flipped and the geometry's axes with them (:func:`reorient`),
so outputs on the new grid overlay the stored image exactly (Slicer's own load of the file
included). Which edge holds the chest wall
is also found from the image (``model.preprocess``): a file without PatientOrientation is read
as stored. Pure numpy: the Slicer modules use it too.
"""

from __future__ import annotations

import numpy as np

from ..study import Geometry

_LETTERS = set("APRLHF")
_OPPOSITE = {"A": "P", "P": "A", "R": "L", "L": "R", "H": "F", "F": "H"}
_AXIS = {"A": 1, "P": 1, "R": 0, "L": 0, "H": 2, "F": 2}
#: views whose columns run head - foot (the head at the top)
HEAD_FOOT_VIEWS = frozenset({"MLO", "ML", "LM", "LMO", "SIO"})
#: views whose columns run lateral - medial (the lateral side at the top)
CC_VIEWS = frozenset({"CC", "XCCL", "XCCM"})


def parse_patient_orientation(value) -> tuple[str, str] | None:
    """``(rows, columns)`` directions of a PatientOrientation value (``'A\\F'``, ``['A', 'FR']``),
    upper case; ``None`` when it is not two valid direction codes (a vendor's ``'CC'``) or both
    run along one axis (``'P\\P'``, ``'R\\L'``)."""
    if value is None:
        return None
    parts = value.split("\\") if isinstance(value, str) else [str(v) for v in value]
    parts = [p.strip().upper() for p in parts]
    if len(parts) != 2 or not all(p and set(p) <= _LETTERS for p in parts):
        return None
    if _AXIS[parts[0][0]] == _AXIS[parts[1][0]]:
        return None
    return parts[0], parts[1]


_LPS = {"L": (1, 0, 0), "R": (-1, 0, 0), "P": (0, 1, 0), "A": (0, -1, 0), "H": (0, 0, 1), "F": (0, 0, -1)}


def agrees_with_plane(orientation, image_orientation) -> bool:
    """Whether a PatientOrientation (:func:`parse_patient_orientation` value) says what an
    ImageOrientationPatient (6 numbers, LPS) says: for the rows and for the columns, the main
    letter is the axis' main direction (or ties with it, as at 45 degrees), and every letter
    (``FR``: to the feet and the right) points within 90 degrees of it."""
    iop = np.asarray(image_orientation, np.float64)
    for letters, axis in zip(orientation, (iop[:3], iop[3:])):
        axis = axis / (np.linalg.norm(axis) or 1.0)
        if float(np.dot(_LPS[letters[0]], axis)) < float(np.max(np.abs(axis))) - 0.05:
            return False  # (its main letter is not the axis' main direction)
        if any(float(np.dot(_LPS[c], axis)) <= 0 for c in letters):
            return False
    return True


def checked_orientation(value, image_orientation=None) -> tuple[tuple[str, str] | None, str | None]:
    """The PatientOrientation ``value`` (as a file or the DICOM database gives it) to use, and
    otherwise why not, for a warning: ``(None, None)`` without one; ``(None, reason)`` when it
    is not two directions along different axes or contradicts ``image_orientation`` (its 6
    numbers, when the file has them: :func:`agrees_with_plane`)."""
    if value is None:
        return None, None
    said = (value if isinstance(value, str) else "\\".join(str(v) for v in value)).strip()
    parsed = parse_patient_orientation(value)
    if parsed is None:
        return None, (f"ignoring PatientOrientation '{said}': not two directions along different axes "
                      "(read as stored)") if said else None
    if image_orientation is not None and not agrees_with_plane(parsed, image_orientation):
        iop = np.asarray(image_orientation, np.float64)
        plane = "\\".join(direction_letters(np.column_stack([iop[:3], iop[3:], np.zeros(3)]).ravel()))
        return None, f"PatientOrientation '{said}' contradicts ImageOrientationPatient ({plane}): read as stored"
    return parsed, None


def direction_letters(direction) -> tuple[str, str]:
    """The main directions (``'A'``...) in which the rows and the columns of a grid of
    ``direction`` (row-major 3x3, columns the axes, LPS) run, as PatientOrientation writes them."""
    axes = np.asarray(direction, np.float64).reshape(3, 3)
    out = []
    for v in (axes[:, 0], axes[:, 1]):
        k = int(np.argmax(np.abs(v)))
        out.append(("LR", "PA", "HF")[k][0 if v[k] > 0 else 1])
    return out[0], out[1]


def standard_orientation(laterality: str | None, view: str | None) -> tuple[str | None, str | None]:
    """The main directions ``(rows, columns)`` of the standard orientation of a view (``None``
    where no convention applies: an unknown laterality, a view without one)."""
    rows = {"L": "A", "R": "P"}.get(laterality or "")
    cols = None
    if view in HEAD_FOOT_VIEWS:
        cols = "F"
    elif view in CC_VIEWS and laterality in ("L", "R"):
        cols = _OPPOSITE[laterality]  # to the middle: the lateral side at the top
    return rows, cols


def other_breasts_storage(orientation, view: str | None, laterality: str | None) -> bool:
    """Whether a CC's PatientOrientation is exactly the standard one of the other breast's CC
    (``P\\L`` on a view labelled left): more likely a wrong laterality than a half turn."""
    if orientation is None or view not in CC_VIEWS or laterality not in ("L", "R"):
        return False
    other = standard_orientation(_OPPOSITE[laterality], view)
    return (orientation[0][0], orientation[1][0]) == other


def reorientation(orientation, view: str | None, laterality: str | None = None) -> tuple[bool, bool, bool]:
    """``(transpose, flip_rows, flip_cols)`` that turn a mammogram of ``orientation`` (a
    :func:`parse_patient_orientation` value) to the standard orientation of its ``view``
    (:func:`standard_orientation`), by a rotation of the stored image, never a mirroring:

    * transposed when its chest wall - nipple axis (A/P) runs down the columns;
    * flipped top to bottom (``flip_rows``) when its columns then run opposite to the standard's
      (to the head in an MLO-type view; to the lateral side in a CC view, which takes the
      ``laterality``);
    * flipped left to right (``flip_cols``) only where the steps so far mirror the image (a
      transposition, or a flip alone), to make them a rotation.

    A file stored mirrored stays mirrored: which edge holds the chest wall is left to the image
    (``model.preprocess`` finds it). In an MLO-type view the turn does not depend on the
    laterality, so a view labelled with the wrong breast still shows against the other
    breast's edge (``validation``'s laterality check). A CC's turn does; a CC stored exactly as
    the other breast's CC is stored (:func:`other_breasts_storage`) is read as stored, not
    turned a half to match its label. A view without a convention (none, FB, AT, CV) is turned
    head up where its columns run head - foot. All ``False`` when the orientation is unknown or
    says nothing against the stored one."""
    if orientation is None or other_breasts_storage(orientation, view, laterality):
        return False, False, False
    rows, cols = orientation[0][0], orientation[1][0]
    transpose = cols in "AP" and rows not in "AP"
    if transpose:
        rows, cols = cols, rows
    want_cols = standard_orientation(laterality, view)[1]
    if want_cols is None and view not in CC_VIEWS and cols in "HF":
        want_cols = "F"  # (no convention: at least the head at the top)
    flip_rows = want_cols is not None and cols == _OPPOSITE[want_cols]
    flip_cols = transpose != flip_rows  # (a transposition or a flip alone mirrors: one more turns)
    return transpose, flip_rows, flip_cols


def steps_text(steps) -> str:
    """The turn the :func:`reorientation` steps make, in words (``""`` for none: its steps are a
    quarter turn, with a transposition, or a half turn, both flips)."""
    return "turned a quarter" if steps[0] else "turned a half (upside down)" if any(steps) else ""


def reorient(voxels: np.ndarray, geometry: Geometry, transpose: bool, flip_rows: bool,
             flip_cols: bool = False) -> tuple[np.ndarray, Geometry]:
    """``voxels`` ``(1, rows, cols)`` transposed (rows <-> columns), then flipped top to bottom
    and/or left to right, with the geometry that keeps each pixel at its place in space; each
    step also reverses the slice axis, which for one slice moves nothing and keeps the axes
    right-handed."""
    if not (transpose or flip_rows or flip_cols):
        return voxels, geometry
    if voxels.shape[0] != 1:
        raise ValueError("only a 2D image (one slice) is re-indexed")
    spacing = np.asarray(geometry.spacing_mm, np.float64)
    origin = np.asarray(geometry.origin_mm, np.float64)
    axes = np.asarray(geometry.direction, np.float64).reshape(3, 3).copy()  # columns: i, j, k
    if transpose:
        voxels = voxels.transpose(0, 2, 1)
        axes = axes[:, [1, 0, 2]] * np.array([1.0, 1.0, -1.0])
        spacing = spacing[[1, 0, 2]]
    if flip_rows:
        origin = origin + axes[:, 1] * spacing[1] * (voxels.shape[1] - 1)
        voxels = voxels[:, ::-1, :]
        axes[:, 1:] = -axes[:, 1:]
    if flip_cols:
        origin = origin + axes[:, 0] * spacing[0] * (voxels.shape[2] - 1)
        voxels = voxels[:, :, ::-1]
        axes[:, [0, 2]] = -axes[:, [0, 2]]
    return (np.ascontiguousarray(voxels),
            Geometry(tuple(float(s) for s in spacing), tuple(float(o) for o in origin),
                     tuple(float(a) for a in axes.ravel())))
