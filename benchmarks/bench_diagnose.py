"""Latency, FLOPs and peak memory of ``binds diagnose`` on one synthetic study.

    python benchmarks/bench_diagnose.py                        # demo preset, auto device
    python benchmarks/bench_diagnose.py --preset paper         # ResNet-18 encoders, 6-layer fusion,
                                                               # 224^2 US/MG crops, 96^3 MRI
    python benchmarks/bench_diagnose.py --bundle binds-diagnosis-demo --json out.json
    python benchmarks/bench_diagnose.py --preset paper --baseline 09beade   # before/after, A/B

What it measures:

* latency of the whole two-stage diagnosis with saliency (``stage="2"``: stage 1 then stage 2)
  as ``binds diagnose`` runs it -- read the study folder, preprocess, encoders, fusion, saliency,
  mapping back to the image grids, writing the outputs -- median of ``--repeats`` runs after a
  warm-up, split by part; and the total of a stage-1-only diagnosis (``stage="1"``);
* FLOPs of everything torch runs in the two-stage diagnosis (``torch.utils.flop_counter``),
  the forward FLOPs of each stage as a plain encode + fuse, and the machine's peak measured in
  the same run (a 2048x2048 fp32 matmul and a 3x3 convolution), so that the achieved rate can
  be read as a fraction of what the machine does;
* peak memory: in a fresh process per version, what one ``binds diagnose`` needs (model
  loading, and the diagnosis with weights, libraries and study resident); in the benchmark
  process, the peak of each run above the resident set before it; on a GPU also
  ``torch.cuda.max_memory_allocated``.

``--baseline REV`` (a git revision, or a folder holding a ``BINDSLib`` copy) loads that
version's package as ``BINDSLib_baseline`` and runs it interleaved with the working tree's in
the same process (alternating order, same weights), so that a loaded machine affects both
alike; it also reports how far apart their results are: the largest probability and saliency
differences and the segmentation voxels that differ.

Weights are random unless ``--bundle`` is given: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import functools
import inspect
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
    """GFLOP/s of a 2048^2 fp32 matmul and of a 3x3 convolution (64->64 channels, 8x112x112);
    on a GPU also of an 8192^2 bf16 matmul."""
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
        out = {"matmul_fp32_gflops": round(mm, 1), "conv3x3_fp32_gflops": round(cv, 1)}
        if device.type == "cuda":  # the GPU path runs under bf16 autocast: its roofline
            a16 = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
            b16 = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
            out["matmul_bf16_gflops"] = round(rate(lambda: a16 @ b16, 2 * 8192**3), 1)
    return out


def forward_flops(model, study, modalities) -> float:
    """FLOPs of encoders + fusion for ``modalities`` (one forward pass, no saliency)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from BINDSLib.fusedconv import flop_formulas, model_arithmetic
    from BINDSLib.model.data import collate, inputs_item
    from BINDSLib.model.preprocess import prepare_study

    prepared = prepare_study(study, model.config, modalities=modalities)
    batch = {k: v.to(model.device) for k, v in collate([inputs_item(prepared)]).items()}
    counter = FlopCounterMode(display=False, custom_mapping=flop_formulas())
    with torch.inference_mode(), model_arithmetic(), counter:
        enc = model.network.encode(batch)
        model.network.fuse(enc, batch)
    return float(counter.get_total_flops())


def _proc_status_mib(key: str) -> float:
    """``VmRSS`` / ``VmHWM`` of this process in MiB (Linux), NaN elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def reset_peak_rss() -> bool:
    """Reset the process's peak resident set (``VmHWM``, Linux >= 4.0); False where impossible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def load_baseline(spec: str, dest: Path):
    """The ``BINDSLib`` package of a git revision (or of a folder holding a ``BINDSLib`` copy)
    importable as ``BINDSLib_baseline`` beside the working tree's, for A/B runs in one
    process (its modules import each other relatively)."""
    import importlib
    import io
    import shutil
    import subprocess
    import tarfile

    target = dest / "BINDSLib_baseline"
    src = Path(spec)
    if src.is_dir():
        src = src if (src / "__init__.py").is_file() else src / "BINDSLib"
        shutil.copytree(src, target, ignore=shutil.ignore_patterns("__pycache__"))
    else:
        root = Path(__file__).resolve().parents[1]
        tar = subprocess.run(["git", "-C", str(root), "archive", spec, "BINDSLib"], check=True,
                             capture_output=True).stdout
        with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
            tf.extractall(dest / "git", filter="data")
        shutil.move(str(dest / "git" / "BINDSLib"), target)
    sys.path.insert(0, str(dest))
    return importlib.import_module("BINDSLib_baseline")


class Variant:
    """One BINDS version under test: its package, model and entry points."""

    def __init__(self, name: str, pkg: str, model):
        import importlib

        self.name, self.model, self.pkg = name, model, pkg
        diagnose = importlib.import_module(f"{pkg}.diagnose")
        self.diagnose_study, self.options = diagnose.diagnose_study, diagnose.DiagnoseOptions
        self.run_stages = diagnose.run_stages
        read = importlib.import_module(f"{pkg}.studyfolder").read_study_folder
        # as `binds diagnose` reads a study folder (versions before it read the reference masks)
        self.read = (functools.partial(read, reference_masks=False)
                     if "reference_masks" in inspect.signature(read).parameters else read)


def make_variant(name: str, pkg: str, args, device: str, reference=None) -> tuple[Variant, dict]:
    """The model of ``pkg``: the bundle, or the preset with random weights (seed 0, or the
    weights ``reference`` gives: a state dict or a bundle path). Returns the variant and what
    the next variant takes as its ``reference``. A preset network is prepared as
    ``DiagnosisModel.from_bundle`` prepares a bundle's (BatchNorm folded where supported)."""
    import importlib

    import torch

    inference = importlib.import_module(f"{pkg}.model.inference")
    if args.bundle:
        model = inference.DiagnosisModel.from_bundle(str(reference or args.bundle), device=device)
        return Variant(name, pkg, model), model.bundle.path
    config = importlib.import_module(f"{pkg}.model.config")
    torch.manual_seed(0)
    network = importlib.import_module(f"{pkg}.model.network").DiagnosisNetwork(config.preset(args.preset))
    if reference is not None:
        network.load_state_dict(reference)
    # a copy from before folding (folding scales the convolution weights in place; another
    # version may not fold)
    state = {k: v.clone() for k, v in network.state_dict().items()}
    if hasattr(network, "fold_batch_norm"):
        network.fold_batch_norm()
    model = inference.DiagnosisModel(network, {}, device, {"name": f"random-{args.preset}", "version": "0"})
    return Variant(name, pkg, model), state


def preset_bundle(state: dict, config, path: Path) -> Path:
    """A preset's random weights (``state``, unfolded) written as a diagnosis bundle."""
    from BINDSLib.bundle import save_bundle

    return save_bundle(path, state, {"kind": "diagnosis", "model_config": config.to_json()},
                       name="random-preset", version="0", description="random weights (benchmark)",
                       task="benchmark")


def run_flops(v: Variant, folder: Path, stage: str) -> float:
    """FLOPs of everything ``torch`` runs in one diagnosis (``run_stages``: stage 1, then
    stage 2 with ``stage="2"``; leave-one-modality-out fusions and saliency included)."""
    import contextlib
    import importlib

    from torch.utils.flop_counter import FlopCounterMode

    from BINDSLib.fusedconv import flop_formulas

    study = v.read(folder)
    counter = FlopCounterMode(display=False, custom_mapping=flop_formulas())
    # the model's own arithmetic, not the extra zero taps of a space-to-depth stem (versions
    # before it have no such rewrite)
    own = getattr(importlib.import_module(f"{v.pkg}.fusedconv"), "model_arithmetic", contextlib.nullcontext)
    with own(), counter:
        v.run_stages(v.model, study, stage, tuple(v.model.uncertainty_band), {})
    return float(counter.get_total_flops())


PARTS = ("preprocess", "encoders", "fusion", "saliency", "mapping")


def timed_run(v: Variant, folder: Path, out: Path, device: str, stage: str = "2") -> dict:
    """One ``binds diagnose`` of the study folder: seconds by part, peak memory, results."""
    import torch

    reset = reset_peak_rss()
    rss0 = _proc_status_mib("VmRSS")
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    st = v.read(folder)
    t_read = time.perf_counter() - t0
    v.diagnose_study(v.model, st, out, v.options(stage=stage, device=device))
    total = time.perf_counter() - t0
    t = json.loads((out / "timings.json").read_text())
    parts = {"read": t_read}
    for s in ("stage1", "stage2"):
        for part in PARTS:
            parts[f"{s}_{part}"] = t.get(f"{s}_{part}", 0.0)
    parts["write"] = t["write_s"]
    parts["total"] = total
    report = json.loads((out / "report.json").read_text())
    mem = {"peak_rss_mib": _proc_status_mib("VmHWM") if reset else peak_rss_mib(),
           "working_mib": (_proc_status_mib("VmHWM") - rss0) if reset else float("nan")}
    if device.startswith("cuda"):
        mem["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return {"parts": parts, "memory": mem,
            "probabilities": [s["malignancy_probability"] for s in report["stages"]]}


def _file_pairs(a: Path, b: Path, pattern: str):
    """The arrays of the files matching ``pattern`` in output folder ``a`` and of the same
    names in ``b``, pair by pair."""
    import SimpleITK as sitk

    for p in sorted(a.glob(pattern)):
        yield (sitk.GetArrayFromImage(sitk.ReadImage(str(p))),
               sitk.GetArrayFromImage(sitk.ReadImage(str(b / p.name))))


def _segmentation_difference(a: Path, b: Path) -> tuple[int, int]:
    """Voxels that differ between the ``.seg.nrrd`` files (lesion and salient-region masks)
    of two output folders, and voxels compared."""
    pairs = list(_file_pairs(a, b, "*.seg.nrrd"))
    return sum(int((x != y).sum()) for x, y in pairs), sum(x.size for x, _ in pairs)


def _saliency_difference(a: Path, b: Path) -> float:
    """Largest absolute difference between the saliency maps of two output folders."""
    import numpy as np

    return max((float(np.abs(x.astype(np.float64) - y).max())
                for x, y in _file_pairs(a, b, "*_saliency.nrrd")), default=0.0)


def memory_child(spec: dict) -> dict:
    """In a fresh process, what ``binds diagnose`` does once: read the study folder, load the
    model, diagnose (two stages, saliency, outputs). Returns the process's peak resident set
    (reading and model loading included) and the peak while diagnosing (``VmHWM`` reset after
    loading)."""
    import importlib

    import torch

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    if spec["path"]:
        sys.path.insert(0, spec["path"])
    pkg = spec["pkg"]
    try:  # the process settings `binds diagnose` makes at start, in versions that have them
        importlib.import_module(f"{pkg}.memory").configure_malloc()
    except ImportError:
        pass
    inference = importlib.import_module(f"{pkg}.model.inference")
    v = Variant("child", pkg, None)

    def load():
        return inference.DiagnosisModel.from_bundle(spec["bundle"], device=spec["device"])

    # `binds diagnose --model NAME` loads the bundle first; `--model auto` (the default) reads
    # the study first
    model = load() if spec.get("order") == "model-first" else None
    t_read = time.perf_counter()
    study = v.read(Path(spec["folder"]))
    t_read = time.perf_counter() - t_read
    model = v.model = model or load()
    loaded = _proc_status_mib("VmRSS")
    # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across fork + exec (the parent's size)
    loading_peak = _proc_status_mib("VmHWM")
    reset = reset_peak_rss()
    t0 = time.perf_counter()
    v.diagnose_study(model, study, Path(spec["out"]), v.options(stage="2", device=spec["device"]))
    diagnosis_peak = _proc_status_mib("VmHWM")
    return {"process_peak_rss_mib": round(max(loading_peak, diagnosis_peak) if reset else diagnosis_peak, 1),
            "diagnosis_peak_rss_mib": round(diagnosis_peak, 1) if reset else None,
            "rss_after_loading_mib": round(loaded, 1), "cold_total_s": round(t_read + time.perf_counter() - t0, 3)}


def main(argv=None) -> int:
    import torch

    if argv is None and len(sys.argv) == 3 and sys.argv[1] == "--memory-child":
        print(json.dumps(memory_child(json.loads(sys.argv[2]))))
        return 0

    from BINDSLib.diagnose import resolve_device
    from BINDSLib.memory import configure_malloc
    from BINDSLib.studyfolder import write_study_folder
    from BINDSLib.synthetic import make_study

    configure_malloc()  # as `binds diagnose` does at start (BINDSLib/memory.py)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="demo", choices=("demo", "paper"))
    p.add_argument("--bundle", default=None, help="benchmark a bundle instead of a preset")
    p.add_argument("--device", default="auto")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--baseline", default=None, metavar="REV|DIR",
                   help="also run the BINDSLib of this git revision (or folder), interleaved with "
                        "the working tree's in the same process, and compare")
    p.add_argument("--memory-order", default="read-first", choices=("read-first", "model-first"),
                   help="in the fresh process: read the study, then load the model (`binds diagnose` "
                        "with the default --model auto; the default here), or the other way round "
                        "(with a named --model)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the figures as JSON")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        current, reference = make_variant("current", "BINDSLib", args, device)
        variants = [current]
        if args.baseline:
            load_baseline(args.baseline, tmp / "pkg")
            variants.insert(0, make_variant(f"baseline ({args.baseline})", "BINDSLib_baseline", args,
                                            device, reference)[0])
        label = args.bundle or f"{args.preset} preset (random weights)"
        size = "full" if args.preset == "paper" else "demo"
        folder = write_study_folder(make_study(5, diagnosis="malignant", size=size), tmp / "study")
        flops = {"stage1": forward_flops(current.model, current.read(folder), ("MG", "US")),
                 "stage2": forward_flops(current.model, current.read(folder), ("MG", "US", "MR"))}
        run_gflop = {v.name: round(run_flops(v, folder, "2") / 1e9, 2) for v in variants}
        peak = machine_peak_gflops(torch.device(device))
        runs = {v.name: [] for v in variants}
        stage1 = {v.name: [] for v in variants}
        outs = {}
        for r in range(args.repeats + 1):  # the first is a warm-up
            order = variants if r % 2 else variants[::-1]  # interleaved, alternating order
            for v in order:
                out = tmp / f"out-{variants.index(v)}-{r}"
                res = timed_run(v, folder, out, device)
                s1 = timed_run(v, folder, tmp / f"s1-{variants.index(v)}-{r}", device, stage="1")
                outs[v.name] = out
                if r:
                    runs[v.name].append(res)
                    stage1[v.name].append(s1["parts"]["total"])
        seg_diff = _segmentation_difference(outs[variants[0].name], outs["current"]) if args.baseline else None
        sal_diff = _saliency_difference(outs[variants[0].name], outs["current"]) if args.baseline else None
        # memory as `binds diagnose` uses it: each version alone in a fresh process
        import subprocess

        # (a preset's random weights as a bundle: both versions load them as `binds diagnose` does)
        bundle = str(current.model.bundle.path if args.bundle
                     else preset_bundle(reference, current.model.config, tmp / "bundle"))
        child = {}
        for v in variants:
            spec = {"pkg": v.pkg, "path": str(tmp / "pkg") if v.pkg != "BINDSLib" else None,
                    "bundle": bundle, "folder": str(folder), "device": device, "order": args.memory_order,
                    "threads": args.threads, "out": str(tmp / f"child-{variants.index(v)}")}
            run = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--memory-child", json.dumps(spec)],
                                 capture_output=True, text=True, cwd=str(Path(__file__).resolve().parents[1]))
            if run.returncode:
                raise RuntimeError(f"memory run of {v.name} failed:\n{run.stderr[-2000:]}")
            child[v.name] = json.loads(run.stdout.strip().splitlines()[-1])
        results = {}
        for v in variants:
            rr = runs[v.name]
            median = {k: statistics.median(x["parts"][k] for x in rr) for k in rr[0]["parts"]}
            mem = {k: round(max(x["memory"][k] for x in rr), 1) for k in rr[0]["memory"]}
            fwd_s = sum(median[f"{s}_{p}"] for s in ("stage1", "stage2") for p in ("encoders", "fusion"))
            results[v.name] = {
                "latency_s": {k: round(x, 4) for k, x in median.items()},
                "stage1_only_total_s": round(statistics.median(stage1[v.name]), 4),
                "two_stage_gflop": run_gflop[v.name],
                "achieved_gflops": round(run_gflop[v.name] / max(fwd_s, 1e-9), 1),
                "memory_mib": mem,
                "probabilities": rr[-1]["probabilities"],
                "fresh_process": child[v.name],
            }
    result = {
        "model": label, "device": device if device == "cpu" else torch.cuda.get_device_name(),
        "threads": torch.get_num_threads(), "repeats": args.repeats,
        "forward_gflop": {k: round(x / 1e9, 2) for k, x in flops.items()},
        "machine_peak": peak, "variants": results,
    }
    cur = results["current"]
    if args.baseline:
        base = results[variants[0].name]
        result["same_results"] = {
            "max_probability_difference": max(abs(a - b) for a, b in zip(base["probabilities"], cur["probabilities"])),
            "segmentation_voxels_differing": seg_diff[0], "segmentation_voxels": seg_diff[1],
            "max_saliency_difference": sal_diff}
    w = sys.stdout.write
    w(f"binds diagnose benchmark: {result['model']} on {result['device']} ({result['threads']} threads), "
      f"median of {args.repeats}, two-stage diagnosis with saliency\n")
    names = [v.name for v in variants]
    w(f"{'part (s)':<22}" + "".join(f"{n[:24]:>26}" for n in names) + "\n")
    rows = list(cur["latency_s"]) + ["stage-1-only total"]
    for k in rows:
        vals = [results[n]["latency_s"][k] if k in results[n]["latency_s"] else results[n]["stage1_only_total_s"]
                for n in names]
        w(f"{k:<22}" + "".join(f"{x:>26.3f}" for x in vals) + "\n")
    for key, title in (("two_stage_gflop", "GFLOP (two-stage run)"), ("achieved_gflops", "GFLOP/s (encoders+fusion)")):
        w(f"{title:<22}" + "".join(f"{results[n][key]:>26}" for n in names) + "\n")
    for key in cur["memory_mib"]:
        w(f"{key:<22}" + "".join(f"{results[n]['memory_mib'][key]:>26}" for n in names) + "\n")
    w("fresh process (one `binds diagnose`):\n")
    for key in cur["fresh_process"]:
        w(f"  {key:<26}" + "".join(f"{results[n]['fresh_process'][key]:>22}" for n in names) + "\n")
    w(f"forward GFLOP (encode+fuse, no reuse): stage 1 {result['forward_gflop']['stage1']}, stage 2 "
      f"{result['forward_gflop']['stage2']}; machine in this run: matmul {peak['matmul_fp32_gflops']} GFLOP/s, "
      f"conv {peak['conv3x3_fp32_gflops']} GFLOP/s"
      + (f", bf16 matmul {peak['matmul_bf16_gflops']} GFLOP/s (encoders+fusion at "
         f"{cur['achieved_gflops'] / peak['matmul_bf16_gflops']:.1%} of it)" if "matmul_bf16_gflops" in peak else "")
      + "\n")
    w("in this process (with --baseline both versions are loaded): peak_rss_mib = peak resident set during one diagnosis, "
      "working_mib = that peak minus the resident set before it; fresh process: process_peak_rss_mib = "
      "peak of the whole process (model loading included), diagnosis_peak_rss_mib = peak while "
      "diagnosing (weights, libraries and study included)\n")
    if args.baseline:
        sr = result["same_results"]
        w(f"same results: max |probability difference| {sr['max_probability_difference']:.2e}; "
          f"segmentation voxels (lesion / salient-region masks) differing: {sr['segmentation_voxels_differing']} "
          f"of {sr['segmentation_voxels']}; "
          f"max |saliency difference| {sr['max_saliency_difference']:.2e}\n")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
