"""Lesion copy-paste (training augmentation): a finding of one film blended into a normal
film on the model grid, and the dataset that turns such a film into a positive example."""

from __future__ import annotations

import math

import numpy as np
import pytest

from BINDSLib.model.data import StudyDataset, collate, make_sample
from BINDSLib.model.paste import MIN_AREA, paste_lesion, usable_donor
from test_model_cases import make_case, tiny_config


def _disc(shape, centre, radius):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2


def _films(shape=(80, 60)):
    """A recipient (breast of 0.3 in the left 40 columns, black beyond) and a donor (breast of
    0.4 with a 0.7 finding filling its circle of radius 8 at (30, 20))."""
    recipient = np.zeros(shape, np.float32)
    recipient[:, :40] = 0.3
    donor = np.full(shape, 0.4, np.float32)
    mask = _disc(shape, (30, 20), 8)
    donor[mask] = 0.7
    return recipient, donor, mask


def test_the_finding_keeps_its_contrast_on_the_recipients_background_and_fades_at_its_edge():
    recipient, donor, mask = _films()
    out, landed = paste_lesion(recipient, donor, mask, np.random.default_rng(0))
    # it fits at the donor's own place, so it lands there
    assert np.array_equal(landed, mask)
    # 0.7 on a background of 0.4 becomes 0.7 - 0.4 + 0.3 on a background of 0.3
    assert out[30, 20] == pytest.approx(0.6, abs=1e-6)
    # outside the mask the recipient is untouched
    assert np.array_equal(out[~landed], recipient[~landed])
    # no step: the donor's finding reaches the mask's edge, the pasted one fades out there
    edge = landed & ~_disc(out.shape, (30, 20), 7)
    assert np.abs(out[edge] - 0.3).max() < 0.15  # (pasted hard, they would be 0.6)
    assert np.all(np.diff(out[30, 20:29]) <= 1e-6)  # falling from the centre to the edge
    # the inputs are not changed
    assert recipient[30, 20] == np.float32(0.3) and donor[30, 20] == np.float32(0.7)


def test_a_finding_off_the_recipients_breast_moves_into_it_or_is_not_pasted():
    recipient, donor, _ = _films()
    mask = _disc(recipient.shape, (30, 48), 6)  # where the recipient is black
    donor[mask] = 0.7
    for seed in range(5):
        got = paste_lesion(recipient, donor, mask, np.random.default_rng(seed))
        assert got is not None
        out, landed = got
        assert landed.sum() == mask.sum() and not np.array_equal(landed, mask)
        assert (recipient[landed] > 0).mean() >= 0.95  # on the breast
        assert out[~landed].tolist() == recipient[~landed].tolist()
    # a film label apart from the breast is not breast: a finding at its place moves away
    labelled = recipient.copy()
    labelled[2:30, 44:60] = 0.9
    on_label = _disc(recipient.shape, (16, 52), 6)
    for seed in range(5):
        _, landed = paste_lesion(labelled, donor, on_label, np.random.default_rng(seed))
        assert landed[:, :40].sum() >= 0.95 * on_label.sum()
    # no breast at all, an empty mask: nothing pasted
    assert paste_lesion(np.zeros_like(recipient), donor, mask, np.random.default_rng(0)) is None
    assert paste_lesion(recipient, donor, np.zeros_like(mask), np.random.default_rng(0)) is None
    with pytest.raises(ValueError, match="shapes differ"):
        paste_lesion(recipient[:-1], donor, mask, np.random.default_rng(0))


def test_a_donor_must_be_a_finding_of_some_size_on_its_own_breast():
    recipient, donor, mask = _films()
    assert usable_donor(donor, mask)
    # too small to show once blended
    tiny = _disc(donor.shape, (30, 20), 1.5)
    assert tiny.sum() < MIN_AREA and not usable_donor(donor, tiny)
    assert paste_lesion(recipient, donor, tiny, np.random.default_rng(0)) is None
    # its background ring on the film's background, not on breast: its contrast is unknown
    edge = donor.copy()
    edge[:, 24:] = 0.0
    assert not usable_donor(edge, mask)
    assert paste_lesion(recipient, edge, mask, np.random.default_rng(0)) is None


def test_only_the_pixels_under_the_mask_change_whatever_the_rest_holds():
    recipient, donor, mask = _films()
    recipient[70, 5] = np.nan  # a NaN and values out of [0, 1] away from the finding
    recipient[75, 5:10] = -0.5
    recipient[60, 30] = 1.7
    donor[40, 35] = np.nan  # in the donor's ring: left out of its background
    out, landed = paste_lesion(recipient, donor, mask, np.random.default_rng(0))
    assert np.isnan(out[70, 5]) and np.array_equal(out[75, 5:10], recipient[75, 5:10]) and out[60, 30] == np.float32(1.7)
    assert np.isfinite(out[landed]).all() and out[30, 20] == pytest.approx(0.6, abs=1e-6)
    # a finding whose fade is wider than the film is high: pasted all the same
    film = np.full((12, 200), 0.3, np.float32)
    stripe = np.zeros(film.shape, bool)
    stripe[4:8, 20:170] = True
    out, landed = paste_lesion(film, np.where(stripe, 0.7, 0.4).astype(np.float32), stripe, np.random.default_rng(0))
    assert out.shape == film.shape and np.array_equal(landed, stripe) and out[6, 95] == pytest.approx(0.6, abs=1e-3)


def _mg_samples(cfg, labels=(None, None, True, True)):
    """Mammography-only studies (a finding in the left views of the non-normal ones)."""
    return [make_sample(make_case(i, label, ("MG",)), cfg) for i, label in enumerate(labels)]


def test_a_normal_mammogram_becomes_a_positive_example_with_the_pasted_outline():
    cfg = tiny_config()
    samples = _mg_samples(cfg)
    assert [s.abnormal for s in samples] == [0.0, 0.0, 1.0, 1.0]
    samples[1].prepared.inputs["MG"].mask_given[:] = False  # a normal study without masks
    plain = StudyDataset(samples, augment=True, seed=0, config=cfg)
    ds = StudyDataset(samples, augment=True, seed=0, config=cfg, lesion_paste=1.0)
    assert {j for j, _ in ds._donors} == {2, 3}  # the views with a finding
    seen = []
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
            seen.append(mg["images"])
        # the studies with a finding are left as they are
        assert np.array_equal(ds[2]["MG"]["images"], plain[2]["MG"]["images"])
    assert not np.array_equal(seen[0], seen[2])  # another epoch, another paste
    # the cached samples are not changed, and the batch carries the new labels
    assert not samples[0].prepared.inputs["MG"].masks.any()
    assert not samples[1].prepared.inputs["MG"].mask_given.any()
    batch = collate([ds[i] for i in range(4)])
    assert batch["abnormal"].tolist() == [1.0] * 4 and batch["malignant"].tolist() == [1.0] * 4
    # the same epoch pastes the same way, also in a new dataset (a resumed run)
    again = StudyDataset(samples, augment=True, seed=0, config=cfg, lesion_paste=1.0)
    again.set_epoch(1)
    assert np.array_equal(again[0]["MG"]["images"], seen[2])


def test_the_pasted_study_takes_the_donors_labels():
    cfg = tiny_config()
    samples = _mg_samples(cfg, (None, False))  # a benign donor
    ds = StudyDataset(samples, augment=True, seed=0, config=cfg, lesion_paste=1.0)
    item = ds[0]
    assert (item["abnormal"], item["malignant"], item["subtype"]) == (1.0, 0.0, samples[1].subtype)
    assert item["pathology"] is None
    # a donor of unknown malignancy, or with findings in both breasts, gives none
    samples[1].malignant = math.nan
    assert StudyDataset(samples, augment=True, seed=0, config=cfg, lesion_paste=1.0)._donors == []
    samples[1].malignant = 0.0
    inp = samples[1].prepared.inputs["MG"]
    right = next(k for k in range(len(inp.side)) if inp.side[k] != inp.side[0])
    inp.masks[right] = inp.masks[0]
    assert StudyDataset(samples, augment=True, seed=0, config=cfg, lesion_paste=1.0)._donors == []


def test_paste_leaves_other_studies_validation_and_a_zero_rate_alone():
    cfg = tiny_config()
    samples = _mg_samples(cfg)
    both = make_sample(make_case(5, None, ("MG", "US")), cfg)  # normal US would contradict a finding
    unknown = make_sample(make_case(6, None, ("MG",)), cfg)
    unknown.abnormal = math.nan  # not known to be normal
    ds = StudyDataset([*samples, both, unknown], augment=True, seed=0, config=cfg, lesion_paste=1.0)
    for i in (4, 5):
        assert not ds[i]["MG"]["masks"].any()
    assert ds[4]["abnormal"] == 0.0 and math.isnan(ds[5]["abnormal"])
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
        log = (tmp_path / str(rate) / "run" / "train.log").read_text()
        assert ("normal mammography studies (each with probability 1 per epoch)" in log) == pasted
    # a split with nothing to paste (no mammograms) says so
    calls.clear()
    cfg = _config(tmp_path / "us", epochs=(1, 0), modality_sets=(("US",),), lesion_paste=0.5)
    assert main(["train", str(cfg), "--out", str(tmp_path / "us" / "run")]) == 0
    assert not calls
    log = (tmp_path / "us" / "run" / "train.log").read_text()
    assert "lesion_paste 0.5 does nothing: the training split has no mammogram with a usable lesion mask" in log
