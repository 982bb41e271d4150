"""Lesion copy-paste (training augmentation): a finding of one film blended into a normal
film on the model grid, and the dataset that turns such a film into a positive example."""

from __future__ import annotations

import numpy as np
import pytest

from BINDSLib.model.data import StudyDataset, collate, make_sample
from BINDSLib.model.paste import paste_lesion
from test_model_cases import make_case, tiny_config


def _disc(shape, centre, radius):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2


def _films(shape=(80, 60)):
    """A recipient (breast of 0.5 in the left 40 columns, black beyond) and a donor (0.4 with
    a bright 0.9 finding inside a circle of radius 8 at (30, 20))."""
    recipient = np.zeros(shape, np.float32)
    recipient[:, :40] = 0.5
    donor = np.full(shape, 0.4, np.float32)
    mask = _disc(shape, (30, 20), 8)
    donor[_disc(shape, (30, 20), 5)] = 0.9
    return recipient, donor, mask


def test_the_finding_keeps_its_contrast_on_the_recipients_background():
    recipient, donor, mask = _films()
    out, landed = paste_lesion(recipient, donor, mask, np.random.default_rng(0))
    # it fits at the donor's own place, so it lands there
    assert np.array_equal(landed, mask)
    # 0.9 on a background of 0.4 becomes 0.9 - 0.4 + 0.5 on a background of 0.5
    assert out[30, 20] == pytest.approx(1.0, abs=1e-6)
    # outside the mask the recipient is untouched
    assert np.array_equal(out[~landed], recipient[~landed])
    # no step at the mask's edge: its outer pixels stay near the recipient's 0.5
    edge = landed & ~_disc(out.shape, (30, 20), 7)
    assert np.abs(out[edge] - 0.5).max() < 0.05
    # the inputs are not changed
    assert recipient[30, 20] == 0.5 and donor[30, 20] == np.float32(0.9)


def test_a_finding_off_the_recipients_breast_moves_into_it_or_is_not_pasted():
    recipient, donor, _ = _films()
    mask = _disc(recipient.shape, (30, 48), 6)  # where the recipient is black
    donor[_disc(recipient.shape, (30, 48), 4)] = 0.9
    for seed in range(5):
        got = paste_lesion(recipient, donor, mask, np.random.default_rng(seed))
        assert got is not None
        out, landed = got
        assert landed.sum() == mask.sum() and not np.array_equal(landed, mask)
        assert (recipient[landed] > 0).all()  # all on the breast
        assert out[~landed].tolist() == recipient[~landed].tolist()
    # no breast at all, an empty mask: nothing pasted
    assert paste_lesion(np.zeros_like(recipient), donor, mask, np.random.default_rng(0)) is None
    assert paste_lesion(recipient, donor, np.zeros_like(mask), np.random.default_rng(0)) is None
    with pytest.raises(ValueError, match="shapes differ"):
        paste_lesion(recipient[:-1], donor, mask, np.random.default_rng(0))


def _mg_samples(cfg):
    """Two normal and two malignant mammography-only studies (the findings in the left views)."""
    return [make_sample(make_case(i, None if i < 2 else True, ("MG",)), cfg) for i in range(4)]


def test_a_normal_mammogram_becomes_a_positive_example_with_the_pasted_outline():
    cfg = tiny_config()
    samples = _mg_samples(cfg)
    assert [s.abnormal for s in samples] == [0.0, 0.0, 1.0, 1.0]
    plain = StudyDataset(samples, augment=True, seed=0, config=cfg)
    ds = StudyDataset(samples, augment=True, seed=0, config=cfg, lesion_paste=1.0)
    assert {j for j, _ in ds._donors} == {2, 3}  # the malignant studies' views with a mask
    for epoch in range(3):
        ds.set_epoch(epoch)
        plain.set_epoch(epoch)
        for i in (0, 1):
            item = ds[i]
            assert item["abnormal"] == 1.0 and item["malignant"] == 1.0
            mg = item["MG"]
            pasted = [k for k in range(mg["masks"].shape[0]) if mg["masks"][k].any()]
            assert len(pasted) == 1 and mg["mask_given"][pasted[0]]
            # the other views are augmented as without pasting; the pasted one differs
            other = plain[i]["MG"]["images"]
            for k in range(mg["images"].shape[0]):
                assert np.array_equal(mg["images"][k], other[k]) == (k not in pasted)
        # the studies with a finding are left as they are
        assert np.array_equal(ds[2]["MG"]["images"], plain[2]["MG"]["images"])
    # the cached samples are not changed, and the batch carries the new labels
    assert not samples[0].prepared.inputs["MG"].masks.any()
    batch = collate([ds[i] for i in range(4)])
    assert batch["abnormal"].tolist() == [1.0] * 4 and batch["malignant"].tolist() == [1.0] * 4
    # the same epoch pastes the same way (a resumed run sees the same augmentation)
    ds.set_epoch(1)
    first = ds[0]["MG"]["images"]
    ds.set_epoch(1)
    assert np.array_equal(ds[0]["MG"]["images"], first)


def test_paste_leaves_multimodal_studies_validation_and_a_zero_rate_alone():
    cfg = tiny_config()
    samples = _mg_samples(cfg)
    both = make_sample(make_case(5, None, ("MG", "US")), cfg)  # normal US would contradict a finding
    ds = StudyDataset([*samples, both], augment=True, seed=0, config=cfg, lesion_paste=1.0)
    assert ds[4]["abnormal"] == 0.0 and not ds[4]["MG"]["masks"].any()
    for rate, augment in ((0.0, True), (1.0, False)):
        off = StudyDataset(samples, augment=augment, seed=0, config=cfg, lesion_paste=rate)
        assert off[0]["abnormal"] == 0.0 and not off[0]["MG"]["masks"].any()
    # with no donor (no finding with a mask) there is nothing to paste
    alone = StudyDataset(samples[:2], augment=True, seed=0, config=cfg, lesion_paste=1.0)
    assert alone[0]["abnormal"] == 0.0


def test_binds_train_pastes_when_its_config_says_so(tmp_path, monkeypatch):
    import BINDSLib.model.data as data
    from BINDSLib.cli import main
    from test_train import _config

    calls = []

    def counting(*args):
        calls.append(args[0].shape)
        return paste_lesion(*args)

    monkeypatch.setattr(data, "paste_lesion", counting)
    for rate, pasted in ((0.0, False), (1.0, True)):
        calls.clear()
        cfg = _config(tmp_path / str(rate), epochs=(1, 0), modality_sets=(("MG",),), lesion_paste=rate)
        assert main(["train", str(cfg), "--out", str(tmp_path / str(rate) / "run")]) == 0
        assert bool(calls) == pasted
