"""Training: the loss falls in a few steps, `binds train` writes a run and a bundle, resume
is exact, configs are validated."""

from __future__ import annotations

import csv
import dataclasses
import json

import numpy as np
import pytest
import torch

from BINDSLib.cli import main
from BINDSLib.errors import InputError
from BINDSLib.model.data import StudyDataset, collate, make_sample
from BINDSLib.model.inference import DiagnosisModel
from BINDSLib.model.losses import DiagnosisLoss
from BINDSLib.model.network import DiagnosisNetwork
from BINDSLib.model.train import load_settings, parse_settings, train
from BINDSLib.studyfolder import read_study_folder, write_study_folder
from test_model_cases import make_case, tiny_config


def test_loss_falls_in_a_few_steps():
    torch.manual_seed(0)
    cfg = tiny_config()
    samples = [make_sample(make_case(i, i % 2 == 0), cfg) for i in range(4)]
    ds = StudyDataset(samples, augment=True, seed=0, config=cfg)
    net = DiagnosisNetwork(cfg)
    loss_fn = DiagnosisLoss()
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    losses = []
    for step in range(12):
        ds.set_epoch(step)
        batch = collate([ds[i] for i in range(4)])
        out = net(batch)
        total, _ = loss_fn(out, batch, fusion=True)
        opt.zero_grad()
        total.backward()
        opt.step()
        net.pathology.update_prototypes(out["pathology_embedding"].detach(), batch["malignant"])
        losses.append(float(total.detach()))
    assert np.mean(losses[-4:]) < 0.8 * np.mean(losses[:4])


def _config(tmp_path, epochs=(1, 2), modality_sets=(("US", "MR"), ("MG", "US")), **train):
    folders = tmp_path / "studies"
    for i in range(6):
        write_study_folder(make_case(i, (True, False, None)[i % 3], modality_sets[i % len(modality_sets)]),
                           folders / f"case{i}")
    doc = {"model": tiny_config().to_json(),
           "data": [{"folders": "studies"}],
           "train": {"seed": 3, "batch_size": 2, "validation_fraction": 0.34, "data_workers": 1,
                     "phases": [{"name": "unimodal", "epochs": epochs[0], "lr": 0.003, "fusion": False},
                                {"name": "multimodal", "epochs": epochs[1], "lr": 0.002, "fusion": True}],
                     **train},
           "bundle": {"name": "tiny-test", "version": "0.0.1"}}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(doc))
    return path


def test_binds_train_writes_run_bundle_and_metrics(tmp_path):
    cfg = _config(tmp_path, epochs=(1, 1), loss_weights={"finding": 1.0})
    run = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(run)]) == 0
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [r["phase"] for r in rows] == ["unimodal", "multimodal"]
    assert all(float(r["train_loss"]) > 0 for r in rows)
    # the finding term (abnormal vs normal) is trained and scored on the split
    assert all(float(r["train_finding"]) > 0 for r in rows) and all(r["val_auc_finding"] for r in rows)
    assert all(0.0 <= float(r["val_dice"]) <= 1.0 for r in rows)  # validation lesions have masks
    assert (run / "checkpoints" / "last.pt").is_file() and (run / "train.log").is_file()
    model = DiagnosisModel.from_bundle(run / "bundle", device="cpu")
    meta = model.metadata
    assert meta["kind"] == "diagnosis" and meta["calibration"]["method"] == "temperature"
    # the finding logit is calibrated on the split too, and used
    assert 0.05 <= meta["calibration"]["finding_temperature"] <= 20.0
    assert model.finding_temperature == meta["calibration"]["finding_temperature"]
    assert meta["outputs"]["finding_probability"] == "calibrated (Platt: temperature and bias)"
    assert meta["training_data"]["n_validation"] == 2 and meta["training_data"]["n_train"] == 4
    # the bilateral comparison's reference: the median finding logit of the split's normals
    val_ids = {r["study_id"] for r in csv.DictReader(open(run / "bundle" / "docs" / "validation_cases.csv"))}
    from BINDSLib.studyfolder import read_study_folder

    val = [read_study_folder(tmp_path / "studies" / sid) for sid in sorted(val_ids)]
    preds = [model.predict(st, saliency="none") for st in val]
    logits = [p.finding_logit for p in preds]
    normal = [st.diagnosis is not None and st.diagnosis.value == "normal" for st in val]
    assert any(normal) and not all(normal)  # the split of this test has both
    assert meta["calibration"]["finding_reference"] == pytest.approx(
        float(np.median([z for z, n in zip(logits, normal) if n])), abs=1e-3)
    assert model.finding_reference == meta["calibration"]["finding_reference"]
    # the temperature and bias are those that fit the split's finding logits (bilateral_weight 0)
    from BINDSLib.model.calibration import fit_platt

    t, b = model.finding_temperature, model.finding_bias
    assert (t, b) == (meta["calibration"]["finding_temperature"], meta["calibration"]["finding_bias"])
    want_t, want_b = fit_platt(logits, [0 if n else 1 for n in normal])
    assert t == pytest.approx(want_t, rel=1e-2) and b == pytest.approx(want_b, rel=1e-2, abs=1e-2)
    for p, z in zip(preds, logits):
        assert p.finding_probability == pytest.approx(1 / (1 + np.exp(-(z / t + b))), rel=1e-6)
    assert meta["metrics"]["validation_auc_finding"] is not None
    assert "validation_auc_finding_compared" not in meta["metrics"]
    assert "threshold" in meta["operating_point"]
    assert "binds train" in (run / "bundle" / "docs" / "README.md").read_text()
    assert model.modalities == ("MG", "US", "MR")
    # a second run into the same folder needs --resume or --overwrite
    assert main(["train", str(cfg), "--out", str(run)]) == 5


def test_bilateral_finding_calibration_of_four_view_exams_is_fitted_as_inference_compares(tmp_path):
    """With ``bilateral_weight``, a validation split of four-film exams (each film compared with
    the other breast inside its study, which the pairing of one-film studies cannot reproduce)
    is calibrated on the finding logits inference gives: the Platt fit of those logits."""
    from BINDSLib.model.calibration import fit_platt
    from BINDSLib.model.metrics import auc
    from BINDSLib.studyfolder import read_study_folder

    cfg_path = _config(tmp_path, epochs=(1, 1), modality_sets=(("MG",),))
    doc = json.loads(cfg_path.read_text())
    doc["model"]["bilateral_weight"] = 1.0
    cfg_path.write_text(json.dumps(doc))
    run = tmp_path / "run"
    assert main(["train", str(cfg_path), "--out", str(run)]) == 0
    model = DiagnosisModel.from_bundle(run / "bundle", device="cpu")
    cal, metrics = model.metadata["calibration"], model.metadata["metrics"]
    assert metrics["validation_finding_compared_by"] == "inference"
    val_ids = sorted(r["study_id"] for r in csv.DictReader(open(run / "bundle" / "docs" / "validation_cases.csv")))
    val = [read_study_folder(tmp_path / "studies" / sid) for sid in val_ids]
    assert all(len(st.images) == 4 for st in val)  # both breasts in every study
    preds = [model.predict(st, saliency="none") for st in val]
    assert all(p.finding_compared for p in preds)
    logits = [p.finding_logit for p in preds]
    labels = [int(st.diagnosis.value != "normal") for st in val]
    assert 0 < sum(labels) < len(labels)
    want_t, want_b = fit_platt(logits, labels)
    # (inference folds the BatchNorms, training's copy does not: equal to float rounding)
    assert cal["finding_temperature"] == pytest.approx(want_t, rel=1e-4)
    assert cal["finding_bias"] == pytest.approx(want_b, rel=1e-4, abs=1e-4)
    assert metrics["validation_auc_finding_compared"] == pytest.approx(auc(logits, labels))


def test_finding_reread_matches_inference_and_leaves_out_what_it_cannot_read(tmp_path, caplog):
    """The re-read of the validation studies for the finding calibration predicts each as
    inference does; a study the model cannot read is left out (NaN) with a warning instead of
    stopping training at its end."""
    from BINDSLib.model.train import _finding_logits_by_inference, load_samples
    from BINDSLib.studyfolder import read_study_folder

    settings = load_settings(_config(tmp_path, epochs=(1, 1), modality_sets=(("MG",),)))
    samples = load_samples(settings.data, settings.model, settings.base_dir, 1)[:3]
    net = DiagnosisNetwork(settings.model)
    got = _finding_logits_by_inference(net, settings, samples, "cpu", 0.5, ("MG",))
    model = DiagnosisModel(net, {"calibration": {"finding_reference": 0.5}, "modalities": ["MG"]}, "cpu")
    for i in range(3):
        want = model.predict(read_study_folder(tmp_path / "studies" / samples[i].study_id), saliency="none")
        assert got[i] == pytest.approx(want.finding_logit, abs=1e-5)
    unreadable = _finding_logits_by_inference(net, settings, samples, "cpu", 0.5, ("US",))
    assert np.isnan(unreadable).all() and f"study {samples[1].study_id} left out" in caplog.text


def test_train_refuses_a_study_id_that_two_sources_carry(tmp_path):
    """A data source listed twice (or two sources sharing an ID) would put one study on both
    sides of the split and make the validation case list ambiguous: refused before training,
    naming the ID and both places."""
    cfg = _config(tmp_path, epochs=(1, 1), modality_sets=(("MG",),))
    doc = json.loads(cfg.read_text())
    doc["data"] = [{"folders": "studies"}, {"folders": "studies", "limit": 2}]
    cfg.write_text(json.dumps(doc))
    run = tmp_path / "run"
    with pytest.raises(InputError, match=r"study ID 'case0' occurs more than once .*studies.case0.*"
                                         r"studies.case0.*own ID"):
        train(load_settings(cfg), run)
    assert not (run / "checkpoints").exists() and not (run / "validation_cases.csv").exists()
    assert main(["train", str(cfg), "--out", str(tmp_path / "run2")]) == 3


def test_bundle_and_run_folders_are_checked_before_training(tmp_path):
    """A --bundle that is (or holds) the data or the run folder would delete it when written;
    an existing --bundle without --overwrite would fail only after training: all refused at
    once, before any run file is written, and the data is kept."""
    cfg = str(_config(tmp_path, epochs=(1, 1), modality_sets=(("MG",),)))
    data = tmp_path / "studies"
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    (tmp_path / "taken").mkdir()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    (tmp_path / "a-file").write_text("")
    for args in (["--bundle", str(data), "--overwrite"], ["--bundle", str(tmp_path), "--overwrite"],
                 ["--bundle", str(tmp_path / "run"), "--overwrite"], ["--bundle", str(tmp_path / "taken")],
                 ["--bundle", str(tmp_path / "mine"), "--overwrite"]):
        assert main(["train", cfg, "--out", str(tmp_path / "run"), *args]) == 5, args
        assert not (tmp_path / "run").exists()
    assert main(["train", cfg, "--out", str(tmp_path / "a-file")]) == 5
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before
    # a run folder another training is writing into (both would write its checkpoints)
    from BINDSLib.fsutil import output_lock

    (tmp_path / "busy").mkdir()
    with output_lock(tmp_path / "busy", "binds train"):
        assert main(["train", cfg, "--out", str(tmp_path / "busy")]) == 5
    assert [p.name for p in (tmp_path / "busy").iterdir()] == [".binds.lock"]


def test_a_bundle_reads_only_the_modalities_it_was_trained_on(tmp_path):
    cfg = _config(tmp_path, epochs=(1, 1), modality_sets=(("US",),))
    assert main(["train", str(cfg), "--out", str(tmp_path / "run")]) == 0
    model = DiagnosisModel.from_bundle(tmp_path / "run" / "bundle", device="cpu")
    assert model.metadata["modalities"] == ["US"] and model.modalities == ("US",)
    assert model.config.unsided == ()  # these cases' ultrasound has a side
    # without the finding term its logit is still calibrated when the split has normal and
    # abnormal studies (else the plain sigmoid)
    val = {r["study_id"] for r in csv.DictReader(open(tmp_path / "run" / "bundle" / "docs" / "validation_cases.csv"))}
    normal = {"case2", "case5"}  # _config: every third case is normal
    assert val and ("finding_temperature" in model.metadata["calibration"]) == bool(val & normal and val - normal)
    pred = model.predict(make_case(9, True, ("MG", "US", "MR")), saliency="none")
    assert pred.modalities == ("US",)
    # these cases carry subtype labels; a bundle trained without any gives no subtype output
    assert model.metadata["subtype_trained"] is True and pred.subtype_probabilities
    model.metadata["subtype_trained"] = False
    assert model.predict(make_case(9, True, ("US",)), saliency="none").subtype_probabilities == {}


def test_a_modality_trained_without_sides_is_read_without_them(tmp_path):
    """Ultrasound trained on images without a side (BUSI): the bundle reads every US image as of
    unknown side (its left/right embeddings are untrained), so a side given with the image does
    not change the prediction; trained with sides, it keeps reading them."""
    cfg = _config(tmp_path, epochs=(1, 1), modality_sets=(("US",),))
    sided = tmp_path / "studies"
    for case in sided.iterdir():  # the same cases, their ultrasound without a side
        study = read_study_folder(case)
        images = [dataclasses.replace(im, role=dataclasses.replace(im.role, laterality=None)) for im in study.images]
        write_study_folder(dataclasses.replace(study, images=images), case, overwrite=True)
    assert main(["train", str(cfg), "--out", str(tmp_path / "run")]) == 0
    model = DiagnosisModel.from_bundle(tmp_path / "run" / "bundle", device="cpu")
    assert model.config.unsided == ("US",) and model.metadata["model_config"]["unsided"] == ["US"]
    study = make_case(9, True, ("US",))
    assert study.images[0].role.laterality == "L"
    plain = dataclasses.replace(study, images=[dataclasses.replace(
        study.images[0], role=dataclasses.replace(study.images[0].role, laterality=None))])
    probs = [model.predict(s, saliency="none").malignancy_probability for s in (study, plain)]
    assert probs[0] == probs[1]
    # the model read the side before: the same weights with sides give another probability
    model.config = dataclasses.replace(model.config, unsided=())
    assert model.predict(study, saliency="none").malignancy_probability != probs[1]


def test_a_run_started_over_and_stopped_leaves_nothing_of_the_old_run_to_resume(tmp_path, monkeypatch):
    """train --overwrite on a finished run, stopped in its first epoch: the old checkpoint and
    metrics are gone, so that --resume starts over instead of reviving the old run (whose
    checkpoint it used to find beside the new config, with a metrics.csv of no rows)."""
    import BINDSLib.model.train as train_mod

    cfg = _config(tmp_path, epochs=(1, 1))
    run = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(run)]) == 0
    original = train_mod._append_metrics

    def stop(path, row):
        original(path, row)
        raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "_append_metrics", stop)
    assert main(["train", str(cfg), "--out", str(run), "--overwrite"]) == 130
    assert not (run / "checkpoints" / "last.pt").exists() and not (run / "final_metrics.json").exists()
    assert [r["epoch"] for r in csv.DictReader(open(run / "metrics.csv"))] == ["1"]  # the new run's only
    monkeypatch.setattr(train_mod, "_append_metrics", original)
    assert main(["train", str(cfg), "--out", str(run), "--resume", "--overwrite"]) == 0
    assert [r["epoch"] for r in csv.DictReader(open(run / "metrics.csv"))] == ["1", "2"]


def test_a_file_where_a_run_keeps_a_folder_is_refused_before_training(tmp_path, monkeypatch, capsys):
    """checkpoints/ as a file in a resumed run folder: exit 5 naming it before any epoch (it
    failed as an internal error after a whole epoch)."""
    import BINDSLib.model.train as train_mod

    cfg = _config(tmp_path, epochs=(1, 1))
    run = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(run)]) == 0
    (run / "checkpoints" / "last.pt").unlink()
    (run / "checkpoints").rmdir()
    (run / "checkpoints").write_text("a file")
    monkeypatch.setattr(train_mod, "_append_metrics", lambda *a: pytest.fail("trained"))
    assert main(["train", str(cfg), "--out", str(run), "--resume"]) == 5
    assert "checkpoints in the run folder is a file" in capsys.readouterr().err


def test_resume_continues_exactly(tmp_path, monkeypatch):
    import BINDSLib.model.train as train_mod

    # with weight averaging over the last two epochs: the running mean travels in the checkpoint
    settings = load_settings(_config(tmp_path, epochs=(1, 2), average_epochs=2))
    full = train(settings, tmp_path / "full")
    # an interrupted run: killed after its second epoch was saved
    calls = {"n": 0}
    original = train_mod._append_metrics

    def stop_after_two(path, row):
        original(path, row)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "_append_metrics", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        train(settings, tmp_path / "cut")
    monkeypatch.setattr(train_mod, "_append_metrics", original)
    resumed = train(settings, tmp_path / "cut", resume=True)
    a = torch.load(tmp_path / "full" / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=True)["model"]
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6), k
    assert resumed["validation_auc"] == full["validation_auc"]
    rows = list(csv.DictReader(open(tmp_path / "cut" / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    # the bundle holds the averaged weights, the same after the interruption
    state = torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=True)
    assert state["n_averaged"] == 2
    wa = torch.load(tmp_path / "full" / "bundle" / "models" / "model.pt", weights_only=True)
    wb = torch.load(tmp_path / "cut" / "bundle" / "models" / "model.pt", weights_only=True)
    conv = "branches.US.locator.backbone.net.conv1.weight"
    assert torch.allclose(wa[conv], state["average"][conv]) and not torch.allclose(wa[conv], b[conv])
    for k in wa:
        assert torch.allclose(wa[k].float(), wb[k].float(), atol=1e-6), k


def test_weight_average_and_batch_norm_statistics():
    from BINDSLib.model.train import _recompute_batch_norm, _update_average

    states = [{"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(5)},
              {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor(6)},
              {"w": torch.tensor([5.0, 1.0]), "n": torch.tensor(7)}]
    avg, n = None, 0
    for st in states:
        avg, n = _update_average(avg, n, st)
    assert n == 3 and torch.allclose(avg["w"], torch.tensor([3.0, 3.0])) and int(avg["n"]) == 7
    assert torch.equal(states[0]["w"], torch.tensor([1.0, 2.0]))  # the first state is not changed

    # BatchNorm statistics: the mean over batches of each batch's channel means at that layer
    cfg = tiny_config()
    settings = parse_settings({"model": cfg.to_json(), "data": [{"synthetic": {}}], "train": {"batch_size": 3}})
    net = DiagnosisNetwork(cfg)
    samples = [make_sample(make_case(i, i % 2 == 0, ("US",)), cfg) for i in range(6)]
    ds = StudyDataset(samples, augment=False)
    bn = net.branches["US"].locator.backbone.net.bn1
    seen = []
    bn.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach().mean((0, 2, 3))))
    bn.running_mean.fill_(7.0)
    _recompute_batch_norm(net, ds, settings, torch.device("cpu"))
    assert len(seen) == 2  # two batches of three
    assert torch.allclose(bn.running_mean, torch.stack(seen).mean(0), atol=1e-5)
    assert bn.momentum == 0.1 and net.training
    with pytest.raises(ValueError, match="average_epochs"):
        parse_settings({"data": [{"synthetic": {}}], "train": {"average_epochs": 99}})


def test_config_errors_are_clear(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"data": [{"synthetic": {"n": 2}}], "train": {"epochz": 3}}))
    with pytest.raises(InputError, match="epochz"):
        load_settings(bad)
    with pytest.raises(ValueError, match="data"):
        parse_settings({"model": {"preset": "demo"}})
    with pytest.raises(ValueError, match="unknown model config"):
        parse_settings({"model": {"colour": 1}, "data": [{"synthetic": {}}]})
    s = parse_settings({"model": {"preset": "paper"}, "data": {"dataset": "x"}})
    assert s.model.embed_dim == 512 and s.model.locator_2d.channels[-1] == 512
    with pytest.raises(ValueError, match="mg_fit must be one of"):
        parse_settings({"model": {"mg_fit": "whole"}, "data": {"dataset": "x"}})
    with pytest.raises(ValueError, match=r"bilateral_weight must be in \[0, 1\], not 1.5"):
        parse_settings({"model": {"bilateral_weight": 1.5}, "data": {"dataset": "x"}})
    with pytest.raises(ValueError, match="finding_cell and finding_topk"):
        parse_settings({"model": {"finding_topk": 0}, "data": {"dataset": "x"}})
    with pytest.raises(ValueError, match="unknown loss weights"):
        parse_settings({"data": {"dataset": "x"}, "train": {"loss_weights": {"findings": 1}}})
    with pytest.raises(InputError, match="not found"):
        load_settings(tmp_path / "missing.json")


@pytest.mark.parametrize("change, message", [
    ({"train": {"batch_size": "2"}}, r"train.batch_size must be a whole number, not '2'"),
    ({"train": {"seed": 1.5}}, r"train.seed must be a whole number, not 1.5"),
    ({"train": {"amp": "yes"}}, r"train.amp must be true or false"),
    ({"train": {"batch_size": 0}}, r"train.batch_size must be at least 1, not 0"),
    ({"train": {"modality_dropout": 1.5}}, r"train.modality_dropout must be at least 0.0 and at most 1.0"),
    ({"train": {"lesion_paste": -0.1}}, r"train.lesion_paste must be at least 0.0 and at most 1.0"),
    ({"train": {"validation_fraction": "0.2"}}, r"train.validation_fraction must be a finite number"),
    ({"train": {"phases": [{"name": "a", "epochs": 1, "lr": "fast"}]}}, r"train.phases\[0\].lr must be a finite"),
    ({"train": {"phases": [{"name": "a", "epochs": 1, "lr": -1}]}}, r"train.phases\[0\].lr must be above 0"),
    ({"train": {"phases": [{"name": "a", "epochs": "3", "lr": 1e-3}]}}, r"train.phases\[0\].epochs must be a whole"),
    ({"train": {"phases": [{"name": "a", "epochz": 3, "lr": 1e-3}]}}, r"train.phases\[0\] needs name, epochs and lr"),
    ({"data": [{"synthetic": {"n": 4}, "limt": 3}]}, r"unknown key\(s\) \['limt'\]"),
    ({"data": [{"synthetic": {"n": 4, "sed": 3}}]}, r"unknown synthetic option\(s\) \['sed'\]"),
    ({"data": [{"dataset": 3}]}, r"dataset must be a path"),
    ({"data": [{"dataset": "x", "limit": 0}]}, r"limit must be at least 1"),
    ({"bundle": {"nmae": "x"}}, r"bundle must be an object of texts with the keys"),
])
def test_config_types_ranges_and_keys_are_checked_before_any_work(change, message):
    doc = {"model": {"preset": "demo"}, "data": [{"synthetic": {"n": 4}}], **change}
    with pytest.raises(ValueError, match=message):
        parse_settings(doc)


def test_resume_refuses_other_data_or_network_and_warns_of_an_empty_split(tmp_path, caplog):
    cfg = _config(tmp_path, epochs=(1, 0), modality_sets=(("US",),))
    run = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(run)]) == 0
    first = (run / "config.json").read_text()
    doc = json.loads(cfg.read_text())
    for key, value in (("data", [{"folders": "studies", "limit": 5}]), ("model", {**doc["model"], "embed_dim": 32})):
        other = tmp_path / f"other-{key}.json"
        other.write_text(json.dumps({**doc, key: value}))
        with pytest.raises(InputError, match=f"this run was started with another {key}"):
            train(load_settings(other), run, resume=True)
        assert (run / "config.json").read_text() == first  # refused before anything is written
    # a run started by an older BINDS, whose config.json lacks model settings added since (at
    # their defaults now), resumes
    old = json.loads(first)
    for key in ("bilateral_weight", "finding_topk", "mg_select"):
        old["model"].pop(key)
    (run / "config.json").write_text(json.dumps(old))
    assert main(["train", str(cfg), "--out", str(run), "--resume"]) == 0
    doc["train"]["validation_fraction"] = 0.0
    cfg.write_text(json.dumps(doc))
    with caplog.at_level("WARNING", logger="BINDSLib.model.train"):
        assert main(["train", str(cfg), "--out", str(tmp_path / "run0")]) == 0
    assert "no validation studies (validation_fraction 0 of 6 studies): the bundle will not be calibrated" \
        in caplog.text


def test_validation_dice_scores_the_thresholded_lesion_map():
    from types import SimpleNamespace

    from BINDSLib.model.train import _lesion_dice

    ref = torch.zeros(2, 1, 1, 8, 8)
    ref[0, 0, 0, 2:6, 2:6] = 1  # 16 pixels
    ref[1, 0, 0, 0:2, 0:2] = 1
    logits = torch.full((2, 1, 8, 8), -5.0)
    logits[0, 0, 2:6, 2:4] = 5.0  # half of the first lesion, nothing outside it
    logits[1, 0, 6:8, 6:8] = 5.0  # the second at the wrong place
    enc = SimpleNamespace(index=torch.tensor([[0, 0], [1, 0]]), lesion_logits=logits)
    given = torch.tensor([[True], [True]])
    batch = {"US_masks": ref, "US_mask_given": given}
    assert _lesion_dice({"US": enc}, batch, 0.5) == pytest.approx([2 * 8 / (8 + 16), 0.0])
    # images without a reference mask (or with an empty one) are not scored
    batch["US_mask_given"] = torch.tensor([[True], [False]])
    assert _lesion_dice({"US": enc}, batch, 0.5) == pytest.approx([2 / 3])


def test_shipped_diagnosis_configs_load_and_match_their_bundles():
    from pathlib import Path

    from BINDSLib.model.config import DiagnosisConfig

    root = Path(__file__).resolve().parents[1]
    files = sorted(f for f in (root / "configs").glob("*.json") if not f.name.startswith("risk-"))
    assert {f.stem for f in files} >= {"diagnosis-demo", "us-busi", "mg-mias", "mg-mias-lite0", "mg-mias-finding",
                                       "mg-mias-finding-e1", "mg-mias-finding-scratch",
                                       "mg-mias-breast-grid", "mg-mias-pointing"}
    for f in files:
        settings = load_settings(f)
        bundle = root / "Resources" / "Models" / settings.bundle["name"]
        if bundle.is_dir():  # a shipped bundle is what its config trains
            meta = json.loads((bundle / "configs" / "metadata.json").read_text())
            assert DiagnosisConfig.from_json(meta["binds"]["model_config"]) == settings.model, f.name
            assert meta["binds"].get("caution") == settings.bundle.get("caution"), f.name
    lite = load_settings(root / "configs" / "mg-mias-lite0.json")
    assert lite.model.locator_mg.arch == "efficientnet_lite0" and lite.pretrained == {"MG": "imagenet"}
    finding = load_settings(root / "configs" / "mg-mias-finding.json")
    assert finding.model.mg_fit == "breast" and finding.loss_weights.finding == 1.0
    # the shipped recipe plus the finding term, nothing else
    shipped = load_settings(root / "configs" / "mg-mias.json")
    scratch = load_settings(root / "configs" / "mg-mias-finding-scratch.json")
    assert scratch.model == shipped.model and scratch.loss_weights.finding == 1.0
    assert shipped.loss_weights.finding == 0.0
    raw = [json.loads((root / "configs" / f).read_text()) for f in ("mg-mias.json", "mg-mias-finding-scratch.json")]
    raw[1]["train"]["loss_weights"].pop("finding")
    assert raw[0]["train"] == raw[1]["train"] and raw[0]["data"] == raw[1]["data"]
    # ... and the shipped recipe on a breast-fitted grid, nothing else
    grid = json.loads((root / "configs" / "mg-mias-breast-grid.json").read_text())
    assert grid["model"].pop("mg_fit") == "breast" and grid["model"].pop("mg_size") == [448, 320]
    shipped_model = dict(raw[0]["model"])
    shipped_model.pop("mg_size")
    assert grid["model"] == shipped_model and grid["train"] == raw[0]["train"] and grid["data"] == raw[0]["data"]
    # ... and the shipped recipe plus the pointing term, nothing else
    pointing = json.loads((root / "configs" / "mg-mias-pointing.json").read_text())
    assert pointing["train"]["loss_weights"].pop("pointing") == 1.0
    assert pointing["model"] == raw[0]["model"] and pointing["train"] == raw[0]["train"]
    assert pointing["data"] == raw[0]["data"] and load_settings(root / "configs" / "mg-mias-pointing.json")


def test_calibration_pairs_the_one_film_mammograms_of_a_woman():
    """The finding temperature of a bundle with ``bilateral_weight`` is fitted on logits compared
    with the other breast: the split's one-film mammography studies are paired by woman."""
    from BINDSLib.model.train import _one_film
    from BINDSLib.study import Study

    cfg = tiny_config()
    four = make_case(2, True, ("MG",))
    films = {im.label: im for im in four.images}
    one = Study("one", images=[films["MG_R_MLO"]], patient_id="woman-7")
    sample = make_sample(one, cfg)
    assert _one_film(sample) == (sample.group, "R", "MLO") and sample.group
    assert _one_film(make_sample(Study("cc", images=[films["MG_L_CC"]], patient_id="woman-7"), cfg))[1:] == ("L", "CC")
    assert _one_film(make_sample(four, cfg)) is None  # four films: not one mammogram
    us = make_case(2, True, ("US",)).images[0]
    assert _one_film(make_sample(Study("mg+us", images=[films["MG_R_MLO"], us], patient_id="w"), cfg)) is None


def test_a_bundle_says_what_it_was_trained_on_and_what_was_not_calibrated(tmp_path, caplog):
    """Synthetic study folders make a synthetic bundle (which --model auto never gives real
    images to), whatever the data source is called; a validation split of one class leaves the
    malignancy probability uncalibrated, and the metadata and a warning say so."""
    folders = tmp_path / "studies"
    for i in range(5):
        st = make_case(i, True, ("US",))
        st.synthetic = True
        write_study_folder(st, folders / f"case{i}")
    doc = {"model": tiny_config().to_json(), "data": [{"folders": "studies"}],
           "train": {"seed": 3, "batch_size": 2, "validation_fraction": 0.4, "data_workers": 1,
                     "phases": [{"name": "unimodal", "epochs": 1, "lr": 0.003, "fusion": False}]},
           "bundle": {"name": "tiny-test", "version": "0.0.1"}}
    (tmp_path / "config.json").write_text(json.dumps(doc))
    with caplog.at_level("WARNING"):
        assert main(["train", str(tmp_path / "config.json"), "--out", str(tmp_path / "run")]) == 0
    assert "the validation split holds only malignant studies: the malignancy probability is not calibrated" \
        in caplog.text
    meta = json.loads((tmp_path / "run" / "bundle" / "configs" / "metadata.json").read_text())["binds"]
    assert meta["training_data"]["synthetic"] is True
    assert meta["calibration"]["method"] == "none" and meta["calibration"]["fitted_on"] is None
    assert meta["outputs"]["malignancy_probability"] == "sigmoid of the malignancy logit (not calibrated)"


@pytest.mark.parametrize("band", [[0.1, 0.2, 0.3], [0.5], [0.9, 0.1], [-5, 7], "0.1"])
def test_a_malformed_uncertainty_band_is_refused_in_the_config_and_in_a_bundle(band, tmp_path, tiny_bundle, capsys):
    doc = json.loads(_config(tmp_path).read_text())
    doc["train"]["uncertainty_band"] = band
    with pytest.raises(ValueError, match="train.uncertainty_band must be"):
        parse_settings(doc, tmp_path)
    import shutil

    from BINDSLib.errors import ModelError

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    meta_path = bundle / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["binds"]["uncertainty_band"] = band
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="invalid bundle metadata: uncertainty_band must be"):
        DiagnosisModel.from_bundle(bundle, device="cpu")


def test_resume_with_fewer_epochs_than_the_checkpoint_is_refused(tmp_path):
    """The weights would be those of the longer run, the bundle's record the shorter one."""
    cfg = _config(tmp_path, epochs=(1, 2), modality_sets=(("US",),))
    run = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(run)]) == 0
    first = (run / "config.json").read_text()
    doc = json.loads(cfg.read_text())
    doc["train"]["phases"][1]["epochs"] = 1
    shorter = tmp_path / "shorter.json"
    shorter.write_text(json.dumps(doc))
    with pytest.raises(InputError, match="the checkpoint is at epoch 3, past the 2 epochs of this config"):
        train(load_settings(shorter), run, resume=True)
    assert (run / "config.json").read_text() == first  # refused before anything is written


def test_resume_keeps_the_weight_average_to_the_config_and_the_split_to_the_checkpoint(tmp_path):
    """A resume with more epochs rebuilds the average from the config's last epochs (the
    checkpoint's average of earlier epochs is dropped); one asking to average epochs already
    run without them is refused; a split that changed on disk (a study added) is refused."""
    from BINDSLib.model.train import _load_checkpoint

    cfg = _config(tmp_path, epochs=(1, 1), modality_sets=(("US",),), average_epochs=1)
    run = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(run)]) == 0
    assert _load_checkpoint(run / "checkpoints" / "last.pt")["n_averaged"] == 1
    doc = json.loads(cfg.read_text())
    more = tmp_path / "more.json"
    doc["train"]["phases"][1]["epochs"] = 3
    more.write_text(json.dumps(doc))
    assert main(["train", str(more), "--out", str(run), "--resume"]) == 0
    state = _load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["epoch"] == 4 and state["n_averaged"] == 1
    # the average of one epoch is that epoch's weights: the last epoch's, not a mean with epoch 2
    assert all(torch.equal(state["average"][k], v) for k, v in state["model"].items())
    wider = tmp_path / "wider.json"
    doc["train"]["average_epochs"] = 2
    wider.write_text(json.dumps(doc))
    with pytest.raises(InputError, match="averaged its last 1 epoch.*averages the last 2 of 4, 2 of them already run"):
        train(load_settings(wider), run, resume=True)
    write_study_folder(make_case(9, True, ("US",)), tmp_path / "studies" / "case9")
    record = {name: (run / name).read_text() for name in ("config.json", "validation_cases.csv")}
    with pytest.raises(InputError, match="the data's split is not the one this run was trained with"):
        train(load_settings(more), run, resume=True)
    assert {name: (run / name).read_text() for name in record} == record  # refused before rewriting them


def test_mr_augmentation_turns_slices_in_their_plane_and_keeps_absent_sequences_zero():
    """A rotation of the (slices, rows, cols) volume about the slice axis: each output slice
    still comes from one depth (a tilt across the anisotropic slices would mix them); and
    sequences a study lacks stay zero, as at inference."""
    from BINDSLib.model.data import _augmentations

    cfg = tiny_config()
    d, h, w = cfg.mr_size
    depth = np.broadcast_to(np.arange(d, dtype=np.float32)[:, None, None], (d, h, w))
    vol = np.stack([depth] * 7)  # 7 channels, each slice k holding the value k
    t = _augmentations(cfg)["MR"]
    spread = []
    for seed in range(12):
        t.set_random_state(seed=seed)
        out = np.asarray(t({"image": torch.from_numpy(vol.copy()), "mask": torch.zeros((1, d, h, w))})["image"])
        inner = out[0, 1:-1, h // 4:3 * h // 4, w // 4:3 * w // 4]  # away from the padded borders
        spread.append(float(np.max(inner.max(axis=(1, 2)) - inner.min(axis=(1, 2)))))
    assert max(spread) < 0.6  # (noise and contrast change values a little; a tilt moves them by slices)
    study = make_case(2, True, ("MR",))
    study.images = [im for im in study.images if im.role.sequence not in ("DWI", "ADC")]
    sample = make_sample(study, cfg)
    absent = ~np.asarray(sample.prepared.inputs["MR"].channels[0], bool)
    assert absent.sum() == 2
    ds = StudyDataset([sample], augment=True, seed=1, config=cfg)
    for epoch in range(6):
        ds.set_epoch(epoch)
        assert not ds[0]["MR"]["images"][:, absent].any()


@pytest.mark.parametrize("change, message", [
    ({"model": {"dropout": 2}}, "dropout must be in [0, 1)"),
    ({"model": {"embed_dim": 0}}, "embed_dim must be at least 1"),
    ({"model": {"fusion_layers": 0}}, "fusion_layers must be at least 1"),
    ({"model": {"fusion_heads": 0}}, "fusion_heads must be at least 1"),
    ({"model": {"us_crop": [0, 0]}}, "us_crop must be at least 1"),
    ({"model": {"intensity_percentiles": [-10, 200]}}, "intensity_percentiles must be (low, high)"),
    ({"model": {"us_max_images": 1.5}}, "us_max_images must be a whole number"),
    ({"model": {"locator_2d": "resnet"}}, "locator_2d must be an object of encoder settings"),
    ({"model": {"bilateral_weight": "0.5"}}, "bilateral_weight must be a number"),
    ({"model": {"mg_size": "64"}}, "mg_size must be a list of 2 numbers"),
    ({"model": {"embed_dim": "16"}}, "embed_dim must be a whole number"),
    ({"train": {"segmentation_loss": "xx"}}, "train.segmentation_loss must be one of"),
    ({"train": {"loss_weights": {"alignment": -1}}}, "loss weights must be numbers >= 0"),
    ({"train": {"refiner": {"epochs": "3"}}}, "epochs must be a whole number"),
    ({"data": {"synthetic": {"n": 4, "seed": "a"}}}, "synthetic seed must be a whole number"),
    ({"data": {"synthetic": {"n": 4, "modalities": 3}}}, "modalities must be a list"),
])
def test_config_mistakes_are_named_before_any_work(tmp_path, change, message, capsys):
    import json

    doc = {"model": "demo", "data": {"synthetic": {"n": 4}}, "train": {}}
    doc.update(change)
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps(doc))
    assert main(["train", str(cfg), "--out", str(tmp_path / "run")]) == 3
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and str(cfg) in err, err
    assert not (tmp_path / "run").exists()


def test_valid_values_of_other_forms_are_still_taken():
    import numpy as np

    from BINDSLib.model.config import DiagnosisConfig
    from BINDSLib.model.train import parse_settings

    # synthetic modalities as make_study takes them: one name, any case
    for mods in ("MG", ["mg", "us"]):
        parse_settings({"data": {"synthetic": {"n": 4, "modalities": mods}}})
    # numpy numbers from a caller's sweep
    c = DiagnosisConfig(finding_topk=np.int64(4), dropout=np.float32(0.25), mg_size=np.array([160, 128]))
    assert (c.finding_topk, c.mg_size) == (4, (160, 128))


def test_config_files_in_other_encodings(tmp_path, capsys):
    import json

    doc = {"data": {"synthetic": {"n": 4}}, "train": {"validation_fraction": 1.0}}
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps(doc), encoding="utf-16")  # what PowerShell's > writes
    assert main(["train", str(cfg), "--out", str(tmp_path / "run")]) == 3
    assert "not UTF-8 text" in capsys.readouterr().err
    # a byte-order mark is read (the config is then refused for its own mistake)
    cfg.write_text("\ufeff" + json.dumps(doc), encoding="utf-8")
    assert main(["train", str(cfg), "--out", str(tmp_path / "run")]) == 3
    assert "validation_fraction must be in [0, 1)" in capsys.readouterr().err


def test_a_run_started_before_unsided_resumes_with_a_config_that_sets_it(tmp_path):
    """configs/us-busi.json gained "unsided"; the bundle's documented --resume of a run folder
    started from the config without it still continues (binds train sets it from the data)."""
    from BINDSLib.model.train import _check_resumable

    settings = load_settings(_config(tmp_path, epochs=(1, 1)))
    old = dataclasses.replace(settings.model, unsided=())
    (tmp_path / "config.json").write_text(json.dumps({"model": old.to_json(), "document": settings.document}))
    _check_resumable(dataclasses.replace(settings, model=dataclasses.replace(settings.model, unsided=("US",))),
                     tmp_path / "config.json")
    with pytest.raises(InputError, match="started with another model"):  # a real change still counts
        _check_resumable(dataclasses.replace(settings, model=dataclasses.replace(settings.model, embed_dim=32)),
                         tmp_path / "config.json")


def test_train_fits_the_uncertainty_band_on_the_stage_1_logits_inference_gives(tmp_path, caplog, monkeypatch):
    """uncertainty_band "fit": the band is fitted on the validation split's two-stage studies, on
    the stage-1 and full logits that inference gives (binds calibrate --fit band predicts them
    through DiagnosisModel), and recorded as calibrate records it."""
    import BINDSLib.model.train as train_mod
    from BINDSLib.model.calibration import fit_uncertainty_band

    folders = tmp_path / "studies"
    for i in range(12):
        write_study_folder(make_case(i, (True, False, None)[i % 3], ("US", "MR")), folders / f"case{i}")
    doc = {"model": tiny_config().to_json(), "data": [{"folders": "studies"}],
           "train": {"seed": 3, "batch_size": 2, "validation_fraction": 0.5, "data_workers": 1,
                     "uncertainty_band": "fit",
                     "phases": [{"name": "unimodal", "epochs": 1, "lr": 0.003, "fusion": False},
                                {"name": "multimodal", "epochs": 1, "lr": 0.002, "fusion": True}]},
           "bundle": {"name": "tiny-band", "version": "0.0.1"}}
    (tmp_path / "config.json").write_text(json.dumps(doc))
    seen = {}
    real = train_mod._fit_band

    def spy(pred, samples, y_val, temperature, threshold):
        seen.update(ids=[s.study_id for s in samples], full=pred["logit"].copy(),
                    first=pred["combinations"]["US"].copy(), y=np.asarray(y_val, float), t=temperature, thr=threshold)
        return real(pred, samples, y_val, temperature, threshold)

    monkeypatch.setattr(train_mod, "_fit_band", spy)
    assert main(["train", str(tmp_path / "config.json"), "--out", str(tmp_path / "run")]) == 0
    bundle = tmp_path / "run" / "bundle"
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())["binds"]
    fitted = json.loads((tmp_path / "run" / "final_metrics.json").read_text())["validation_uncertainty_band"]
    assert meta["uncertainty_band"] == fitted["new"] and meta["calibration"]["band_fitted_on"] == "validation split"
    assert fitted["n"] == 6 and fitted["n_malignant"] == 2
    # the logits it was fitted on are inference's (to float noise)
    model = DiagnosisModel.from_bundle(bundle, device="cpu")
    studies = {read_study_folder(p).study_id: read_study_folder(p) for p in folders.iterdir()}
    for sid, full, first in zip(seen["ids"], seen["full"], seen["first"]):
        assert model.predict(studies[sid], saliency="none").malignancy_logit == pytest.approx(full, abs=1e-3)
        assert model.predict(studies[sid], modalities=("US",), saliency="none").malignancy_logit == \
            pytest.approx(first, abs=1e-3)
    ok = np.isfinite(seen["y"])
    p1, p2 = (1 / (1 + np.exp(-z[ok] / seen["t"])) for z in (seen["first"], seen["full"]))
    assert list(fit_uncertainty_band(p1, p2, seen["y"][ok].astype(int), seen["thr"])[0]) == fitted["new"]
    # a split without two-stage studies keeps the default band, and says so
    doc["data"] = [{"folders": "us"}]
    for i in range(6):
        write_study_folder(make_case(i, (True, False, None)[i % 3], ("US",)), tmp_path / "us" / f"case{i}")
    (tmp_path / "config.json").write_text(json.dumps(doc))
    assert main(["train", str(tmp_path / "config.json"), "--out", str(tmp_path / "run2")]) == 0
    assert json.loads((tmp_path / "run2" / "bundle" / "configs" / "metadata.json").read_text()
                      )["binds"]["uncertainty_band"] == [0.02, 0.98]
    assert "keeps the default band" in caplog.text
