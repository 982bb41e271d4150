"""``binds inspect PATH``: what BINDS finds in a folder or files, and what it skipped."""

from __future__ import annotations

import argparse
import json
import sys


def register(sub) -> None:
    p = sub.add_parser(
        "inspect", help="show the studies, images, roles and geometry found in a path",
        description="Index PATH (a DICOM folder, a study folder, a dataset layout or image "
                    "files) and print the studies, images, roles, geometry, and the files "
                    "skipped with the reason.")
    p.add_argument("paths", nargs="*", metavar="PATH", help="folder or file(s) (none: the --role files only)")
    p.add_argument("--role", action="append", default=[], metavar="ROLE=FILE",
                   help="role of a plain image file, e.g. US_L=lesion.png (repeatable)")
    p.add_argument("--json", action="store_true", help="print JSON (schema binds.inspect v1)")
    p.add_argument("--keep-identifiers", action="store_true",
                   help="show patient IDs as stored instead of pseudonyms")
    p.set_defaults(func=run)


def image_summary(im) -> dict:
    import numpy as np

    r = im.role
    return {
        "label": im.label,
        "modality": im.modality.value,
        "role": r.key,
        "laterality": r.laterality,
        "view": r.view,
        "sequence": None if r.sequence is None else r.sequence.value,
        "phase": r.phase,
        "phase_time_s": r.phase_time_s,
        "b_value": r.b_value,
        "clock_position": r.clock_position,
        "frame": r.frame,
        "path": im.source.files[0] if im.source.files else None,
        "n_files": len(im.source.files),
        "shape": list(im.shape),
        "spacing_mm": list(im.geometry.spacing_mm),
        "origin_mm": list(im.geometry.origin_mm),
        "direction": list(im.geometry.direction),
        "acquisition_date": None if im.acquisition_date is None else im.acquisition_date.isoformat(),
        "has_lesion_mask": im.lesion_mask is not None,
        "lesion_mask_voxels": None if im.lesion_mask is None else int(np.count_nonzero(im.lesion_mask)),
        "findings": len(im.findings),
    }


def study_summary(st, keep_identifiers: bool = False) -> dict:
    from ..study import pseudonym

    pid = st.patient_id
    if pid is not None and not keep_identifiers and not pid.startswith("anon-"):
        pid = pseudonym(pid)
    return {
        "study_id": st.study_id,
        "patient_id": pid,
        "study_date": None if st.study_date is None else st.study_date.isoformat(),
        "diagnosis": None if st.diagnosis is None else st.diagnosis.value,
        "synthetic": st.synthetic,
        "modalities": [m.value for m in st.modalities()],
        "images": [image_summary(im) for im in st.images],
        "comparison_images": [image_summary(im) for im in st.comparison],
    }


def run(args: argparse.Namespace) -> int:
    from ..io.loader import LoadResult, load, load_files, parse_role_assignments

    from ..errors import UsageError

    result = LoadResult()
    assigned = parse_role_assignments(args.role)
    if not args.paths and not assigned:
        raise UsageError("give at least one PATH or --role ROLE=FILE")
    if assigned:
        res = load_files(assigned)
        result.studies += res.studies
        result.skipped += res.skipped
    for path in args.paths:
        if any(str(p) == path for p, _ in assigned):
            continue
        res = load(path)
        result.studies += res.studies
        result.skipped += res.skipped
    doc = {
        "schema": "binds.inspect",
        "schema_version": 1,
        "paths": list(args.paths),
        "studies": [study_summary(s, args.keep_identifiers) for s in result.studies],
        "skipped": [s.to_json() for s in result.skipped],
    }
    if args.json:
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print_text(doc)
    return 0


def print_text(doc: dict) -> None:
    out = sys.stdout
    studies = doc["studies"]
    out.write(f"{len(studies)} stud{'y' if len(studies) == 1 else 'ies'}, "
              f"{sum(len(s['images']) for s in studies)} image(s), {len(doc['skipped'])} skipped\n")
    for s in studies:
        head = [f"study {s['study_id']}"]
        if s["study_date"]:
            head.append(s["study_date"])
        if s["patient_id"]:
            head.append(f"patient {s['patient_id']}")
        if s["diagnosis"]:
            head.append(f"label {s['diagnosis']}")
        if s["synthetic"]:
            head.append("SYNTHETIC")
        out.write("  " + ", ".join(head) + "\n")
        for im, comparison in [(i, False) for i in s["images"]] + [(i, True) for i in s["comparison_images"]]:
            sp = "x".join(f"{v:g}" for v in im["spacing_mm"])
            shape = "x".join(str(v) for v in im["shape"])
            extra = (" +lesion mask" + ("" if im["lesion_mask_voxels"] else " (empty)")) if im["has_lesion_mask"] else ""
            extra += f" +{im['findings']} finding(s)" if im["findings"] else ""
            extra += " (for comparison only)" if comparison else ""
            out.write(f"    {im['role']:<14} {im['modality']}  {shape:>14} voxels  {sp} mm"
                      f"  origin {tuple(round(v, 2) for v in im['origin_mm'])}{extra}\n")
            if im["path"]:
                out.write(f"    {'':<14} {im['path']}" + (f" (+{im['n_files'] - 1} files)" if im["n_files"] > 1 else "") + "\n")
    if doc["skipped"]:
        out.write("skipped:\n")
        for sk in doc["skipped"]:
            out.write(f"  {sk['path']}: {sk['reason']}\n")
