"""Throughput, FLOPs and peak memory of risk scoring: exams/s at a model's input size.

    taskset -c 0,1 python benchmarks/bench_risk.py --threads 2 --out bench-risk.json   # mirai preset
    python benchmarks/bench_risk.py --preset demo --n-exams 64 --batch-size 16
    python benchmarks/bench_risk.py --bundle binds-risk-demo --json
    python benchmarks/bench_risk.py --reference        # the unfused network, for before/after

Measurements:

* ``model``: :meth:`RiskModel.predict` (the scoring path: folded BatchNorm, fused ReLU/residual,
  channels_last, views chunked on the CPU) on random inputs already at the input size (4
  views per exam), batched, after one warm-up batch; the best of ``--repeat`` timings (the
  machine may be shared). Peak memory: GPU ``torch.cuda.max_memory_allocated``; CPU the
  process's peak resident set *after the model runs and before preprocessing* (it includes
  Python and torch themselves). ``--reference`` times the bundle's network as built
  (``RiskModel.network``: unfused, all views at once) instead.
* ``flops``: ``torch.utils.flop_counter`` on one exam: GFLOP per exam, and the achieved
  GFLOP/s as a fraction of a 2048 x 2048 float32 matmul measured in the same run, with the
  same threads (the machine's practical peak).
* ``preprocess``: :func:`BINDSLib.risk.preprocess.prepare_exam` on one synthetic exam of
  full-field size (``--source-size``, default 4096 x 3328 uint16 per view): seconds per exam on
  one CPU core (``binds cohort`` runs this in ``--workers`` processes in parallel).

Prints a table (or ``--json``) and writes the JSON object to ``--out`` when given. Weights are
random unless ``--bundle`` is given: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


#: Exams in the screening cohort of the Radiology study (issue #9: scored in under 15 minutes
#: on one H100).
COHORT_EXAMS = 158_807


def matmul_gflops(device, repeat: int = 5, n: int = 2048, dtype=None) -> float:
    """Best ``n x n`` matmul rate (GFLOP/s) on ``device`` with the current threads (float32
    unless ``dtype``)."""
    import torch

    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        for _ in range(5):
            a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, (time.perf_counter() - t0) / 5)
    return 2 * n**3 / best / 1e9


def flops_per_exam(forward, x, m) -> float:
    """Total FLOPs of ``forward(x[:1], m[:1])`` counted by ``torch.utils.flop_counter``."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from BINDSLib.fusedconv import flop_formulas, model_arithmetic

    # the model's own arithmetic, not the extra zero taps of the space-to-depth stem
    with torch.inference_mode(), model_arithmetic(), \
            FlopCounterMode(display=False, custom_mapping=flop_formulas()) as counter:
        forward(x[:1], m[:1])
    return float(counter.get_total_flops())


def main(argv=None) -> int:
    import numpy as np
    import torch

    from BINDSLib.risk.calibration import Calibrator
    from BINDSLib.risk.config import preset
    from BINDSLib.risk.inference import RiskModel, resolve_device
    from BINDSLib.risk.network import RiskNetwork
    from BINDSLib.risk.preprocess import prepare_exam
    from BINDSLib.study import Geometry, Image, Modality, Role, Study

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="mirai", help="model preset (tiny, demo, mirai; default mirai)")
    p.add_argument("--bundle", default=None, help="benchmark a risk bundle instead of a preset")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=None, help="exams per batch (default 1 on CPU, 8 on GPU)")
    p.add_argument("--n-exams", type=int, default=None, help="exams per timing (default 1 on CPU, 64 on GPU)")
    p.add_argument("--repeat", type=int, default=2, help="timings; the best is reported (default 2)")
    p.add_argument("--source-size", type=int, nargs=2, default=(4096, 3328), metavar=("ROWS", "COLS"))
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--reference", action="store_true",
                   help="time RiskModel.network as built (unfused), not the scoring path")
    p.add_argument("--no-flops", action="store_true", help="skip the FLOP count")
    p.add_argument("--no-preprocess", action="store_true", help="skip the preprocessing timing")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--out", default=None, help="also write the JSON object to this file")
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
    if args.reference:  # the unfused network, as RiskModel.predict ran it before fusion
        model.scoring_network = model.network
    cfg = model.config
    bs = args.batch_size or (8 if cuda else 1)
    n = args.n_exams or (64 if cuda else 1)
    h, w = cfg.input_size
    x = torch.rand(bs, 4, 1, h, w)
    m = torch.ones(bs, 4, dtype=torch.bool)
    if cuda:
        x = x.pin_memory()
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    model.predict(x, m)  # warm-up (cuDNN autotune, allocator)
    warmup_s = time.perf_counter() - t0
    if cuda:
        torch.cuda.synchronize(device)
    n_batches = max(1, -(-n // bs))
    model_s = float("inf")
    for _ in range(max(1, args.repeat)):
        t0 = time.perf_counter()
        for _ in range(n_batches):
            model.predict(x, m)  # includes host->device copy and calibration, as in scoring
        if cuda:
            torch.cuda.synchronize(device)
        model_s = min(model_s, time.perf_counter() - t0)
    exams = n_batches * bs
    result = {
        "device": torch.cuda.get_device_name(device) if cuda else f"cpu ({torch.get_num_threads()} threads)",
        "model": model.bundle_summary.get("name"),
        "path": "reference (unfused)" if args.reference else
                "scoring (fused)",
        "input_size": [h, w], "encoder": cfg.encoder, "batch_size": bs, "exams_timed": exams,
        "repeats": max(1, args.repeat),
        "model_s_per_exam": round(model_s / exams, 3),
        "model_exams_per_s": round(exams / model_s, 3),
        # the network alone, at this rate (binds cohort overlaps reading and preprocessing with it)
        "cohort_158807_exams_min": round(COHORT_EXAMS * model_s / exams / 60, 1),
        "warmup_s": round(warmup_s, 2),
        "peak_gpu_mib": round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if cuda else None,
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "torch": torch.__version__,
    }
    if not args.no_flops:
        gflop = flops_per_exam(model.scoring_network, x.to(device), m.to(device)) / 1e9
        peak = matmul_gflops(device)
        achieved = gflop * exams / model_s
        result.update({"gflop_per_exam": round(gflop, 1 if gflop >= 10 else 4),
                       "achieved_gflop_per_s": round(achieved, 2),
                       "matmul_2048_fp32_gflop_per_s": round(peak, 1),
                       "fraction_of_matmul_peak": round(achieved / peak, 3)})
        if cuda:  # the GPU runs the network in bf16 (autocast): its bf16 matmul is the roofline
            bf16 = matmul_gflops(device, n=8192, dtype=torch.bfloat16)
            result.update({"matmul_8192_bf16_gflop_per_s": round(bf16, 1),
                           "fraction_of_bf16_matmul_peak": round(achieved / bf16, 3)})

    if not args.no_preprocess:
        rng = np.random.default_rng(0)
        rows, cols = args.source_size
        images = [Image(rng.integers(0, 4096, size=(1, rows, cols), dtype=np.uint16),
                        Geometry((0.07, 0.07, 1.0)), Role(Modality.MG, laterality=lat, view=v))
                  for lat in "LR" for v in ("CC", "MLO")]
        study = Study("bench", images)
        torch.set_num_threads(1)
        t0 = time.perf_counter()
        prepare_exam(study, cfg)
        result["preprocess_s_per_exam_1_core"] = round(time.perf_counter() - t0, 3)
        result["source_size"] = [rows, cols]
        result["peak_rss_mib_with_preprocess"] = round(peak_rss_mib(), 1)

    text = json.dumps(result, indent=2) + "\n"
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    if args.json:
        sys.stdout.write(text)
    else:
        for k, v in result.items():
            sys.stdout.write(f"{k:32s} {v}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
