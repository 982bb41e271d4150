"""``binds convert PATH --out DIR``: any input BINDS reads -> study folders.

The first step of the data flow (files -> study folder -> pipeline), on its own: DICOM folders,
dataset layouts and plain image files become study folders (images as NRRD with their
geometry, ``study.json``). The Slicer module runs it in a separate process to read DICOM with
BINDS' own pydicom, away from the one Slicer's DICOM module uses.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "convert", help="write study folders from DICOM folders, datasets or image files",
        description="Read PATH (a DICOM folder, a study folder, a dataset layout or image files "
                    "given with --role) and write each study found as a study folder: one study "
                    "into --out, several into --out/<study_id>/. Prints the study folders. A study "
                    "folder that already holds the same study (the same study.json and voxels: a "
                    "conversion run again after an interruption) is kept; any other is replaced "
                    "only with --overwrite.")
    p.add_argument("paths", nargs="*", metavar="PATH", help="folder or file(s)")
    p.add_argument("--role", action="append", default=[], metavar="ROLE=FILE",
                   help="an image file and its role, e.g. US_L=lesion.png (repeatable)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--keep-identifiers", action="store_true",
                   help="keep patient IDs in study.json (default: pseudonyms)")
    p.add_argument("--overwrite", action="store_true", help="replace existing study folders (several studies: those of "
                                                           "the same IDs; other study folders in --out are kept)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging

    from ..errors import InputError, OutputError, UsageError
    from ..diagnose import remove_stale
    from ..fsutil import STUDY_SIGNS, Inputs, check_output_dir, make_output_folder, output_lock, visible_entries
    from ..io.files import IMAGE_SUFFIXES, suffix_of
    from ..io.loader import load, load_files, parse_role_assignments
    from .diagnose import _safe_name

    results = []
    # image files given together are one study (roles from --role or their names), as in diagnose
    files = list(parse_role_assignments(args.role)) if args.role else []
    files += [(Path(p), None) for p in args.paths
              if Path(p).is_file() and suffix_of(Path(p)) in IMAGE_SUFFIXES]
    if files:
        results.append(load_files(files))
    results += [load(p) for p in args.paths if (Path(p), None) not in files]
    if not results:
        raise UsageError("give at least one PATH or --role ROLE=FILE")
    studies = [st for r in results for st in r.studies]
    for r in results:
        for sk in r.skipped:
            logging.getLogger(__name__).warning("skipped %s: %s", sk.path, sk.reason)
    if not studies:
        raise InputError("no study found", args.paths[0] if args.paths else None)
    out = Path(args.out)
    targets = [out] if len(studies) == 1 else [out / _safe_name(st.study_id) for st in studies]
    if len({str(t).casefold() for t in targets}) != len(targets):  # also on case-insensitive disks
        names = [t.name.casefold() for t in targets]
        twice = sorted({st.study_id for st, n in zip(studies, names) if names.count(n) > 1})
        raise InputError(f"studies {', '.join(twice)} would share an output folder (the same study ID); "
                         "convert them separately")
    inputs = [*args.paths, *(f for f, _ in parse_role_assignments(args.role or []))]
    if len(studies) > 1 and (out / "study.json").is_file():  # they would be nested inside that study
        raise OutputError(f"is a study folder; {len(studies)} studies need a folder of study folders: "
                          "choose another --out", out)
    if len(studies) == 1:
        return _convert(studies, targets, args, inputs)
    if Path(out).resolve() in Inputs(inputs).given:
        raise OutputError("is an input of this command: choose another --out for its study folders", out)
    for t in targets:  # what can be checked before --out is made (names, inputs, the current folder)
        check_output_dir(t, True, inputs, STUDY_SIGNS)
    made = not out.exists()
    make_output_folder(out)
    try:
        with output_lock(out, "binds convert"):  # a second conversion into --out would remove this one's .part folders
            for t in targets:
                remove_stale(t)  # (a killed conversion's)
            code = _convert(studies, targets, args, inputs)
    except BaseException:
        if made and not visible_entries(out):  # refused or stopped before any study: leave no folder
            shutil.rmtree(out, ignore_errors=True)
        raise
    written = {t.name for t in targets}  # a folder of study folders grows by batches: earlier ones are kept
    others = [d.name for d in sorted(out.iterdir()) if (d / "study.json").is_file() and d.name not in written]
    if others:
        logging.getLogger(__name__).warning("%s also holds %d study folder(s) of earlier conversions, kept: %s",
                                         out, len(others), ", ".join(others[:5]) + (" ..." if len(others) > 5 else ""))
    return code


def _convert(studies, targets, args, inputs) -> int:
    """Write each study to its target folder; one that already holds exactly that study (a
    conversion run again, e.g. after an interruption) is kept as it is."""
    import logging

    from ..errors import OutputError
    from ..fsutil import STUDY_SIGNS, check_output_dir, restore_hidden_result
    from ..studyfolder import holds_study, is_study_folder, write_study_folder

    log = logging.getLogger(__name__)
    done = []
    for st, t in zip(studies, targets):  # all checked before any is written
        restore_hidden_result(t, STUDY_SIGNS)  # (an --overwrite killed between its renames)
        if not args.overwrite and is_study_folder(t):
            check_output_dir(t, True, inputs, STUDY_SIGNS)  # (still not an input, nor being written now)
            if not holds_study(t, st, args.keep_identifiers):
                raise OutputError(f"already holds a study folder of study {st.study_id} with other images or "
                                  "settings than this conversion's; use --overwrite to replace it", t)
            done.append(t)
        else:
            check_output_dir(t, args.overwrite, inputs, STUDY_SIGNS)
    for st in studies:
        views: dict[str, list[str]] = {}
        for im in st.images:
            if im.modality.value == "MG":
                views.setdefault(im.role.key, []).append(im.label)
        for key, labels in views.items():
            if len(labels) > 1:  # written, as given, but not diagnosable as it is
                log.warning("study %s holds the view %s %d times (%s): binds diagnose refuses such a study; keep one",
                            st.study_id, key, len(labels), ", ".join(labels))
    for st, t in zip(studies, targets):  # each study written whole (atomically), then named
        if t in done:
            log.info("study %s: %s already holds it (converted before); kept", st.study_id, t)
        else:
            write_study_folder(st, t, overwrite=args.overwrite, keep_identifiers=args.keep_identifiers)
        sys.stdout.write(f"{t}\n")
    if done:
        log.warning("%d of %d studies were already converted (the same images); kept as they were",
                    len(done), len(studies))
    return 0
