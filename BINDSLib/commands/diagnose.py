"""``binds diagnose``: two-stage diagnosis of one study or a batch."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from . import device_name

log = logging.getLogger(__name__)

DEFAULT_MODEL = "auto"


def register(sub) -> None:
    p = sub.add_parser(
        "diagnose", help="two-stage diagnosis: malignancy, subtype, lesions and saliency",
        description="Stage 1 triages from ultrasound and/or mammography; when its probability "
                    "falls in the model's uncertainty band (or a lesion mask is given on the MRI) and "
                    "MRI is present, stage 2 (all modalities) replaces it. STUDY is a study folder, a DICOM folder (each study "
                    "in it is diagnosed), a folder of study folders, a CSV with a 'path' column, "
                    "or image files given with --role. One study writes its outputs into --out; "
                    "several write --out/<study_id>/ each, plus results.csv and failures.csv.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("studies", nargs="*", metavar="STUDY", help="study folder, DICOM folder, CSV or file")
    p.add_argument("--role", action="append", default=[], metavar="ROLE=FILE",
                   help="an image file and its role, e.g. US_L=lesion.png (repeatable; one study)")
    p.add_argument("--model", default=DEFAULT_MODEL, metavar="BUNDLE",
                   help="model bundle folder or name; 'auto' (default) picks per study: the "
                        "synthetic demo bundle for synthetic studies, the bundle trained on real "
                        "images of the study's modality (ultrasound first) for real ones "
                        "(see 'binds models')")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--device", default="auto", type=device_name, help="auto (GPU when present), cpu, cuda or cuda:N")
    p.add_argument("--stage", choices=("auto", "1", "2"), default="auto",
                   help="auto: add MRI only when stage 1 is uncertain or a --lesion-mask is given on an MR "
                        "image; 1: US/MG only; 2: full path")
    p.add_argument("--lesion-mask", action="append", default=[], metavar="LABEL=FILE",
                   help="user-edited lesion for an image (its label or role key): a mask image, its "
                        "non-zero voxels the lesion (NRRD, NIfTI, MHA: placed by its grid, resampled "
                        "onto the image's; PNG, JPEG: the image's pixels), or an edited .seg.nrrd "
                        "(repeatable; one study)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--keep-identifiers", action="store_true",
                   help="keep patient IDs in report.json and results.csv (default: pseudonyms)")
    p.add_argument("--no-summary", action="store_true", help="skip the PNG summary")
    p.set_defaults(func=run)


def progress(done: int, total: int, message: str) -> None:
    """One machine-readable progress line on stderr (the Slicer module parses it); none with
    ``binds -q`` (only errors)."""
    import logging

    from ..errors import raise_if_terminated
    from ..fsutil import terminal_text

    raise_if_terminated()
    if logging.getLogger().getEffectiveLevel() >= logging.ERROR:
        return
    sys.stderr.write(f"PROGRESS {done}/{total} {terminal_text(message)}\n")
    sys.stderr.flush()


def collect_sources(args) -> list[tuple[str, object]]:
    """(kind, value) items to load lazily: ("path", Path) or ("files", [(path, role)])."""
    import csv

    from ..errors import InputError, UsageError
    from ..io.files import IMAGE_SUFFIXES, suffix_of
    from ..io.loader import collection, parse_role_assignments

    sources: list[tuple[str, object]] = []
    files = list(parse_role_assignments(args.role)) if args.role else []
    for s in args.studies:
        p = Path(s)
        if p.is_file() and suffix_of(p) in IMAGE_SUFFIXES:
            files.append((p, None))  # image files given together are one study (roles from names)
        elif p.is_file() and p.suffix.lower() == ".csv":
            try:
                with open(p, newline="", encoding="utf-8-sig") as f:  # a spreadsheet's byte-order mark
                    rows = list(csv.DictReader(f))
            except (OSError, UnicodeDecodeError, csv.Error) as e:
                raise InputError(f"cannot read CSV: {e}", p) from None
            if rows and "path" not in rows[0]:
                raise InputError("a batch CSV needs a 'path' column", p)
            if not rows:
                raise InputError("the batch CSV lists no study (a 'path' column, one row per study)", p)
            for line, r in enumerate(rows, 2):  # (line 1: the header)
                if not (r.get("path") or "").strip():
                    raise InputError(f"line {line}: no path (every row names a study in the 'path' column)", p)
                sources.append(("path", (p.parent / r["path"].strip()).resolve()))
        elif (found := collection(p)) is not None:  # each study folder and woman's history a source
            for sk in found.skipped:
                log.warning("skipped %s: %s", sk.path, sk.reason)
            sources += [("path", d) for d in sorted(found.studies + found.histories)]
        else:
            sources.append(("path", p))
    if files:
        sources.insert(0, ("files", files))
    if not sources:
        raise UsageError("give at least one STUDY or --role ROLE=FILE")
    return sources


def load_source(kind: str, value) -> list:
    from ..io.loader import load, load_files

    # the reference lesion masks of a study folder (ground truth) play no part in a diagnosis
    res = load_files(value) if kind == "files" else load(value, reference_masks=False)
    for sk in res.skipped:
        log.warning("skipped %s: %s", sk.path, sk.reason)
    return res.studies


def run(args: argparse.Namespace) -> int:
    from ..bundle import find_bundle, list_bundles
    from ..diagnose import DiagnoseOptions, diagnose_study, resolve_device
    from ..errors import UsageError
    from ..fsutil import Inputs, terminal_text
    from ..memory import configure_malloc
    from ..model.selection import AUTO

    if getattr(args, "own_process", False):
        configure_malloc()  # diagnosis only: it would slow risk scoring's large activations

    sources = collect_sources(args)
    masks: dict[str, str] = {}
    for item in args.lesion_mask:
        key, sep, file = item.partition("=")
        if not sep or not file:
            raise UsageError(f"expected LABEL=FILE, got {item!r} (e.g. US_L=edited.seg.nrrd)")
        if key in masks:
            raise UsageError(f"--lesion-mask {key} is given twice ({masks[key]}, {file}): give one mask per image")
        masks[key] = file
    inputs = tuple(masks.values()) + tuple(
        p for kind, value in sources for p in ([value] if kind == "path" else [f for f, _ in value]))
    # and the bundles it may read: an output never replaces one
    inputs += tuple(list_bundles()) + (() if args.model == AUTO else (find_bundle(args.model),))
    options = DiagnoseOptions(stage=args.stage, device=resolve_device(args.device),
                              keep_identifiers=args.keep_identifiers, overwrite=args.overwrite,
                              summary_png=not args.no_summary, inputs=Inputs(inputs))
    model = ModelPicker(args.model, options.device)
    out = Path(args.out)
    single = len(sources) == 1
    if single:
        studies = load_source(*sources[0])
        single = len(studies) == 1
    if single:
        if masks and len(studies) != 1:
            raise UsageError("--lesion-mask needs exactly one study")
        progress(0, 4, f"read study {studies[0].study_id}")
        chosen, notes = model(studies[0])
        report = diagnose_study(chosen, studies[0], out, options, masks, progress=progress,
                                model_notes=notes)
        sys.stdout.write(f"{terminal_text(report.study_id)}: stage {report.stage}, malignancy probability "
                         f"{report.malignancy_probability:.3f} -> {report.recommendation}\n"
                         f"outputs in {out}\n")
        return 0
    if masks:
        raise UsageError("--lesion-mask applies to one study, not a batch")
    return run_batch(model, sources, out, options)


class ModelPicker:
    """``picker(study) -> (DiagnosisModel, notes)``: the fixed bundle, or with ``auto`` the one
    :func:`~BINDSLib.model.selection.choose_bundle` picks for each study (each loaded once)."""

    def __init__(self, name: str, device: str):
        self.name, self.device = name, device
        self._loaded: dict[str, object] = {}
        self._broken: set[str] = set()  # bundles --model auto found unloadable
        from ..model.selection import AUTO

        if name != AUTO:  # a named bundle that is missing or tampered with fails at once
            self._load(name)

    def _load(self, name_or_path):
        from ..model.inference import DiagnosisModel

        key = str(name_or_path)
        if key not in self._loaded:
            self._loaded[key] = DiagnosisModel.from_bundle(name_or_path, device=self.device)
        return self._loaded[key]

    def __call__(self, study) -> tuple[object, tuple[str, ...]]:
        from ..errors import ModelError
        from ..model.selection import AUTO, choose_bundle, installed_bundles

        if self.name != AUTO:
            return self._load(self.name), ()
        while True:  # a bundle whose weights fail to load is passed over, with a warning, once
            bundles = [b for b in installed_bundles() if str(b.path) not in self._broken]
            choice = choose_bundle(study, bundles)
            try:
                model = self._load(choice.bundle.path)
                break
            except ModelError as e:
                self._broken.add(str(choice.bundle.path))
                log.warning("ignoring bundle %s for --model auto: %s", choice.bundle.name, e)
        notes = [f"model chosen automatically: {choice.bundle.name} ({choice.reason})"]
        if choice.warning:
            log.warning("study %s: %s", study.study_id, choice.warning)
            notes.append(choice.warning)
        return model, tuple(notes)


def run_batch(model, sources, out: Path, options) -> int:
    """Diagnose every study of ``sources`` into ``out/<study>/``, holding the folder's lock (a
    second batch into ``out`` would remove this one's half-written studies as stale)."""
    from ..fsutil import make_output_folder, output_lock

    make_output_folder(out)
    with output_lock(out, "binds diagnose batch"):
        return _run_batch(model, sources, out, options)


def _run_batch(model, sources, out: Path, options) -> int:
    import csv

    from ..diagnose import diagnose_study, is_finished, remove_stale
    from ..errors import EXIT_PARTIAL, BindsError
    from ..fsutil import REPORT_SIGNS, atomic_write_text, printable, restore_hidden_result
    from ..outputs.report import results_csv

    failures: list[tuple[str, str]] = []
    written: dict[str, str] = {}  # output folder -> the source whose study it holds (this run)
    merged: dict[str, Path] = {}  # the output folders whose results this run stands by, in input order
    done = skipped = 0
    total = len(sources)
    for n, (kind, value) in enumerate(sources, start=1):
        name = str(value) if kind == "path" else "files"
        try:
            studies = load_source(kind, value)
        except BindsError as e:
            failures.append((name, str(e)))
            log.error("%s", e)
            progress(n, total, f"failed {name}")
            continue
        for st in studies:
            target = out / _safe_name(st.study_id)
            key = str(target).casefold()  # one folder also on case-insensitive disks
            if key in written:
                again = "was given twice" if written[key] == name else f"is also that of a study of {written[key]}"
                failures.append((name, f"study ID {st.study_id!r} {again}: each study needs its own ID "
                                       "(its output folder)"))
                log.error("%s: %s", name, failures[-1][1])
                continue
            written[key] = name
            remove_stale(target)
            restore_hidden_result(target, REPORT_SIGNS)  # (an --overwrite killed between its renames)
            if is_finished(target) and not options.overwrite:
                skipped += 1
                merged[key] = target
                continue
            try:
                chosen, notes = model(st)
                diagnose_study(chosen, st, target, options, model_notes=notes)
                done += 1
                merged[key] = target
            except BindsError as e:
                failures.append((f"{name} (study {st.study_id})", str(e)))
                log.error("study %s: %s", st.study_id, e)
            except OSError as e:  # e.g. its outputs could not be written (a full disk): the others may be
                failures.append((f"{name} (study {st.study_id})", f"{e.filename or target}: {e.strerror or e}"))
                log.error("study %s: %s", st.study_id, failures[-1][1])
        progress(n, total, name)
    rows = []
    # this run's studies in input order, done now or before; not a failed one's earlier result (kept
    # in its folder)
    for key, target in merged.items():
        if is_finished(target) and (target / "results.csv").is_file():
            with open(target / "results.csv", newline="", encoding="utf-8") as f:
                rows += [{**r, "source": printable(written[key]), "output": target.name} for r in csv.DictReader(f)]
    atomic_write_text(out / "results.csv", results_csv(rows, batch=True))
    atomic_write_text(out / "failures.csv", _csv_text(["source", "error"],
                                                      [(printable(a), printable(b)) for a, b in failures]))
    sys.stdout.write(f"{done} diagnosed, {skipped} already done, {len(failures)} failed; results in {out}\n")
    return EXIT_PARTIAL if failures else 0


#: the longest folder name made from a study ID (file systems allow 255 bytes)
MAX_FOLDER_NAME = 100


def _safe_name(study_id: str) -> str:
    """A folder name for a study ID: letters, digits, ``._-``; a longer ID is cut and ends with
    a hash of the whole ID, so distinct IDs stay distinct."""
    import hashlib
    import re

    name = re.sub(r"[^A-Za-z0-9._-]+", "_", study_id).strip("._") or "study"
    if len(name) > MAX_FOLDER_NAME:
        digest = hashlib.sha256(study_id.encode("utf-8", "surrogatepass")).hexdigest()[:12]
        name = f"{name[:MAX_FOLDER_NAME - 13]}-{digest}"
    return name


def _csv_text(header: list[str], rows) -> str:
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()
