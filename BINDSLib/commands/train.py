"""``binds train CONFIG``: train a diagnosis model and write its bundle."""

from __future__ import annotations

import argparse

from . import device_name


def register(sub) -> None:
    p = sub.add_parser(
        "train", help="train a diagnosis model from a config file and write its bundle",
        description="Train the multimodal diagnosis network (per-modality phase, then multimodal "
                    "with modality dropout) on the data the config names (synthetic studies, a "
                    "BUSI/mini-MIAS layout, study folders or a manifest), calibrate it on the "
                    "validation split and write a MONAI-layout bundle. The run folder holds "
                    "config.json, metrics.csv, train.log and checkpoints/last.pt (--resume). "
                    "Multi-GPU/multi-node: start it with torchrun. See docs/MODEL.md.")
    p.add_argument("config", metavar="CONFIG", help="training config (.json; .yaml with PyYAML)")
    p.add_argument("--out", metavar="RUN_DIR", default=None,
                   help="run folder (default: out/train/<config name>)")
    p.add_argument("--bundle", metavar="DIR", default=None,
                   help="where to write the bundle (default: RUN_DIR/bundle)")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoints/last.pt")
    p.add_argument("--overwrite", action="store_true",
                   help="start again in an existing run folder / replace an existing --bundle")
    p.add_argument("--device", default="auto", type=device_name, help="auto (CUDA when present), cpu, cuda, cuda:N")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import shlex
    import sys
    from pathlib import Path

    from ..model.train import load_settings, train

    settings = load_settings(args.config)
    run_dir = Path(args.out) if args.out else Path("out") / "train" / Path(args.config).stem
    args.out = str(run_dir)  # where the outputs are, for the command's error messages (cli)
    device = None if args.device == "auto" else args.device
    argv = sys.argv[1:]
    reproduce = ("binds " + " ".join(shlex.quote(a) for a in argv[argv.index("train"):])
                 if "train" in argv else f"binds train {shlex.quote(args.config)}")
    result = train(settings, run_dir, resume=args.resume, device=device, bundle_path=args.bundle,
                   overwrite=args.overwrite, reproduce=reproduce)
    if result:  # rank 0
        auc = result.get("validation_auc")
        sys.stdout.write(f"bundle written to {result['bundle']} (validation AUC "
                         f"{'n/a' if auc is None else f'{auc:.3f}'}); run folder {run_dir}\n")
    return 0
