"""Throughput and peak memory of risk scoring: exams/s at a model's input size.

    python benchmarks/bench_risk.py                       # mirai preset (2048 x 1664), auto device
    python benchmarks/bench_risk.py --preset demo --n-exams 64 --batch-size 16
    python benchmarks/bench_risk.py --bundle binds-risk-demo --json

Two measurements:

* ``model``: the network alone on random inputs already at the input size (4 views per exam),
  batched, after warm-up: exams/s and peak memory (GPU: ``torch.cuda.max_memory_allocated``;
  CPU: the process's peak resident set, which includes Python and torch themselves).
  On CUDA the model runs in bf16 autocast with channels_last, as ``binds cohort`` does.
* ``preprocess``: :func:`BINDSLib.risk.preprocess.prepare_exam` on one synthetic exam of
  full-field size (``--source-size``, default 4096 x 3328 uint16 per view): seconds per exam on
  one CPU core (``binds cohort`` runs this in ``--workers`` processes in parallel).

Weights are random unless ``--bundle`` is given: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def main(argv=None) -> int:
    import numpy as np
    import torch

    from BINDSLib.risk.config import preset
    from BINDSLib.risk.inference import RiskModel, resolve_device
    from BINDSLib.risk.calibration import Calibrator
    from BINDSLib.risk.network import RiskNetwork
    from BINDSLib.risk.preprocess import prepare_exam
    from BINDSLib.study import Geometry, Image, Modality, Role, Study

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="mirai", help="model preset (tiny, demo, mirai; default mirai)")
    p.add_argument("--bundle", default=None, help="benchmark a risk bundle instead of a preset")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=None, help="exams per batch (default 1 on CPU, 8 on GPU)")
    p.add_argument("--n-exams", type=int, default=None, help="exams timed (default 2 on CPU, 64 on GPU)")
    p.add_argument("--source-size", type=int, nargs=2, default=(4096, 3328), metavar=("ROWS", "COLS"))
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    if args.bundle:
        model = RiskModel.from_bundle(args.bundle, device=str(device))
    else:
        torch.manual_seed(0)
        model = RiskModel(RiskNetwork(preset(args.preset)), Calibrator("none"),
                          bundle_summary={"name": f"preset:{args.preset}"}, device=str(device))
    cfg = model.config
    bs = args.batch_size or (8 if cuda else 1)
    n = args.n_exams or (64 if cuda else 2)
    h, w = cfg.input_size
    x = torch.rand(bs, 4, 1, h, w)
    m = torch.ones(bs, 4, dtype=torch.bool)
    if cuda:
        x = x.pin_memory()
        torch.cuda.reset_peak_memory_stats(device)
    model.predict(x, m)  # warm-up (cuDNN autotune, allocator)
    if cuda:
        torch.cuda.synchronize(device)
    n_batches = max(1, -(-n // bs))
    t0 = time.perf_counter()
    for _ in range(n_batches):
        model.predict(x, m)  # includes host->device copy and calibration, as in scoring
    if cuda:
        torch.cuda.synchronize(device)
    model_s = time.perf_counter() - t0
    result = {
        "device": torch.cuda.get_device_name(device) if cuda else f"cpu ({torch.get_num_threads()} threads)",
        "model": model.bundle_summary.get("name"),
        "input_size": [h, w], "encoder": cfg.encoder, "batch_size": bs, "exams_timed": n_batches * bs,
        "model_exams_per_s": round(n_batches * bs / model_s, 3),
        "peak_gpu_mib": round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if cuda else None,
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "torch": torch.__version__,
    }

    rng = np.random.default_rng(0)
    rows, cols = args.source_size
    images = [Image(rng.integers(0, 4096, size=(1, rows, cols), dtype=np.uint16), Geometry((0.07, 0.07, 1.0)),
                    Role(Modality.MG, laterality=lat, view=v)) for lat in "LR" for v in ("CC", "MLO")]
    study = Study("bench", images)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    prepare_exam(study, cfg)
    result["preprocess_s_per_exam_1_core"] = round(time.perf_counter() - t0, 3)
    result["source_size"] = [rows, cols]
    result["peak_rss_mib"] = round(peak_rss_mib(), 1)

    if args.json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    else:
        for k, v in result.items():
            sys.stdout.write(f"{k:32s} {v}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
