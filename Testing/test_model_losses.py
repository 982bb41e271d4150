"""Losses (alignment values on known inputs), the pathology encoder and its prototypes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from BINDSLib.model.data import StudyDataset, collate, make_sample, modality_keep
from BINDSLib.model.losses import (
    DiagnosisLoss, LossWeights, alignment_loss, contrastive_alignment_loss, cosine_power_loss,
)
from BINDSLib.model.network import DiagnosisNetwork
from BINDSLib.model.pathology import (
    FEATURE_NAMES, PathologyEncoder, histology_group, pathology_features,
)
from BINDSLib.study import Pathology
from test_model_cases import make_case, tiny_config


def test_cosine_cubed_known_values():
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [2.0, 2.0]])
    b = torch.tensor([[3.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [1.0, 0.0]])
    # cos = 1, 0, -1, 1/sqrt(2) -> (1 - cos)^3 = 0, 1, 8, (1 - 0.7071)^3
    expected = (0 + 1 + 8 + (1 - 1 / math.sqrt(2)) ** 3) / 4
    assert cosine_power_loss(a, b).item() == pytest.approx(expected, rel=1e-6)
    assert alignment_loss(a, b, "cosine3").item() == pytest.approx(expected, rel=1e-6)


def test_contrastive_known_value():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    path = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t, tt = 0.5, 0.05
    # logits = I / t -> row softmax of [2, 0]; targets ~ one-hot (softmax of [20, 0])
    target = torch.softmax(torch.tensor([1 / tt, 0.0]), 0)
    logp = torch.log_softmax(torch.tensor([1 / t, 0.0]), 0)
    expected = -(target * logp).sum().item()
    got = contrastive_alignment_loss(img, path, temperature=t, target_temperature=tt).item()
    assert got == pytest.approx(expected, rel=1e-5)
    # identical pathology records share the target: swapping their images costs nothing extra
    same = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    a = contrastive_alignment_loss(img, same, 0.5)
    b = contrastive_alignment_loss(img.flip(0), same, 0.5)
    assert a.item() == pytest.approx(b.item())


def test_alignment_pulls_image_not_pathology():
    img = torch.randn(3, 4, requires_grad=True)
    path = torch.randn(3, 4, requires_grad=True)
    alignment_loss(img, path, "cosine3").backward()
    assert img.grad is not None and img.grad.abs().sum() > 0
    assert path.grad is None
    assert alignment_loss(img[:0], path[:0]).item() == 0.0
    with pytest.raises(ValueError):
        alignment_loss(img, path, "l2")


def test_pathology_features():
    p = Pathology(malignant=True, histology="invasive ductal carcinoma (NST)", grade=3,
                  er_percent=0, pr_percent=0, her2_score=2, her2_ish_amplified=True, ki67_percent=45)
    f = dict(zip(FEATURE_NAMES, pathology_features(p)))
    assert f["malignant"] == 1 and f["histology_invasive_ductal"] == 1 and f["grade_3"] == 1
    assert f["er_fraction"] == 0 and f["er_unknown"] == 0 and f["ki67_fraction"] == pytest.approx(0.45)
    assert f["her2_score_2"] == 1 and f["her2_positive"] == 1
    b = dict(zip(FEATURE_NAMES, pathology_features(Pathology(malignant=False, histology="intraductal papilloma"))))
    assert b["malignant"] == 0 and b["histology_papilloma"] == 1 and b["er_unknown"] == 1
    assert b["grade_unknown"] == 1 and b["her2_unknown"] == 1
    assert histology_group("ductal carcinoma in situ") == "in_situ"
    assert histology_group("fibrocystic change (cyst)") == "cyst_fibrocystic"
    assert histology_group(None) == "unknown"


def test_prototypes_follow_malignant_embeddings():
    enc = PathologyEncoder(align_dim=2, hidden=4, momentum=0.5)
    assert not enc.has_prototype
    z = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    enc.update_prototypes(z, torch.tensor([1.0, 0.0]))
    assert torch.allclose(enc.prototype_malignant, torch.tensor([1.0, 0.0]))  # first: set
    assert torch.allclose(enc.prototype_benign, torch.tensor([0.0, 1.0]))
    enc.update_prototypes(torch.tensor([[0.0, 5.0]]), torch.tensor([1.0]))
    assert torch.allclose(enc.prototype_malignant, torch.tensor([0.5, 0.5]))  # EMA
    assert "prototype_malignant" in enc.state_dict()


def test_diagnosis_loss_handles_partial_labels():
    torch.manual_seed(0)
    cfg = tiny_config()
    net = DiagnosisNetwork(cfg)
    studies = [make_case(0, True), make_case(1, None, ("US",)), make_case(2, False, ("MG", "MR"))]
    samples = [make_sample(s, cfg) for s in studies]
    samples[1].malignant = float("nan")  # unknown label
    ds = StudyDataset(samples)
    batch = collate([ds[i] for i in range(3)])
    out = net(batch)
    for kind in ("cosine3", "contrastive", "none"):
        total, parts = DiagnosisLoss(alignment=kind)(out, batch, fusion=True,
                                                     prototype=torch.ones(cfg.align_dim))
        assert torch.isfinite(total)
        assert set(parts) >= {"malignancy", "auxiliary", "subtype", "segmentation", "alignment",
                              "background", "pathology"}
    assert parts["alignment"] == 0.0
    total, parts = DiagnosisLoss()(out, batch, fusion=False)
    assert "malignancy" not in parts and "subtype" not in parts


def test_modality_dropout_keeps_at_least_one():
    batch = {f"{m}_present": torch.ones(200, 1, dtype=torch.bool) for m in ("MG", "US", "MR")}
    batch["MR_present"][:100] = False  # half the studies have two modalities
    keep = modality_keep(batch, 0.5, np.random.default_rng(0))
    kept = torch.stack([keep[m] for m in ("MG", "US", "MR")], 1) & torch.stack(
        [batch[f"{m}_present"][:, 0] for m in ("MG", "US", "MR")], 1)
    n = kept.sum(1)
    assert n.min() >= 1
    dropped = (n < torch.stack([batch[f"{m}_present"][:, 0] for m in ("MG", "US", "MR")], 1).sum(1))
    assert 0.3 < dropped.float().mean() < 0.7  # p = 0.5
    assert (n[100:] == 1).any() and (n[100:] == 2).any()  # one or two dropped out of three


def test_segmentation_loss_choice():
    import torch

    from BINDSLib.model.losses import DiagnosisLoss

    logits = torch.full((2, 1, 8, 8), -3.0)
    target = torch.zeros((2, 1, 8, 8))
    target[:, :, 3:5, 3:5] = 1
    ce = DiagnosisLoss(segmentation="dicece").segmentation(logits, target)
    focal = DiagnosisLoss(segmentation="dicefocal").segmentation(logits, target)
    assert torch.isfinite(ce) and torch.isfinite(focal) and not torch.isclose(ce, focal)
    with pytest.raises(ValueError, match="segmentation loss"):
        DiagnosisLoss(segmentation="bce")


def test_lesion_prior_sets_the_locators_starting_probability():
    import torch

    from BINDSLib.model.network import DiagnosisNetwork
    from test_model_cases import tiny_config

    net = DiagnosisNetwork(tiny_config(lesion_prior=0.01))
    for m in ("MG", "US", "MR"):
        assert torch.allclose(torch.sigmoid(net.branches[m].locator.head[-1].bias), torch.tensor(0.01))
    with pytest.raises(ValueError, match="lesion_prior"):
        tiny_config(lesion_prior=1.5)


def test_finding_term_is_the_study_level_bce_of_the_largest_image_finding_logit():
    from BINDSLib.model.data import study_abnormal
    from BINDSLib.model.network import finding_logits, study_max

    torch.manual_seed(0)
    cfg = tiny_config()
    net = DiagnosisNetwork(cfg)
    studies = [make_case(0, True, ("MG", "US")), make_case(1, None, ("US",)), make_case(2, False, ("MG",))]
    samples = [make_sample(s, cfg) for s in studies]
    assert [s.abnormal for s in samples] == [1.0, 0.0, 1.0]
    assert [study_abnormal(s) for s in studies] == [1.0, 0.0, 1.0]
    batch = collate([StudyDataset(samples)[i] for i in range(3)])
    assert batch["abnormal"].tolist() == [1.0, 0.0, 1.0]
    out = net(batch)
    _, parts = DiagnosisLoss()(out, batch, fusion=True)
    assert "finding" not in parts  # weight 0 (the default): not computed
    loss = DiagnosisLoss(LossWeights(finding=1.0), finding_cell=cfg.finding_cell, finding_topk=cfg.finding_topk)
    _, parts = loss(out, batch, fusion=False)
    expected = []
    for m, e in out["encodings"].items():
        f = study_max(finding_logits(e.lesion_logits, cfg.finding_cell, cfg.finding_topk), e.index[:, 0], 3)
        rows = [b for b in range(3) if bool(batch[f"{m}_present"][b].any())]
        # the largest logit over the study's images of that modality (MG: four views)
        for b in rows:
            sel = e.index[:, 0] == b
            assert float(f[b].detach()) == pytest.approx(float(
                finding_logits(e.lesion_logits[sel], cfg.finding_cell, cfg.finding_topk).max().detach()))
        expected.append(torch.nn.functional.binary_cross_entropy_with_logits(
            f[rows], batch["abnormal"][rows]))
    assert parts["finding"] == pytest.approx(float(torch.stack(expected).mean().detach()), rel=1e-5)
    # an unknown label is left out, not counted as normal
    batch["abnormal"][1] = float("nan")
    _, parts_nan = loss(out, batch, fusion=False)
    us = out["encodings"]["US"]
    f_us = study_max(finding_logits(us.lesion_logits, cfg.finding_cell, cfg.finding_topk), us.index[:, 0], 3)
    mg_term = expected[list(out["encodings"]).index("MG")]
    us_term = torch.nn.functional.binary_cross_entropy_with_logits(f_us[[0]], batch["abnormal"][[0]])
    assert parts_nan["finding"] == pytest.approx(float(((mg_term + us_term) / 2).detach()), rel=1e-5)


def test_pointing_term_is_the_spatial_softmax_cross_entropy_inside_the_lesion():
    from BINDSLib.model.losses import pointing_loss

    logits = torch.zeros(3, 1, 4, 5)
    masks = torch.zeros(3, 1, 4, 5)
    masks[0, 0, 1, 1:3] = 1  # 2 of 20 pixels, a flat map: -log(2/20)
    masks[1, 0, 3, 4] = 1
    logits[1, 0, 3, 4] = 50.0  # the map's mass all inside: ~0
    # image 2 has no lesion: left out
    assert float(pointing_loss(logits[:1], masks[:1])) == pytest.approx(math.log(10.0), rel=1e-6)
    assert float(pointing_loss(logits[1:2], masks[1:2])) == pytest.approx(0.0, abs=1e-6)
    assert float(pointing_loss(logits, masks)) == pytest.approx(math.log(10.0) / 2, rel=1e-6)
    assert pointing_loss(logits[2:], masks[2:]) is None
    # its gradient raises the logits inside the lesion and lowers those outside
    x = torch.zeros(1, 1, 4, 5, requires_grad=True)
    pointing_loss(x, masks[:1]).backward()
    assert (x.grad[masks[:1] > 0] < 0).all() and (x.grad[masks[:1] == 0] > 0).all()


def test_pointing_term_in_the_diagnosis_loss():
    torch.manual_seed(0)
    cfg = tiny_config()
    net = DiagnosisNetwork(cfg)
    studies = [make_case(0, True, ("MG", "US")), make_case(1, None, ("US",))]
    samples = [make_sample(s, cfg) for s in studies]  # (reference masks used)
    batch = collate([StudyDataset(samples)[i] for i in range(2)])
    out = net(batch)
    _, parts = DiagnosisLoss()(out, batch, fusion=False)
    assert "pointing" not in parts  # weight 0 (the default): not computed
    total0, _ = DiagnosisLoss(LossWeights(pointing=0.0))(out, batch, fusion=False)
    total, parts = DiagnosisLoss(LossWeights(pointing=2.0))(out, batch, fusion=False)
    from BINDSLib.model.losses import pointing_loss

    expected = []
    for m, e in out["encodings"].items():
        b, s = e.index[:, 0], e.index[:, 1]
        given = batch[f"{m}_mask_given"][b, s]
        term = pointing_loss(e.lesion_logits[given], batch[f"{m}_masks"][b, s][given].float())
        if term is not None:  # MG: the left views' balls; US: study 0's (study 1 is normal: empty)
            expected.append(term)
    assert len(expected) == 2
    assert parts["pointing"] == pytest.approx(float(torch.stack(expected).mean().detach()), rel=1e-5)
    assert float(total - total0) == pytest.approx(2.0 * parts["pointing"], rel=1e-4)
    assert LossWeights.from_json({"pointing": 1}).pointing == 1.0
