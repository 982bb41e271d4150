"""The study model: roles, geometry, pathology-derived subtype, exam history."""

import datetime as dt

import numpy as np
import pytest

from BINDSLib.study import (
    ExamHistory, Geometry, Image, Modality, MRSequence, Pathology, Role, Study, Subtype,
    parse_date, pseudonym,
)


@pytest.mark.parametrize("key", ["MG_L_CC", "MG_R_MLO", "MG_L_XCCL", "US", "US_L", "US_R_10h",
                                 "US_L_2.5h", "MR_T1_PRE", "MR_DCE1", "MR_DCE12", "MR_T2", "MR_DWI",
                                 "MR_DWI_b800", "MR_ADC"])
def test_role_key_round_trip(key):
    role = Role.parse(key)
    assert role.key == key
    assert Role.from_json(role.to_json()) == role


def test_role_parse_fields_and_case():
    r = Role.parse("mr_dwi_b1000")
    assert (r.modality, r.sequence, r.b_value) == (Modality.MR, MRSequence.DWI, 1000.0)
    r = Role.parse("mg_r_mlo")
    assert (r.laterality, r.view) == ("R", "MLO")
    assert Role.parse("MR_T1_PRE").phase == 0
    assert Role.parse("MR_DCE3").phase == 3


@pytest.mark.parametrize("bad", ["CT", "MG_X_CC", "MG_L_FOO", "MR_DCE0", "MR_FLAIR", "US_L_CC", "",
                                 "US_R_13h", "US_R_0h", None, 7])
def test_role_parse_rejects_unknown(bad):
    with pytest.raises(ValueError):
        Role.parse(bad)


def test_clock_positions_are_on_the_clock_face():
    assert Role.parse("US_R_12.5h").clock_position == 12.5 and Role.parse("US_L_1h").clock_position == 1
    with pytest.raises(ValueError, match="not on the clock face"):
        Role(Modality.US, clock_position=0.5)


def test_role_validation():
    with pytest.raises(ValueError):
        Role(Modality.MR)  # no sequence
    with pytest.raises(ValueError):
        Role(Modality.US, view="CC")
    with pytest.raises(ValueError):
        Role(Modality.MG, sequence=MRSequence.T2)


def test_geometry_index_to_lps_and_sitk_round_trip():
    import SimpleITK as sitk

    c, s = np.cos(0.3), np.sin(0.3)
    direction = (c, -s, 0, s, c, 0, 0, 0, 1)
    g = Geometry((0.5, 0.7, 3.0), (10, -20, 5), direction)
    # index (2, 1, 1): origin + D @ (2*0.5, 1*0.7, 1*3)
    expect = np.array([10, -20, 5]) + np.array(direction).reshape(3, 3) @ np.array([1.0, 0.7, 3.0])
    assert np.allclose(g.index_to_lps((2, 1, 1)), expect)
    img = sitk.Image(4, 3, 2, sitk.sitkFloat32)
    g.apply_to_sitk(img)
    assert Geometry.from_sitk(img) == g
    assert np.allclose(img.TransformContinuousIndexToPhysicalPoint((2, 1, 1)), expect)
    m = g.ijk_to_lps_matrix()
    assert np.allclose((m @ [2, 1, 1, 1])[:3], expect)


@pytest.mark.parametrize("kwargs", [dict(spacing_mm=(0, 1, 1)), dict(spacing_mm=(np.nan, 1, 1)),
                                    dict(direction=(1, 1, 0, 0, 1, 0, 0, 0, 1)),
                                    dict(origin_mm=(np.inf, 0, 0))])
def test_geometry_rejects_invalid(kwargs):
    with pytest.raises(ValueError):
        Geometry(**kwargs)


def test_image_shapes_and_mask():
    im = Image(np.zeros((4, 5)), Geometry(), Role.parse("US"), lesion_mask=np.ones((4, 5)) * 3)
    assert im.shape == (1, 4, 5) and im.is_2d
    assert im.lesion_mask.dtype == np.uint8 and im.lesion_mask.max() == 1
    with pytest.raises(ValueError):
        Image(np.zeros((4, 5)), Geometry(), Role.parse("US"), lesion_mask=np.ones((5, 4)))
    with pytest.raises(ValueError):
        Image(np.zeros((0, 5)), Geometry(), Role.parse("US"))


def test_study_gives_duplicate_roles_unique_labels():
    ims = [Image(np.zeros((2, 2)), Geometry(), Role.parse("US_L")) for _ in range(3)]
    st = Study("s", ims)
    assert [im.label for im in st.images] == ["US_L", "US_L_2", "US_L_3"]
    assert st.image("US_L_2") is ims[1]
    with pytest.raises(KeyError):
        st.image("MG_L_CC")


@pytest.mark.parametrize("record, subtype", [
    (dict(er_percent=90, pr_percent=50, her2_score=0, ki67_percent=10), Subtype.LUMINAL_A),
    (dict(er_percent=90, pr_percent=10, her2_score=1, ki67_percent=10), Subtype.LUMINAL_B),  # PR < 20
    (dict(er_percent=90, pr_percent=50, her2_score=0, ki67_percent=30), Subtype.LUMINAL_B),  # Ki-67 high
    (dict(er_percent=90, pr_percent=50, her2_score=3, ki67_percent=5), Subtype.LUMINAL_B),   # HER2+
    (dict(er_percent=0, pr_percent=0, her2_score=3, ki67_percent=40), Subtype.HER2_ENRICHED),
    (dict(er_percent=0, pr_percent=0, her2_score=2, her2_ish_amplified=True), Subtype.HER2_ENRICHED),
    (dict(er_percent=0, pr_percent=0, her2_score=2, her2_ish_amplified=False), Subtype.TRIPLE_NEGATIVE),
    (dict(er_percent=0, pr_percent=0, her2_score=1, ki67_percent=60), Subtype.TRIPLE_NEGATIVE),
    (dict(er_percent=0, pr_percent=0, her2_score=2), None),  # equivocal without ISH
])
def test_pathology_subtype(record, subtype):
    p = Pathology(malignant=True, **record)
    assert p.subtype == subtype
    assert Pathology.from_json(p.to_json()) == p
    assert Pathology(malignant=False, **record).subtype is None


def test_exam_history_sorted_and_followup():
    d = dt.date
    exams = [Study(f"e{y}", study_date=d(y, 3, 1)) for y in (2022, 2020, 2021)]
    h = ExamHistory("w1", exams, cancer_date=d(2024, 3, 1))
    assert [s.study_date.year for s in h.exams] == [2020, 2021, 2022]
    assert h.years_to_cancer(h.exams[0]) == pytest.approx(4.0, abs=0.01)
    assert h.years_observed(h.exams[2]) == pytest.approx(2.0, abs=0.01)
    with pytest.raises(ValueError):
        ExamHistory("w2", [Study("x")])


def test_parse_date_and_pseudonym():
    assert parse_date("20240131") == dt.date(2024, 1, 31)
    assert parse_date("2024-01-31") == dt.date(2024, 1, 31)
    assert parse_date("") is None
    with pytest.raises(ValueError):
        parse_date("31/01/2024")
    # a date-time's date (ISO, a spreadsheet's, DICOM DT); anything else after the date is refused
    for v in ("2024-01-31T10:00:00", "2024-01-31 10:00", "2024-01-31T10:00:00+01:00", "20240131101500.25",
              "2024-1-31", "20240131.0", "2024-01-31T10"):
        assert parse_date(v) == dt.date(2024, 1, 31), v
    for v in ("2024-01-31 garbage", "2024-01-31T10:00:00junk", "20240131x", "2024-13-01"):
        with pytest.raises(ValueError, match="not a date"):
            parse_date(v)
    a, b = pseudonym("Mass-Test_P_00173"), pseudonym("Mass-Test_P_00820")
    assert a == pseudonym("Mass-Test_P_00173") and a != b and a.startswith("anon-")
    assert "00173" not in a
