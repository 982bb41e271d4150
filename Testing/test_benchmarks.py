"""The benchmark scripts run with one command each, print their tables and write their JSON
(shipped demo bundles, smallest settings; the figures themselves are the scripts' job, not
the tests')."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


def _run(args: list[str], timeout: int = 600) -> str:
    run = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=timeout)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout


def test_bench_diagnose_against_a_baseline_folder(tmp_path):
    """The demo bundle against a copy of this very BINDSLib (a baseline folder): the table has
    every part for both versions, and the two versions give the same results."""
    out = _run([str(BENCH / "bench_diagnose.py"), "--bundle", "binds-diagnosis-demo", "--repeats", "1",
                "--threads", "1", "--baseline", str(ROOT / "BINDSLib"), "--json", str(tmp_path / "d.json")])
    lines = out.splitlines()
    for part in ("read", "stage1_encoders", "stage2_encoders", "stage2_mapping", "write", "total"):
        row = next(line for line in lines if line.split()[:1] == [part])
        assert len(row.split()) == 3 and all(float(x) >= 0 for x in row.split()[1:]), row
    doc = json.loads((tmp_path / "d.json").read_text())
    assert set(doc["variants"]) == {"current", f"baseline ({ROOT / 'BINDSLib'})"}
    same = doc["same_results"]
    assert same["max_probability_difference"] == 0.0 and same["max_saliency_difference"] == 0.0
    assert same["segmentation_voxels_differing"] == 0 < same["segmentation_voxels"]
    cur = doc["variants"]["current"]
    lat = cur["latency_s"]
    assert lat["total"] >= lat["stage2_encoders"] + lat["write"] > 0
    assert cur["two_stage_gflop"] > 0 and doc["forward_gflop"]["stage2"] >= doc["forward_gflop"]["stage1"] > 0
    fresh = cur["fresh_process"]
    assert fresh["process_peak_rss_mib"] >= fresh["diagnosis_peak_rss_mib"] > 100
    assert doc["machine_peak"]["matmul_fp32_gflops"] > 0 and doc["machine_peak"]["conv3x3_fp32_gflops"] > 0


def test_bench_risk_demo_bundle(tmp_path):
    out = _run([str(BENCH / "bench_risk.py"), "--bundle", "binds-risk-demo", "--n-exams", "4",
                "--batch-size", "2", "--repeat", "1", "--threads", "1", "--source-size", "512", "416",
                "--out", str(tmp_path / "r.json")])
    doc = json.loads((tmp_path / "r.json").read_text())
    printed = {line.split()[0]: line.split(None, 1)[1] for line in out.splitlines() if line.strip()}
    for key in ("model_exams_per_s", "gflop_per_exam", "fraction_of_matmul_peak", "peak_rss_mib",
                "preprocess_s_per_exam_1_core", "cohort_158807_exams_min"):
        assert printed[key] == str(doc[key]), key
    assert doc["exams_timed"] == 4 and doc["model_exams_per_s"] > 0
    assert doc["cohort_158807_exams_min"] == pytest.approx(158_807 / doc["model_exams_per_s"] / 60, rel=0.01)
    assert doc["achieved_gflop_per_s"] == pytest.approx(doc["gflop_per_exam"] * doc["model_exams_per_s"], rel=0.02)
    assert "fraction_of_bf16_matmul_peak" not in doc  # a GPU-only figure


def test_matmul_rate_in_bf16():
    """The GPU roofline is a bf16 matmul; the same function measures it (here on the CPU)."""
    import torch

    spec = importlib.util.spec_from_file_location("bench_risk", BENCH / "bench_risk.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.matmul_gflops(torch.device("cpu"), repeat=1, n=64, dtype=torch.bfloat16) > 0
