"""A mammogram stored turned is re-indexed to the orientation the models read.

The models read a mammogram with its chest wall - nipple axis along the rows (the chest wall at
the left or the right edge: which one, ``model.preprocess`` finds from the image) and, in the
views with a head - foot axis (MLO, ML, LM, LMO, SIO), the head at the top. A file may store it
otherwise: a GE Senographe left CC in the shared vendor headers has PatientOrientation
``R\\P`` (rows toward the patient's right, columns toward the back: the chest wall at the
bottom edge). DICOM's PatientOrientation (0020,0020) says toward which patient directions
(A, P, R, L, H, F; oblique as ``FR``) the rows (first value) and the columns (second value) of
the stored pixels run; the first letter is the main direction.

Re-indexing keeps every pixel where it is in space: the voxels are transposed and/or flipped
and the geometry's axes with them (:func:`reorient`), so outputs on the new grid overlay the
stored image exactly (Slicer's own load of the file included). Pure numpy: the Slicer modules
use it too.
"""

from __future__ import annotations

import numpy as np

from ..study import Geometry

_LETTERS = set("APRLHF")
#: views whose columns run head - foot (the head at the top)
HEAD_FOOT_VIEWS = frozenset({"MLO", "ML", "LM", "LMO", "SIO"})


def parse_patient_orientation(value) -> tuple[str, str] | None:
    """``(rows, columns)`` directions of a PatientOrientation value (``'A\\F'``, ``['A', 'FR']``),
    upper case; ``None`` when it is not two valid direction codes (a vendor's ``'CC'``)."""
    if value is None:
        return None
    parts = value.split("\\") if isinstance(value, str) else [str(v) for v in value]
    parts = [p.strip().upper() for p in parts]
    if len(parts) != 2 or not all(p and set(p) <= _LETTERS for p in parts):
        return None
    return parts[0], parts[1]


def reorientation(orientation, view: str | None) -> tuple[bool, bool]:
    """``(transpose, flip_rows)`` that bring a mammogram of ``orientation`` (a
    :func:`parse_patient_orientation` value) and ``view`` to the orientation the models read:
    transposed when its chest wall - nipple axis (A/P) runs down the columns; then, in a view
    with a head - foot axis, flipped top to bottom when the columns run toward the head.
    ``(False, False)`` when the orientation is unknown or says nothing against the stored one."""
    if orientation is None:
        return False, False
    rows, cols = orientation[0][0], orientation[1][0]
    transpose = cols in "AP" and rows not in "AP"
    if transpose:
        rows, cols = cols, rows
    flip = view in HEAD_FOOT_VIEWS and cols == "H"
    return transpose, flip


def reorient(voxels: np.ndarray, geometry: Geometry, transpose: bool, flip_rows: bool
             ) -> tuple[np.ndarray, Geometry]:
    """``voxels`` ``(1, rows, cols)`` transposed (rows <-> columns) and/or flipped top to bottom,
    with the geometry that keeps each pixel at its place in space; each step also reverses the
    slice axis, which for one slice moves nothing and keeps the axes right-handed."""
    spacing = np.asarray(geometry.spacing_mm, np.float64)
    origin = np.asarray(geometry.origin_mm, np.float64)
    axes = np.asarray(geometry.direction, np.float64).reshape(3, 3).copy()  # columns: i, j, k
    if (transpose or flip_rows) and voxels.shape[0] != 1:
        raise ValueError("only a 2D image (one slice) is re-indexed")
    if transpose:
        voxels = voxels.transpose(0, 2, 1)
        axes = axes[:, [1, 0, 2]] * np.array([1.0, 1.0, -1.0])
        spacing = spacing[[1, 0, 2]]
    if flip_rows:
        origin = origin + axes[:, 1] * spacing[1] * (voxels.shape[1] - 1)
        voxels = voxels[:, ::-1, :]
        axes[:, 1:] = -axes[:, 1:]
    if not (transpose or flip_rows):
        return voxels, geometry
    return (np.ascontiguousarray(voxels),
            Geometry(tuple(float(s) for s in spacing), tuple(float(o) for o in origin),
                     tuple(float(a) for a in axes.ravel())))
