"""The synthetic teaching-case generator (BINDSLib.synthetic): determinism, roles and
geometry, masks, lesion consistency across modalities, class and subtype behaviour,
longitudinal outcomes, and writing batches to disk."""

from __future__ import annotations

import csv
import datetime as dt
import importlib.util

import numpy as np
import pytest

from BINDSLib.errors import OutputError
from BINDSLib.study import Diagnosis, Modality, MRSequence, Subtype
from BINDSLib.studyfolder import read_history, read_study_folder, study_to_json
from BINDSLib.synthetic import (
    SIZES, SUBTYPE_PROBABILITIES, derive_seed, make_case, make_cohort, make_history, make_study,
    sample_pathology, sample_phenotype, sample_woman, write_phantoms,
)
from BINDSLib.synthetic.mri import curve_type, kinetic_curve

MG_LABELS = ["MG_L_CC", "MG_L_MLO", "MG_R_CC", "MG_R_MLO"]


def _same_images(a, b) -> None:
    assert [im.label for im in a.images] == [im.label for im in b.images]
    for x, y in zip(a.images, b.images):
        assert x.voxels.dtype == y.voxels.dtype
        assert np.array_equal(x.voxels, y.voxels), x.label
        assert np.array_equal(x.lesion_mask, y.lesion_mask), x.label
        assert x.geometry == y.geometry and x.role == y.role


@pytest.fixture(scope="module")
def malignant_case():
    return make_case(11, diagnosis="malignant")


@pytest.fixture(scope="module")
def class_features():
    """Lesion features measured on the images of 20 benign and 20 malignant small studies."""
    out = {"benign": [], "malignant": []}
    for s in range(40):
        diag = "malignant" if s % 2 else "benign"
        st = make_study(1000 + s, diagnosis=diag, modalities=("US", "MR"))
        m = st.image("MR_ADC").lesion_mask.astype(bool)
        pre = st.image("MR_T1_PRE").voxels[m].astype(float).mean()
        first = st.image("MR_DCE1").voxels[m].astype(float).mean() - pre
        last = st.image("MR_DCE3").voxels[m].astype(float).mean() - pre
        us = st.of("US")[0]
        rows, cols = np.nonzero(us.lesion_mask[0])
        height = (rows.max() - rows.min() + 1) * us.geometry.spacing_mm[1]
        width = (cols.max() - cols.min() + 1) * us.geometry.spacing_mm[0]
        out[diag].append({"adc": st.image("MR_ADC").voxels[m].astype(float).mean(),
                          "washout": curve_type(first, last) == "washout",
                          "taller": height > width})
    return out


# --- determinism ------------------------------------------------------------------------------
def test_same_seed_gives_identical_studies():
    a, b = make_study(5), make_study(5)
    _same_images(a, b)
    assert study_to_json(a) == study_to_json(b)


def test_different_seeds_give_different_images():
    a, b = make_study(5, modalities=("MG",)), make_study(6, modalities=("MG",))
    assert not np.array_equal(a.image("MG_L_CC").voxels, b.image("MG_L_CC").voxels)


def test_asking_for_fewer_modalities_leaves_the_others_unchanged():
    full = make_study(8)
    mr_only = make_study(8, modalities=("MR",))
    assert mr_only.modalities() == [Modality.MR]
    for im in mr_only.images:
        assert np.array_equal(im.voxels, full.image(im.label).voxels)


# --- roles, geometry, masks -------------------------------------------------------------------
def test_roles_and_geometry(malignant_case):
    st, truth = malignant_case.study, malignant_case.truth
    assert st.synthetic and "synthetic" in st.description.lower()
    assert st.diagnosis is Diagnosis.MALIGNANT and st.pathology.malignant
    labels = [im.label for im in st.images]
    us_label = f"US_{truth.laterality}_{truth.clock_position}h"
    assert labels == MG_LABELS + [us_label, "MR_T1_PRE", "MR_DCE1", "MR_DCE2", "MR_DCE3", "MR_T2",
                                  "MR_DWI_b800", "MR_ADC"]
    demo = SIZES["demo"]
    for im in st.of("MG"):
        assert im.shape == (1, *demo.mg_shape) and im.voxels.dtype == np.uint16
        assert im.geometry.spacing_mm[:2] == (demo.mg_spacing_mm, demo.mg_spacing_mm)
        breast_cols = np.nonzero(im.voxels[0] > 300)[1]
        # chest wall on the image's left for the left breast, on its right for the right one
        if im.role.laterality == "L":
            assert breast_cols.mean() < im.shape[2] / 2 and (im.voxels[0][:, 0] > 300).any()
        else:
            assert breast_cols.mean() > im.shape[2] / 2 and (im.voxels[0][:, -1] > 300).any()
        col_dir = im.geometry.direction_matrix[:, 0]          # towards the nipple: anterior
        assert np.allclose(col_dir, [0, -1, 0] if im.role.laterality == "L" else [0, 1, 0])
    us = st.image(us_label)
    assert us.role.modality is Modality.US and us.role.laterality == truth.laterality
    assert us.role.clock_position == truth.clock_position and us.voxels.dtype == np.uint8
    mr = st.of("MR")
    assert all(im.geometry == mr[0].geometry for im in mr)
    assert mr[0].geometry.spacing_mm == demo.mr_spacing_mm
    assert np.allclose(mr[0].geometry.direction_matrix, np.eye(3))      # axial LPS
    assert mr[0].shape == demo.mr_shape
    dce = [im.role for im in mr if im.role.sequence is MRSequence.DCE]
    assert [(r.phase, r.phase_time_s) for r in dce] == [(1, 90.0), (2, 180.0), (3, 360.0)]
    assert st.image("MR_T1_PRE").role.phase == 0
    assert st.image("MR_DWI_b800").role.b_value == 800.0


def test_masks_are_non_empty_exactly_on_lesion_images(malignant_case):
    st, lat = malignant_case.study, malignant_case.truth.laterality
    for im in st.images:
        assert im.lesion_mask is not None and im.lesion_mask.shape == im.shape
        expected = im.modality is not Modality.MG or im.role.laterality == lat
        assert bool(im.lesion_mask.any()) == expected, im.label
    normal = make_study(3, diagnosis="normal")
    assert normal.diagnosis is Diagnosis.NORMAL and normal.pathology is None
    assert all(im.lesion_mask is not None and not im.lesion_mask.any() for im in normal.images)


def test_lesion_is_at_the_same_place_in_every_modality(malignant_case):
    st, c = malignant_case.study, np.array(malignant_case.truth.lesion_center_lps)

    def centroid_lps(im):
        k, j, i = (a.mean() for a in np.nonzero(im.lesion_mask))
        return im.geometry.index_to_lps((i, j, k))

    assert np.linalg.norm(centroid_lps(st.image("MR_T1_PRE")) - c) < 4.0
    assert np.linalg.norm(centroid_lps(st.of("US")[0]) - c) < 3.0
    for label in MG_LABELS:
        im = st.image(label)
        if not im.lesion_mask.any():
            continue
        normal = im.geometry.direction_matrix[:, 2]         # the X-ray direction
        d = c - centroid_lps(im)
        assert np.linalg.norm(d - (d @ normal) * normal) < 4.0, label
        f = im.findings[0]
        j, i = np.nonzero(im.lesion_mask[0])
        assert f.abnormality == "mass"
        assert abs(f.center_col - i.mean()) < 5 and abs(f.center_row - j.mean()) < 5


# --- appearance by class and subtype --------------------------------------------------------
def test_malignant_and_benign_differ_in_the_expected_direction(class_features):
    b, m = class_features["benign"], class_features["malignant"]
    adc_b = np.array([x["adc"] for x in b])
    adc_m = np.array([x["adc"] for x in m])
    assert adc_m.mean() < adc_b.mean() - 200                         # 1e-6 mm^2/s
    assert np.mean([x["washout"] for x in m]) > np.mean([x["washout"] for x in b]) + 0.15
    assert np.mean([x["taller"] for x in m]) > np.mean([x["taller"] for x in b]) + 0.1


def test_classes_overlap(class_features):
    b, m = class_features["benign"], class_features["malignant"]
    adc_b = np.array([x["adc"] for x in b])
    adc_m = np.array([x["adc"] for x in m])
    assert adc_m.max() > adc_b.min()
    values = np.concatenate([adc_b, adc_m])
    labels = np.r_[np.zeros(len(b)), np.ones(len(m))]
    best = max(np.mean((values < t) == labels) for t in values)
    assert best < 0.95                                                  # no trivial ADC cut
    assert any(x["washout"] for x in b) and not all(x["washout"] for x in m)
    assert any(x["taller"] for x in b) and not all(x["taller"] for x in m)


def test_subtype_mix_and_receptor_consistency():
    rng = np.random.default_rng(0)
    recs = [sample_pathology(rng, "malignant") for _ in range(3000)]
    for st, p in SUBTYPE_PROBABILITIES.items():
        assert abs(np.mean([r.subtype is st for r in recs]) - p) < 0.035, st
    assert all(r.malignant and r.histology and r.grade in (1, 2, 3) for r in recs)
    benign = sample_pathology(rng, "benign")
    assert not benign.malignant and benign.subtype is None and benign.histology
    tn = make_study(4, subtype="triple_negative", modalities=("US",))
    assert tn.diagnosis is Diagnosis.MALIGNANT and tn.pathology.subtype is Subtype.TRIPLE_NEGATIVE
    assert tn.pathology.er_percent == 0 and tn.pathology.pr_percent == 0


def test_subtype_shapes_the_phenotype():
    rng = np.random.default_rng(1)
    freq = {}
    for st in Subtype:
        phs = [sample_phenotype(rng, sample_pathology(rng, "malignant", subtype=st)) for _ in range(300)]
        freq[st] = {k: np.mean([f(p) for p in phs]) for k, f in {
            "rim": lambda p: p.pattern == "rim", "washout": lambda p: p.kinetics == "washout",
            "calc": lambda p: p.calcifications == "fine_pleomorphic",
            "spiculated": lambda p: p.margin == "spiculated"}.items()}
    tn, la, her2 = Subtype.TRIPLE_NEGATIVE, Subtype.LUMINAL_A, Subtype.HER2_ENRICHED
    assert freq[tn]["rim"] > freq[la]["rim"] + 0.3
    assert freq[her2]["washout"] > freq[la]["washout"] + 0.15
    assert freq[her2]["calc"] > freq[la]["calc"] + 0.2
    assert freq[la]["spiculated"] > freq[tn]["spiculated"] + 0.2


def test_atypical_lesions_borrow_features_from_the_other_class():
    rng = np.random.default_rng(2)
    phs = [sample_phenotype(rng, sample_pathology(rng, "benign")) for _ in range(500)]
    frac = np.mean([bool(p.atypical_groups) for p in phs])
    assert 0.15 <= frac <= 0.25


def test_kinetic_curve_hits_the_drawn_ratio():
    f = kinetic_curve([90.0, 180.0, 360.0], 30.0, 0.7)
    assert f.max() <= 1.0 + 1e-9 and f[-1] / f[0] == pytest.approx(0.7)
    assert curve_type(f[0], f[-1]) == "washout"
    assert curve_type(*kinetic_curve([90.0, 360.0], 200.0, 1.3)) == "persistent"


def test_two_ultrasound_planes_cross_at_the_lesion():
    case = make_case(9, diagnosis="benign", modalities=("US",), us_planes=2)
    a, b = case.study.images
    assert a.role == b.role and b.label.endswith("_sagittal")
    assert abs(a.geometry.direction_matrix[:, 0] @ b.geometry.direction_matrix[:, 0]) < 1e-9
    assert a.lesion_mask.any() and b.lesion_mask.any()


def test_full_size_preset():
    st = make_study(2, size="full", modalities=("US",))
    us = st.images[0]
    assert us.shape == (1, *SIZES["full"].us_shape)
    assert us.geometry.spacing_mm[0] == SIZES["full"].us_spacing_mm
    assert SIZES["full"].mg_spacing_mm == 0.1


def test_invalid_arguments_are_refused_with_a_clear_message():
    with pytest.raises(ValueError, match="size"):
        make_study(1, size="huge")
    with pytest.raises(ValueError, match="diagnosis"):
        make_study(1, diagnosis="maybe")
    with pytest.raises(ValueError, match="modalities"):
        make_study(1, modalities=("CT",))
    with pytest.raises(ValueError, match="malignant"):
        make_study(1, diagnosis="benign", subtype="luminal_a")
    with pytest.raises(ValueError, match="n_exams"):
        make_history(1, n_exams=8)


# --- longitudinal -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def women():
    return [sample_woman(derive_seed(0, i)) for i in range(3000)]


def test_history_exams_are_annual_and_dated(women):
    seed = next(w.seed for w in women if w.cancer_date is None and len(w.exam_dates) >= 4)
    h = make_history(seed, n_exams=4)
    dates = [e.study_date for e in h.exams]
    assert len(dates) == 4
    gaps = np.diff([d.toordinal() for d in dates])
    assert ((gaps > 330) & (gaps < 400)).all()
    assert h.cancer_date is None and h.followup_end > dates[-1]
    for e in h.exams:
        assert e.synthetic and [im.label for im in e.images] == MG_LABELS
        assert all(im.acquisition_date == e.study_date for im in e.images)


def test_cohort_outcome_rate_censoring_and_latent_risk(women):
    five = np.array([w.cancer_within(5) for w in women])
    assert 0.08 <= five.mean() <= 0.15
    free = [w for w in women if w.cancer_date is None]
    followed = np.array([(w.followup_end - w.exam_dates[0]).days / 365.25 for w in free])
    assert 0.2 < np.mean(followed < 5) < 0.9                          # censoring present
    log_h = np.array([w.log_hazard for w in women])
    assert np.corrcoef(log_h, five)[0, 1] > 0.15
    cancers = [w for w in women if w.cancer_date is not None]
    assert {w.detection for w in cancers} == {"screen", "interval"}
    for w in cancers:
        assert w.cancer_date >= w.exam_dates[-1] and w.followup_end == w.cancer_date
    for w in women:
        assert list(w.exam_dates) == sorted(w.exam_dates) and 1 <= len(w.exam_dates) <= 7


def test_tumour_grows_in_one_breast_before_the_diagnosis(women):
    w = next(w for w in women if w.detection == "screen" and len(w.exam_dates) >= 4)
    h = make_history(w.seed)
    assert h.cancer_date == h.exams[-1].study_date and h.years_to_cancer(h.exams[-1]) == 0
    assert h.exams[-1].diagnosis is Diagnosis.MALIGNANT and h.exams[-1].pathology.malignant
    assert h.exams[-1].pathology.subtype.value == w.cancer_subtype
    assert all(e.diagnosis is None for e in h.exams[:-1])
    other = "R" if w.laterality == "L" else "L"
    areas = [int(e.image(f"MG_{w.laterality}_CC").lesion_mask.sum()) for e in h.exams]
    assert areas[-1] > 0 and areas == sorted(areas) and areas[0] < areas[-1]
    assert all(not e.image(f"MG_{other}_CC").lesion_mask.any() for e in h.exams)
    m = h.exams[-1].image(f"MG_{w.laterality}_CC").lesion_mask[0].astype(bool)
    first = h.exams[0].image(f"MG_{w.laterality}_CC").voxels[0][m].astype(float).mean()
    last = h.exams[-1].image(f"MG_{w.laterality}_CC").voxels[0][m].astype(float).mean()
    assert last > first                                   # the tumour site became denser


def test_hidden_risk_drives_density_over_the_years(women):
    def breast_mean_change(w):
        h = make_history(w.seed, n_exams=4)
        first, last = (e.image("MG_L_CC").voxels[0].astype(float) for e in (h.exams[0], h.exams[-1]))
        breast = first > 300
        return last[breast].mean() - first[breast].mean()

    cancer_free = [w for w in women if w.cancer_date is None and len(w.exam_dates) >= 4]
    high = next(w for w in cancer_free if w.hidden_factor > 1.5)
    low = next(w for w in cancer_free if w.hidden_factor < -1.5)
    assert high.density_change_per_year > 0 > low.density_change_per_year
    assert breast_mean_change(high) > 0 > breast_mean_change(low)


def test_make_cohort_is_make_history_of_derived_seeds():
    cohort = make_cohort(3, 2, n_exams=2)
    assert [h.woman_id for h in cohort] == ["woman-0000", "woman-0001"]
    again = make_history(derive_seed(3, 1), n_exams=2, woman_id="woman-0001")
    assert again.cancer_date == cohort[1].cancer_date and again.followup_end == cohort[1].followup_end
    for a, b in zip(again.exams, cohort[1].exams):
        _same_images(a, b)


# --- writing batches ----------------------------------------------------------------------------
def test_write_phantoms_writes_readable_folders_and_a_manifest(tmp_path):
    out = write_phantoms(tmp_path / "a", 2, seed=4, modalities=("MG", "US"))
    assert [p.name for p in out] == ["case-0000", "case-0001"]
    rows = list(csv.DictReader(open(tmp_path / "a" / "manifest.csv", encoding="utf-8")))
    assert [r["study_folder"] for r in rows] == ["case-0000", "case-0001"]
    case0 = make_case(derive_seed(4, 0), modalities=("MG", "US"), study_id="case-0000")
    assert rows[0]["diagnosis"] == case0.truth.diagnosis and rows[0]["subtype"] == (case0.truth.subtype or "")
    back = read_study_folder(out[0])
    assert back.synthetic and back.diagnosis is case0.study.diagnosis
    for im in case0.study.images:
        assert np.array_equal(back.image(im.label).voxels, im.voxels)
        assert np.array_equal(back.image(im.label).lesion_mask, im.lesion_mask)
    # deterministic: a second batch with the same seed has the same manifest and study.json
    write_phantoms(tmp_path / "b", 2, seed=4, modalities=("MG", "US"))
    for name in ("manifest.csv", "case-0001/study.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    with pytest.raises(OutputError, match="overwrite"):
        write_phantoms(tmp_path / "a", 2, seed=4, modalities=("MG",))
    write_phantoms(tmp_path / "a", 1, seed=5, modalities=("MG",), overwrite=True)
    assert read_study_folder(tmp_path / "a" / "case-0000").modalities() == [Modality.MG]


def test_write_phantoms_longitudinal(tmp_path):
    out = write_phantoms(tmp_path, 2, seed=1, longitudinal=True, n_exams=2)
    assert [p.name for p in out] == ["woman-0000", "woman-0001"]
    rows = list(csv.DictReader(open(tmp_path / "manifest.csv", encoding="utf-8")))
    h = read_history(out[0])
    assert h.woman_id == "woman-0000"
    mine = [r for r in rows if r["woman"] == "woman-0000"]
    assert [r["exam_date"] for r in mine] == [e.study_date.isoformat() for e in h.exams]
    for r, e in zip(mine, h.exams):
        assert (tmp_path / r["study_folder"] / "study.json").is_file()
        assert float(r["years_observed"]) == pytest.approx(h.years_observed(e), abs=1e-3)
        assert dt.date.fromisoformat(r["followup_end"]) == h.followup_end
        assert r["subtype"] == (sample_woman(derive_seed(1, 0), n_exams=2).cancer_subtype or "")


def test_write_phantoms_dicom(tmp_path):
    if importlib.util.find_spec("BINDSLib.io.dicom") is None:
        with pytest.raises(OutputError, match="DICOM"):
            write_phantoms(tmp_path, 1, seed=0, dicom=True, modalities=("MG",))
        assert not (tmp_path / "case-0000").exists()
        return
    write_phantoms(tmp_path, 1, seed=0, dicom=True, modalities=("MG",))
    dicom_dir = tmp_path / "case-0000-dicom"
    assert dicom_dir.is_dir() and any(p.is_file() for p in dicom_dir.rglob("*"))
    rows = list(csv.DictReader(open(tmp_path / "manifest.csv", encoding="utf-8")))
    assert rows[0]["dicom_folder"] == "case-0000-dicom"
