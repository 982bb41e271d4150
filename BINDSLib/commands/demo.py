"""``binds demo``: a synthetic study through the whole pipeline with the shipped demo bundle."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import device_name


def register(sub) -> None:
    p = sub.add_parser(
        "demo", help="run the whole pipeline on a synthetic study (the quick start)",
        description="Generate a synthetic multimodal study (4-view mammography, ultrasound, "
                    "DCE/T2/DWI/ADC MRI; marked synthetic), write it as a study folder, run the "
                    "two-stage diagnosis with the shipped demo bundle and write every output.")
    p.add_argument("--out", default="binds-demo", metavar="DIR", help="output folder (default binds-demo)")
    p.add_argument("--seed", type=int, default=7, help="seed of the synthetic case (default 7)")
    p.add_argument("--diagnosis", choices=("benign", "malignant"), default="malignant",
                   help="the synthetic lesion's truth (default malignant)")
    p.add_argument("--model", default="binds-diagnosis-demo", metavar="BUNDLE", help="model bundle")
    p.add_argument("--device", default="auto", type=device_name, help="auto, cpu or cuda")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..diagnose import DiagnoseOptions, diagnose_study, resolve_device
    from ..bundle import find_bundle
    from ..errors import OutputError, UsageError
    from ..fsutil import LOCK_NAME, atomic_dir, check_output_dir
    from ..model.inference import DiagnosisModel
    from ..studyfolder import read_study_folder, write_study_folder
    from ..synthetic import make_study

    t0 = time.perf_counter()
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise OutputError("exists; use --overwrite to replace it or --out for another folder", out)
    # everything that can fail before anything is written
    signs = ("study/study.json", "output/report.json")
    check_output_dir(out, args.overwrite, [find_bundle(args.model)], signs)
    other = sorted(p.name for p in out.iterdir() if p.name not in ("study", "output", LOCK_NAME)) \
        if out.is_dir() else []
    if other:  # the demo replaces its folder whole: never the user's files beside it
        raise OutputError(f"holds other files than a demo's ({', '.join(other[:3])}{', ...' if len(other) > 3 else ''}): "
                          "move them, or choose another --out", out)
    options = DiagnoseOptions(stage="2", device=resolve_device(args.device), overwrite=True)
    model = DiagnosisModel.from_bundle(args.model, device=options.device)
    if "MR" not in model.modalities:
        raise UsageError(f"the demo runs both stages, with MRI: {args.model} reads {'+'.join(model.modalities)} "
                         "only; use binds diagnose for it")
    study = make_study(args.seed, diagnosis=args.diagnosis)
    # the study and its outputs appear together, whole (an interrupted demo leaves the old one)
    with atomic_dir(out, overwrite=args.overwrite, inputs=[find_bundle(args.model)], signs=signs) as tmp:
        written = write_study_folder(study, tmp / "study")
        # exactly what `binds diagnose` reads from it (Slicer runs that)
        study = read_study_folder(written, reference_masks=False)
        report = diagnose_study(model, study, tmp / "output", options)
    study_dir = out / "study"
    stages = ", ".join(f"stage {s.stage} ({'+'.join(s.modalities)}) {s.malignancy_probability:.3f}"
                       for s in report.stages)
    truth = study.pathology.subtype.value if study.pathology and study.pathology.subtype else args.diagnosis
    w = sys.stdout.write
    w(f"BINDS demo on a synthetic {args.diagnosis} case (truth: {truth}), {time.perf_counter() - t0:.1f} s\n")
    w(f"  malignancy probability: {stages}\n")
    w(f"  recommendation: {report.recommendation_detail}\n")
    if report.subtype:
        w(f"  most likely subtype if malignant: {report.subtype} "
          f"({report.subtype_probabilities[report.subtype]:.2f})\n")
    w(f"  study folder:   {study_dir}\n")
    w(f"  outputs:        {out / 'output'}\n")
    w("    summary.png   images with lesion outlines and saliency - look here first\n")
    w("    report.json   probabilities per stage, subtype, modality contributions, model hash\n")
    w("    *.seg.nrrd    lesion and salient-region segments (load in 3D Slicer over images/*.nrrd)\n")
    w("    *_saliency.nrrd continuous saliency maps\n")
    return 0
