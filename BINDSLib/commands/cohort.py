"""``binds cohort``: score a whole screening cohort from a manifest (resumable, sharded)."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from . import device_name, non_negative_number


def register(sub) -> None:
    p = sub.add_parser(
        "cohort", help="score a screening cohort from a manifest CSV (batched, resumable, multi-GPU)",
        description="Score every exam of MANIFEST.csv (columns exam_id, path[, woman_id, exam_date]; "
                    "path = study folder or DICOM folder, relative to the manifest) with a risk "
                    "bundle. Exams are loaded in worker processes and scored in batches, on the GPU "
                    "when present. Re-running the same command resumes: exams already scored are "
                    "skipped. Under torchrun each rank scores its share and rank 0 merges. Failed "
                    "exams are listed in failures.csv (exit code 6), not fatal.",
        epilog="example: torchrun --nproc-per-node 8 -m BINDSLib cohort manifest.csv --out scores/")
    p.add_argument("manifest", metavar="MANIFEST.csv", help="cohort manifest (see description)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created; resumed if it "
                                                               "holds a run of the same model)")
    p.add_argument("--model", default="binds-risk-demo", metavar="BUNDLE",
                   help="risk bundle name or path (default: binds-risk-demo)")
    p.add_argument("--batch-size", type=int, default=8, metavar="N", help="exams per batch (default 8)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="loader worker processes (default: min(8, CPU cores); 0 loads in-process)")
    p.add_argument("--device", default="auto", type=device_name,
                   help="auto (cuda:LOCAL_RANK when present, else CPU), cpu, cuda, cuda:N")
    p.add_argument("--format", choices=("csv", "parquet"), default="csv",
                   help="merged output format (parquet needs pyarrow)")
    p.add_argument("--keep-identifiers", action="store_true",
                   help="keep exam and woman IDs (default: pseudonyms)")
    p.add_argument("--merge-only", action="store_true",
                   help="only merge the part files of earlier runs into the output table")
    p.add_argument("--progress-every", type=non_negative_number, default=10.0, metavar="S",
                   help="seconds between progress log lines (default 10)")
    p.add_argument("--overwrite", action="store_true",
                   help="discard earlier results in --out and start again")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import datetime
    import logging
    from pathlib import Path

    from ..errors import EXIT_PARTIAL, UsageError
    from ..fsutil import check_not_input, json_dumps, make_output_folder, output_lock
    from ..risk.cohort import (PARTS, check_cohort_folder, check_resumed_sources, dist_env, merge_results,
                               prepare_output, read_manifest, run_settings, score_cohort, scored_ids)
    from ..risk.inference import RiskModel

    log = logging.getLogger("binds.cohort")
    if not args.quiet:  # progress lines (exams/s, ETA) are shown unless --quiet
        logging.getLogger("BINDSLib.risk.cohort").setLevel(logging.INFO)
    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    if args.format == "parquet":  # before the scoring, not after it
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise UsageError("--format parquet needs pyarrow (pip install pyarrow), or use --format csv") from None
    rows = read_manifest(args.manifest)
    out = Path(args.out)
    # before any folder is made, locked or emptied: never an input, nor a folder of other files
    check_not_input(out, [args.manifest, *(r.path for r in rows)])
    check_cohort_folder(out)
    if args.merge_only and (args.overwrite or not any((out / PARTS).glob("scores-rank*.csv"))):
        from ..errors import InputError  # before any folder is made

        raise InputError("--merge-only: no earlier scoring run to merge here (no parts/scores-rank*.csv)"
                         if not args.overwrite else "--merge-only with --overwrite would discard what it merges",
                         out)
    rank, world, local_rank = dist_env()
    workers = args.workers if args.workers is not None else min(8, os.cpu_count() or 1)
    if workers < 0:
        raise UsageError("--workers must be 0 or more")

    device = args.device
    if device == "auto":
        import torch

        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    model = RiskModel.from_bundle(args.model, device=device)
    years = list(model.config.years)
    settings = run_settings(model, args.keep_identifiers)

    group = None
    if world > 1:
        import torch.distributed as dist

        dist.init_process_group(backend="gloo", timeout=datetime.timedelta(days=7))
        group = dist
    locked = contextlib.ExitStack()
    try:
        if rank == 0:
            make_output_folder(out)
            locked.enter_context(output_lock(out, "binds cohort"))  # (another run's --overwrite would empty it)
            prepare_output(out, settings, overwrite=args.overwrite)
        if group:
            group.barrier()
        if rank != 0:
            prepare_output(out, settings, overwrite=False)
        summary = None
        if args.merge_only:  # as a scoring run checks it: stale scores are not merged
            check_resumed_sources(rows, scored_ids(out), out, args.keep_identifiers)
        else:
            summary = score_cohort(rows, out, model, rank=rank, world_size=world,
                                   batch_size=args.batch_size, num_workers=workers,
                                   keep_identifiers=args.keep_identifiers,
                                   progress_every_s=args.progress_every)
        if group:
            group.barrier()
        if rank != 0:
            return EXIT_PARTIAL if summary and summary.n_failed else 0
        extra = {"model": settings["model"], "world_size": world, "n_manifest": len(rows)}
        if summary is not None:
            extra["last_run_rank0"] = summary.to_json()
        merged = merge_results(out, years, fmt=args.format, extra_summary=extra, manifest=rows,
                               keep_identifiers=args.keep_identifiers)
    finally:
        locked.close()
        if group:
            group.destroy_process_group()

    w = sys.stdout.write
    if summary is not None:
        w(f"rank 0: scored {summary.n_scored} exam(s) now ({summary.exams_per_s:.2f} exams/s), "
          f"{summary.n_already_scored} already scored, {summary.n_failed} failed\n")
    missing = len(rows) - merged["n_scored"]
    w(f"{out / merged['output']}: {merged['n_scored']}/{len(rows)} exams scored, "
      f"{merged['n_failed']} failed (see {out / 'failures.csv'})\n")
    log.debug("summary: %s", json_dumps(merged))
    if missing:
        return EXIT_PARTIAL
    return 0
