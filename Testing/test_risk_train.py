"""Training end to end on a few fabricated histories: a loadable, calibrated risk bundle."""

from __future__ import annotations

import datetime as dt

import numpy as np

from BINDSLib.risk.config import PRESETS, TrainConfig
from BINDSLib.risk.train import build_examset, split_women, train
from BINDSLib.study import ExamHistory
from test_risk_support import make_exam


def fabricated_histories(n_women: int = 16) -> list[ExamHistory]:
    rng = np.random.default_rng(0)
    out = []
    for w in range(n_women):
        exams = [make_exam(100 * w + k, dt.date(2010 + k, 6, 1), shape=(64, 48), study_id=f"w{w}e{k}")
                 for k in range(3)]
        if w % 4 == 0:  # cancer 1.5 years after the last exam
            out.append(ExamHistory(f"w{w}", exams, cancer_date=dt.date(2013, 12, 1),
                                   followup_end=dt.date(2013, 12, 1)))
        else:
            years = int(rng.integers(1, 6))
            out.append(ExamHistory(f"w{w}", exams, followup_end=dt.date(2012 + years, 6, 1)))
    return out


def test_examset_keeps_censoring_per_exam():
    hs = fabricated_histories(4)
    data = build_examset(hs, PRESETS["tiny"], sides=["R", None, None, None])
    assert data.images.shape[1:] == (4, 1, 64, 48) and data.images.dtype == np.uint8
    # woman 0: cancer 3.5, 2.5, 1.5 years after her exams
    assert data.targets[:3].tolist() == [[0, 0, 0, 1, 1], [0, 0, 1, 1, 1], [0, 1, 1, 1, 1]]
    assert data.events[:3].all() and data.mask[:3].all()
    assert data.sides[:3].tolist() == [1, 1, 1] and (data.sides[3:] == -1).all()
    assert data.mask[3:].sum() < data.mask[3:].size  # the others are censored somewhere


def test_split_is_by_woman_and_complete():
    parts = split_women(10, (0.6, 0.2, 0.2), seed=1)
    assert sorted(np.concatenate(parts).tolist()) == list(range(10)) and [len(p) for p in parts] == [6, 2, 2]


def test_train_writes_a_bundle_that_scores(tmp_path):
    from BINDSLib.risk.inference import RiskModel, save_risk_bundle

    cfg = TrainConfig(n_women=16, epochs=2, batch_size=8, split=(0.5, 0.25, 0.25))
    hs = fabricated_histories(16)
    sides = ["L" if h.cancer_date else None for h in hs]
    net, cal, breast_cal, metrics = train(hs, PRESETS["tiny"], cfg, sides=sides)
    assert cal.method == "platt" and len(cal.years) == 5
    assert breast_cal.method in ("platt", "none")
    assert set(metrics["test"]["auc"]) == {"1", "2", "3", "4", "5"} and len(metrics["epochs"]) == 2
    path = save_risk_bundle(tmp_path / "b", net, cal, breast_calibration=breast_cal, metrics=metrics,
                            reproduce="test")
    risk = RiskModel.from_bundle(path, device="cpu").score_exam(make_exam(1, shape=(64, 48)))
    assert all(np.diff(risk.cumulative_risk) >= 0)
    assert "## Metrics" in (path / "docs" / "README.md").read_text()


def test_augment_keeps_range_and_shape():
    import torch

    from BINDSLib.risk.train import augment, drop_views

    x = torch.rand(3, 4, 1, 16, 12)
    y = augment(x, max_shift_px=2, generator=torch.Generator().manual_seed(0))
    assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1
    m = drop_views(torch.ones(50, 4, dtype=torch.bool), 0.9)
    assert m.any(dim=1).all() and not m.all()  # some views dropped, every exam keeps one


def test_train_command_and_recalibration(tmp_path):
    import json

    from BINDSLib.bundle import load_bundle
    from BINDSLib.risk.train import main
    from BINDSLib.studyfolder import write_history

    for i, h in enumerate(fabricated_histories(12)):
        write_history(h, tmp_path / "hist" / f"w{i:02d}")
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"model": "tiny", "train": {"epochs": 1, "batch_size": 8,
                                                          "split": [0.5, 0.25, 0.25]}}))
    assert main(["--config", str(cfg), "--histories", str(tmp_path / "hist"), "--out", str(tmp_path / "b")]) == 0
    first = load_bundle(tmp_path / "b")
    assert first.binds["metrics"]["best_epoch"] == 1 and "--histories" in (tmp_path / "b/docs/README.md").read_text()
    assert main(["--config", str(cfg), "--histories", str(tmp_path / "hist"), "--recalibrate",
                 str(tmp_path / "b"), "--out", str(tmp_path / "b2")]) == 0
    second = load_bundle(tmp_path / "b2")
    assert second.sha256 == first.sha256  # same weights
    assert second.binds["metrics"]["recalibrated"] is True


def test_train_command_errors_are_one_line_and_come_before_the_training(tmp_path, capsys, monkeypatch, caplog):
    import json

    import BINDSLib.risk.train as rt

    def no_training(*a, **k):
        raise AssertionError("trained before refusing")

    monkeypatch.setattr(rt, "train", no_training)
    cfg = tmp_path / "cfg.json"
    cases = {"missing config": (["--config", str(tmp_path / "nope.json")], 3, "config file not found"),
             "batch size 0": ({"epochs": 1, "batch_size": 0}, 3, "train.batch_size must be a whole number >= 1"),
             "text n_women": ({"n_women": "x"}, 3, "train.n_women must be a whole number"),
             "negative rate": ({"learning_rate": -1}, 3, "train.learning_rate must be a number > 0"),
             "unknown key": ({"epoch": 3}, 3, "unknown train config fields"),
             "no histories": (["--histories", str(tmp_path / "nowhere")], 3, "not a folder of exam-history folders"),
             "empty histories": (["--histories", str(tmp_path)], 3, "holds no exam-history folder")}
    for name, (given, code, message) in cases.items():
        if isinstance(given, dict):
            cfg.write_text(json.dumps({"model": "tiny", "train": given}))
            given = ["--config", str(cfg)]
        assert rt.main([*given, "--out", str(tmp_path / "b")]) == code, name
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (name, err)
    # an existing output: refused before the (long) training, not after it
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "keep.txt").write_text("x")
    cfg.write_text(json.dumps({"model": "tiny", "train": {"epochs": 1}}))
    assert rt.main(["--config", str(cfg), "--out", str(tmp_path / "b")]) == 5
    assert "already exists" in capsys.readouterr().err
    # validation women without a cancer give no C-index: the last epoch's weights are kept
    monkeypatch.undo()
    healthy = [h for h in fabricated_histories(16) if h.cancer_date is None]
    with caplog.at_level("WARNING"):
        _, _, _, metrics = rt.train(healthy, PRESETS["tiny"], TrainConfig(n_women=len(healthy), epochs=2,
                                                                          batch_size=8, split=(0.5, 0.25, 0.25)))
    assert metrics["best_epoch"] == 2 and "give no C-index" in caplog.text
