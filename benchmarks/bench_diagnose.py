"""Latency, FLOPs and peak memory of ``binds diagnose`` on one synthetic study.

    python benchmarks/bench_diagnose.py                        # demo preset, auto device
    python benchmarks/bench_diagnose.py --preset paper         # ResNet-18 encoders, 6-layer fusion,
                                                               # 224^2 US/MG crops, 96^3 MRI
    python benchmarks/bench_diagnose.py --bundle binds-diagnosis-demo --json out.json

What it measures, in one process:

* latency of the whole two-stage diagnosis with saliency (``--stage 2``: stage 1 then stage 2)
  as ``binds diagnose`` runs it — read the study folder, preprocess, encoders, fusion, saliency,
  mapping back to the image grids, writing the outputs — median of ``--repeats`` runs after a
  warm-up, split by part;
* FLOPs of each stage's forward pass (``torch.utils.flop_counter``), and the machine's peak
  measured in the same run (a 2048x2048 fp32 matmul and a 3x3 convolution), so that the
  achieved rate can be read as a fraction of what the machine does;
* peak memory: the process's peak resident set on CPU (Python and torch included), or
  ``torch.cuda.max_memory_allocated`` on a GPU.

Weights are random unless ``--bundle`` is given: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def machine_peak_gflops(device) -> dict:
    """GFLOP/s of a 2048^2 fp32 matmul and of a 3x3 convolution (64->64 channels, 8x112x112)."""
    import torch

    def rate(fn, flops, n=5):
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(n):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return flops * n / (time.perf_counter() - t) / 1e9

    a = torch.randn(2048, 2048, device=device)
    b = torch.randn(2048, 2048, device=device)
    x = torch.randn(8, 64, 112, 112, device=device)
    conv = torch.nn.Conv2d(64, 64, 3, padding=1, bias=False).to(device)
    with torch.inference_mode():
        mm = rate(lambda: a @ b, 2 * 2048**3)
        cv = rate(lambda: conv(x), 2 * 8 * 64 * 64 * 9 * 112 * 112)
    return {"matmul_fp32_gflops": round(mm, 1), "conv3x3_fp32_gflops": round(cv, 1)}


def forward_flops(model, study, modalities) -> float:
    """FLOPs of encoders + fusion for ``modalities`` (one forward pass, no saliency)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from BINDSLib.model.data import collate, inputs_item
    from BINDSLib.model.preprocess import prepare_study

    prepared = prepare_study(study, model.config, modalities=modalities)
    batch = {k: v.to(model.device) for k, v in collate([inputs_item(prepared)]).items()}
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        enc = model.network.encode(batch)
        model.network.fuse(enc, batch)
    return float(counter.get_total_flops())


def main(argv=None) -> int:
    import torch

    from BINDSLib.diagnose import DiagnoseOptions, diagnose_study, resolve_device
    from BINDSLib.model.config import preset
    from BINDSLib.model.inference import DiagnosisModel
    from BINDSLib.model.network import DiagnosisNetwork
    from BINDSLib.studyfolder import read_study_folder, write_study_folder
    from BINDSLib.synthetic import make_study

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="demo", choices=("demo", "paper"))
    p.add_argument("--bundle", default=None, help="benchmark a bundle instead of a preset")
    p.add_argument("--device", default="auto")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the figures as JSON")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    if args.bundle:
        model = DiagnosisModel.from_bundle(args.bundle, device=device)
        label = args.bundle
    else:
        model = DiagnosisModel(DiagnosisNetwork(preset(args.preset)), {}, device,
                               {"name": f"random-{args.preset}", "version": "0"})
        label = f"{args.preset} preset (random weights)"
    size = "full" if args.preset == "paper" else "demo"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = write_study_folder(make_study(5, diagnosis="malignant", size=size), tmp / "study")
        study = read_study_folder(folder)
        flops = {"stage1": forward_flops(model, study, ("MG", "US")),
                 "stage2": forward_flops(model, study, ("MG", "US", "MR"))}
        peak = machine_peak_gflops(torch.device(device))
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        runs = []
        for r in range(args.repeats + 1):  # the first is a warm-up
            t0 = time.perf_counter()
            st = read_study_folder(folder)
            t_read = time.perf_counter() - t0
            out = tmp / f"out{r}"
            diagnose_study(model, st, out, DiagnoseOptions(stage="2", device=device))
            total = time.perf_counter() - t0
            t = json.loads((out / "timings.json").read_text())
            parts = {"read": t_read}
            for stage in ("stage1", "stage2"):
                for part in ("preprocess", "encoders", "fusion", "saliency", "mapping"):
                    parts[f"{stage}_{part}"] = t.get(f"{stage}_{part}", 0.0)
            parts["write"] = t["write_s"]
            parts["total"] = total
            if r:
                runs.append(parts)
        median = {k: statistics.median(run[k] for run in runs) for k in runs[0]}
    mem = (torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else peak_rss_mib())
    fwd_s = sum(median[f"{s}_{p}"] for s in ("stage1", "stage2") for p in ("encoders", "fusion"))
    result = {
        "model": label, "device": device if device == "cpu" else torch.cuda.get_device_name(),
        "threads": torch.get_num_threads(), "repeats": args.repeats,
        "latency_s": {k: round(v, 4) for k, v in median.items()},
        "gflop": {k: round(v / 1e9, 2) for k, v in flops.items()},
        "achieved_forward_gflops": round((flops["stage1"] + flops["stage2"]) / 1e9 / max(fwd_s, 1e-9), 1),
        "machine_peak": peak,
        "peak_memory_mib": round(mem, 1),
        "peak_memory_kind": "cuda max allocated" if device.startswith("cuda") else "process peak RSS",
    }
    result["forward_fraction_of_matmul_peak"] = round(result["achieved_forward_gflops"] / peak["matmul_fp32_gflops"], 3)
    w = sys.stdout.write
    w(f"binds diagnose benchmark: {result['model']} on {result['device']} ({result['threads']} threads), "
      f"median of {args.repeats}\n")
    w(f"{'part':<22}{'seconds':>10}\n")
    for k, v in result["latency_s"].items():
        w(f"{k:<22}{v:>10.3f}\n")
    w(f"forward GFLOP: stage 1 {result['gflop']['stage1']}, stage 2 {result['gflop']['stage2']}; "
      f"achieved {result['achieved_forward_gflops']} GFLOP/s = {result['forward_fraction_of_matmul_peak']:.0%} of the "
      f"matmul peak ({peak['matmul_fp32_gflops']} GFLOP/s; conv {peak['conv3x3_fp32_gflops']} GFLOP/s)\n")
    w(f"peak memory: {result['peak_memory_mib']} MiB ({result['peak_memory_kind']})\n")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
