"""``binds phantom``: synthetic teaching cases (multimodal studies or longitudinal exams)."""

from __future__ import annotations

import argparse
import sys


def register(sub) -> None:
    p = sub.add_parser(
        "phantom", help="write synthetic teaching cases (study folders, optionally DICOM)",
        description="Generate synthetic breast studies deterministically from a seed: 4-view "
                    "mammography, ultrasound and DCE/T2/DWI/ADC MRI with one lesion (or none) "
                    "whose appearance follows its pathology; or, with --longitudinal, women's "
                    "annual screening mammograms with an outcome. All are marked synthetic.")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (must not exist)")
    p.add_argument("--cases", type=int, default=1, metavar="N",
                   help="number of studies (or women with --longitudinal); default 1")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default 0)")
    p.add_argument("--longitudinal", action="store_true",
                   help="annual screening mammograms of N women with outcomes")
    p.add_argument("--dicom", action="store_true", help="also write each study as real DICOM")
    p.add_argument("--size", choices=("demo", "full"), default="demo",
                   help="image sizes: demo (small, fast) or full (realistic resolution)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import UsageError
    from ..fsutil import atomic_dir
    from ..synthetic import write_phantoms

    if args.cases < 1:
        raise UsageError("--cases must be at least 1")
    # built whole and renamed into place: an --overwrite leaves no case of an earlier run, and
    # replaces only a folder of phantoms
    signs = ("case-[0-9][0-9][0-9][0-9]/study.json", "woman-[0-9][0-9][0-9][0-9]/history.json")
    with atomic_dir(args.out, overwrite=args.overwrite, signs=signs) as tmp:
        paths = write_phantoms(tmp, cases=args.cases, seed=args.seed, longitudinal=args.longitudinal,
                               size=args.size, overwrite=True, dicom=args.dicom)
    kind = "women" if args.longitudinal else "studies"
    sys.stdout.write(f"wrote {len(paths)} synthetic {kind} to {args.out}\n")
    return 0
