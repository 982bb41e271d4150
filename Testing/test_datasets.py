"""The ../shared/data layouts (BUSI, mini-MIAS) load as labelled studies (skip when absent)."""

import collections
import csv
import itertools
import shutil

import numpy as np
import pytest

from BINDSLib.errors import InputError
from BINDSLib.io.datasets import detect_layout, disc_mask, iter_busi, iter_dataset, iter_mini_mias, load_dataset
from BINDSLib.study import Finding, Modality


def test_disc_mask_geometry():
    m = disc_mask((20, 30), [Finding("CIRC", "B", center_col=10, center_row=5, radius_px=2)])
    assert m[5, 10] == 1 and m[5, 12] == 1 and m[5, 13] == 0 and m[7, 10] == 1 and m[8, 10] == 0
    assert m.sum() == 13  # lattice points within radius 2
    assert disc_mask((5, 5), [Finding("CALC", "M")]) is None


def test_busi_layout(shared_data):
    root = shared_data / "busi"
    assert detect_layout(root) == "busi"
    studies = list(iter_busi(root))
    rows = list(csv.DictReader(open(root / "manifest.csv")))
    assert len(studies) == len(rows)
    counts = collections.Counter(s.diagnosis.value for s in studies)
    assert counts == collections.Counter(r["label"] for r in rows)
    for s, r in zip(studies[:60], rows[:60]):
        (im,) = s.images
        assert im.modality is Modality.US and s.study_id == r["case_id"]
        assert im.shape == (1, int(r["height"]), int(r["width"]))
        assert s.attributes["dup_group"] == r["dup_group"]
        assert (im.lesion_mask.sum() > 0) == (r["label"] != "normal")


def test_mini_mias_layout_and_finding_circles(shared_data):
    root = shared_data / "mini-mias"
    assert detect_layout(root) == "mini-mias"
    studies = {s.study_id: s for s in iter_mini_mias(root)}
    rows = list(csv.DictReader(open(root / "images.csv")))
    assert len(studies) == len(rows)
    findings = list(csv.DictReader(open(root / "findings.csv")))
    f = next(f for f in findings if f["center_col"] and f["image_id"] in studies)
    st = studies[f["image_id"]]
    (im,) = st.images
    assert im.role.view == "MLO" and im.role.laterality in ("L", "R")
    assert im.geometry.spacing_mm[:2] == (0.4, 0.4)
    col, row, rad = float(f["center_col"]), float(f["center_row"]), float(f["radius"])
    # the mask is the finding circle, centred where findings.csv says (top-left origin)
    assert im.lesion_mask[0, int(round(row)), int(round(col))] == 1
    assert im.lesion_mask.sum() >= np.pi * (rad - 1) ** 2
    normal = next(s for s in studies.values() if s.diagnosis.value == "normal")
    assert normal.images[0].lesion_mask.sum() == 0
    assert len({s.patient_id for s in studies.values()}) == len(rows) // 2
    # each film carries the woman's other breast as a comparison image (bilateral comparison)
    for sid in ("mdb001", "mdb002"):
        a, b = studies[sid], studies["mdb002" if sid == "mdb001" else "mdb001"]
        (other,) = a.comparison
        assert other.role.laterality != a.images[0].role.laterality and other.role == b.images[0].role
        np.testing.assert_array_equal(other.voxels, b.images[0].voxels)
        assert other.lesion_mask is None and not other.findings
    assert all(len(s.comparison) == 1 for s in studies.values())


def test_mini_mias_findings_that_cannot_count_are_named(tmp_path, shared_data, caplog):
    """A held-out folder whose findings.csv disagrees with images.csv: findings for an image
    it does not list or for a normal image are ignored, and an abnormal image without a
    finding row is loaded without a circle; a warning names each image."""
    src = shared_data / "mini-mias"
    root = tmp_path / "mias"
    (root / "images").mkdir(parents=True)
    rows = list(csv.DictReader(open(src / "images.csv")))[:4]  # mdb001-2 benign, mdb003-4 normal
    assert [r["label"] for r in rows] == ["benign", "benign", "normal", "normal"]
    for r in rows:
        shutil.copy(src / r["image"], root / r["image"])
    with open(root / "images.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    findings = {r["image_id"]: r for r in csv.DictReader(open(src / "findings.csv"))}
    kept = [findings["mdb001"], dict(findings["mdb001"], image_id="mdb003"), dict(findings["mdb001"], image_id="mdb999"),
            dict(findings["mdb002"], image_id="MDB002")]  # a spreadsheet's upper-casing
    with open(root / "findings.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(kept[0]))
        w.writeheader()
        w.writerows(kept)
    with caplog.at_level("WARNING", logger="BINDSLib.io.datasets"):
        studies = {s.study_id: s for s in iter_mini_mias(root)}
    text = caplog.text
    assert "finding rows for 1 image(s) not in images.csv, ignored: mdb999" in text
    assert "finding rows for 1 image(s) labelled normal in images.csv, ignored: mdb003" in text
    assert "1 image ID(s) differ from images.csv's only in case, matched: MDB002 -> mdb002" in text
    assert str(root / "findings.csv") in text
    assert not studies["mdb003"].images[0].findings and studies["mdb003"].images[0].lesion_mask.sum() == 0
    assert studies["mdb002"].images[0].findings[0].abnormality == findings["mdb002"]["abnormality"].upper()
    assert studies["mdb002"].images[0].lesion_mask.sum() > 0
    assert studies["mdb001"].images[0].findings[0].abnormality == "CIRC"
    with open(root / "findings.csv", "w", newline="") as f:  # mdb002's row gone
        w = csv.DictWriter(f, fieldnames=list(kept[0]))
        w.writeheader()
        w.writerows(kept[:3])
    caplog.clear()
    with caplog.at_level("WARNING", logger="BINDSLib.io.datasets"):
        studies = {s.study_id: s for s in iter_mini_mias(root)}
    assert "no finding row for 1 benign or malignant image(s) (no circle, no finding type): mdb002" in caplog.text
    assert studies["mdb002"].images[0].lesion_mask is None and not studies["mdb002"].images[0].findings
    caplog.clear()
    with caplog.at_level("WARNING", logger="BINDSLib.io.datasets"):
        list(iter_mini_mias(src))
    assert caplog.text == ""  # the shared folder is consistent


def test_datasets_without_reference_masks(shared_data):
    """Diagnosing a dataset folder (`binds diagnose DIR`) reads no ground truth: the same
    images, no lesion masks."""
    from BINDSLib.io.loader import load

    for name, n in (("busi", 12), ("mini-mias", 12)):
        root = shared_data / name
        with_masks = list(itertools.islice(iter_dataset(root), n))
        bare = list(itertools.islice(iter_dataset(root, reference_masks=False), n))
        assert any(s.images[0].lesion_mask is not None for s in with_masks)
        assert [s.study_id for s in bare] == [s.study_id for s in with_masks]
        for a, b in zip(with_masks, bare):
            assert b.images[0].lesion_mask is None
            np.testing.assert_array_equal(a.images[0].voxels, b.images[0].voxels)
    sample = load(shared_data / "busi", reference_masks=False).studies
    assert sample and all(s.images[0].lesion_mask is None for s in sample)


def test_dataset_errors_name_the_file(tmp_path, shared_data):
    root = tmp_path / "busi"
    root.mkdir()
    (root / "images").mkdir()
    rows = list(csv.DictReader(open(shared_data / "busi" / "manifest.csv")))[:2]
    for r in rows:
        shutil.copy(shared_data / "busi" / r["image"], root / r["image"])
    with open(root / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow(r)
    with pytest.raises(InputError) as e:  # masks are missing
        load_dataset(root)
    assert "masks" in str(e.value) and "file not found" in str(e.value)
    rows[0]["label"] = "unsure"
    rows[0]["mask"] = rows[1]["mask"] = ""
    with open(root / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with pytest.raises(InputError, match="row 2: label 'unsure'"):
        load_dataset(root)


def test_unknown_layout(tmp_path):
    assert detect_layout(tmp_path) is None
    with pytest.raises(InputError, match="not a known dataset layout"):
        load_dataset(tmp_path)


def _write_csv(path, rows, bom=False):
    with open(path, "w", newline="", encoding="utf-8-sig" if bom else "utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _busi_copy(shared_data, root, n=4):
    src = shared_data / "busi"
    rows = [r for r in csv.DictReader(open(src / "manifest.csv")) if r["label"] != "normal"][:n]
    for r in rows:
        for col in ("image", "mask"):
            (root / r[col]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src / r[col], root / r[col])
    return rows


def test_busi_manifest_problems_are_named(tmp_path, shared_data, caplog):
    """A spreadsheet's byte-order mark is read; a missing column, a case listed twice and a
    lesion without a mask are named (the first two refused, the last warned about)."""
    root = tmp_path / "busi"
    rows = _busi_copy(shared_data, root)
    _write_csv(root / "manifest.csv", rows, bom=True)
    assert detect_layout(root) == "busi"
    assert [s.study_id for s in iter_busi(root)] == [r["case_id"] for r in rows]
    _write_csv(root / "manifest.csv", [{k: v for k, v in r.items() if k != "mask"} for r in rows])
    assert detect_layout(root) == "busi"  # so that the loader says what is missing
    with pytest.raises(InputError, match=r"manifest.csv: missing column\(s\) \['mask'\]"):
        load_dataset(root)
    _write_csv(root / "manifest.csv", rows + [rows[1]])
    with pytest.raises(InputError, match=rf"manifest.csv: rows 3 and 6: case_id '{rows[1]['case_id']}' is listed twice"):
        load_dataset(root)
    # one image file under two IDs would be counted twice as well
    _write_csv(root / "manifest.csv", rows + [dict(rows[1], case_id="copy", image="./" + rows[1]["image"])])
    with pytest.raises(InputError, match=r"manifest.csv: rows 3 and 6: image .* is listed twice"):
        load_dataset(root)
    text = "\n".join(";".join(r.values()) for r in [dict(zip(rows[0], rows[0])), *rows])
    (root / "manifest.csv").write_text(text)  # a spreadsheet's "CSV" with semicolons
    with pytest.raises(InputError, match=r"manifest.csv: columns are separated by ';' or tabs"):
        load_dataset(root)
    _write_csv(root / "manifest.csv", [dict(rows[0], case_id=rows[0]["case_id"] + "\xe9")] + rows[1:])
    (root / "manifest.csv").write_bytes((root / "manifest.csv").read_text().encode("latin-1"))
    with pytest.raises(InputError, match=r"manifest.csv: cannot read CSV: 'utf-8' codec"):
        load_dataset(root)  # named, not "no DICOM images found"
    _write_csv(root / "manifest.csv", [dict(rows[0], mask=" ")] + rows[1:])
    with caplog.at_level("WARNING", logger="BINDSLib.io.datasets"):
        studies = load_dataset(root)
    assert f"no mask for 1 benign or malignant case(s) (left out of the lesion Dice and pointing game): " \
           f"{rows[0]['case_id']}" in caplog.text
    assert studies[0].images[0].lesion_mask is None and studies[1].images[0].lesion_mask.any()


def test_mini_mias_folder_problems_are_named(tmp_path, shared_data, caplog):
    """A byte-order mark is read, finding codes are upper-cased, a patient ID's spaces do not
    split a woman, a film without a patient is compared with no other film (warned), and an
    image listed twice or a missing findings.csv are refused."""
    src = shared_data / "mini-mias"
    root = tmp_path / "mias"
    (root / "images").mkdir(parents=True)
    rows = list(csv.DictReader(open(src / "images.csv")))[:4]  # women 1 and 2, both breasts
    assert len({r["patient"] for r in rows}) == 2
    for r in rows:
        shutil.copy(src / r["image"], root / r["image"])
    findings = [r for r in csv.DictReader(open(src / "findings.csv")) if r["image_id"] in {"mdb001", "mdb002"}]
    _write_csv(root / "findings.csv", [dict(f, abnormality=f["abnormality"].lower()) for f in findings], bom=True)
    rows[1]["patient"] += " "
    rows[2]["patient"] = rows[3]["patient"] = ""
    _write_csv(root / "images.csv", rows, bom=True)
    with caplog.at_level("WARNING", logger="BINDSLib.io.datasets"):
        studies = {s.study_id: s for s in load_dataset(root)}
    assert "no patient for 2 image(s) (not compared with another film): mdb003, mdb004" in caplog.text
    assert [len(studies[i].comparison) for i in ("mdb001", "mdb002", "mdb003", "mdb004")] == [1, 1, 0, 0]
    assert studies["mdb002"].patient_id == rows[0]["patient"] and studies["mdb003"].patient_id is None
    assert {f.abnormality for f in studies["mdb001"].images[0].findings} == {findings[0]["abnormality"].upper()}
    _write_csv(root / "images.csv", rows + [rows[0]])
    with pytest.raises(InputError, match=r"images.csv: rows 2 and 6: image_id 'mdb001' is listed twice"):
        load_dataset(root)
    for bad in ("0", "nan", "-0.4"):
        _write_csv(root / "images.csv", [dict(rows[0], pixel_spacing_mm=bad)] + rows[1:])
        with pytest.raises(InputError, match=rf"images.csv: row 2: pixel_spacing_mm '{bad}' is not a positive"):
            load_dataset(root)
    _write_csv(root / "images.csv", [dict(rows[0], image_id="")] + rows[1:])
    with pytest.raises(InputError, match=r"images.csv: row 2: image_id is empty"):
        load_dataset(root)
    _write_csv(root / "images.csv", rows)
    _write_csv(root / "findings.csv", [dict(findings[0], radius="-5")] + findings[1:])
    with pytest.raises(InputError, match=r"findings.csv: row 2: radius '-5' is not a positive number of pixels"):
        load_dataset(root)
    _write_csv(root / "findings.csv", [dict(findings[0], abnormality="BLOB")] + findings[1:])
    caplog.clear()
    with caplog.at_level("WARNING", logger="BINDSLib.io.datasets"):
        load_dataset(root)
    assert "abnormality 'BLOB' is none of CALC" in caplog.text
    _write_csv(root / "findings.csv", findings)
    # a circle outside its film: coordinates for another image size (the 1024-pixel release?)
    _write_csv(root / "images.csv", rows)
    _write_csv(root / "findings.csv", [dict(findings[0], center_col="700")] + findings[1:])
    with pytest.raises(InputError, match=r"findings.csv: the CIRC circle of mdb001 \(column 700, row 299.5\) "
                                         r"lies outside its 512 x 512 image"):
        load_dataset(root)
    assert len(list(iter_dataset(root, reference_masks=False))) == 4  # diagnosing needs no circles
    # a radius larger than the film (a unit mixed up): the whole film would be "lesion"
    _write_csv(root / "findings.csv", [dict(findings[0], radius="1e12")] + findings[1:])
    with pytest.raises(InputError, match=r"the CIRC circle of mdb001 has a radius of 1e\+12 pixels, larger than"):
        load_dataset(root)
    _write_csv(root / "findings.csv", [dict(findings[0], center_col="512", image_id=" mdb001 ")] + findings[1:])
    edge = {s.study_id: s for s in load_dataset(root)}["mdb001"]  # on the edge: inside; IDs stripped
    assert edge.images[0].findings[0].center_col == 512 and edge.images[0].lesion_mask.any()
    (root / "findings.csv").unlink()
    assert detect_layout(root) == "mini-mias"
    with pytest.raises(InputError, match=r"findings.csv: not found"):
        load_dataset(root)


def test_layout_of_folders_with_stray_csv_files(tmp_path):
    """A folder of study folders stays one when it also holds an images.csv or a manifest.csv
    of its own; a CSV names a layout only when its columns are that layout's."""
    from BINDSLib.studyfolder import write_study_folder
    from test_model_cases import make_case

    write_study_folder(make_case(0, True, ("US",)), tmp_path / "case0")
    (tmp_path / "images.csv").write_text("file,comment\na.png,x\n")
    (tmp_path / "manifest.csv").write_text("woman,history\nw1,history.json\n")
    assert detect_layout(tmp_path) == "study-folders"
    other = tmp_path / "other"
    other.mkdir()
    (other / "manifest.csv").write_text("woman,history\nw1,history.json\n")
    assert detect_layout(other) is None
    (other / "manifest.csv").write_text("case_id,label,image\nc1,benign,images/c1.png\n")
    assert detect_layout(other) == "busi"  # meant as BUSI: the loader names the missing column
    with pytest.raises(InputError, match=r"missing column\(s\) \['mask'\]"):
        load_dataset(other)


def _mias_copy(shared_data, root, n=4):
    src = shared_data / "mini-mias"
    (root / "images").mkdir(parents=True)
    rows = list(csv.DictReader(open(src / "images.csv")))[:n]
    for r in rows:
        shutil.copy(src / r["image"], root / r["image"])
    ids = {r["image_id"] for r in rows}
    findings = [f for f in csv.DictReader(open(src / "findings.csv")) if f["image_id"] in ids]
    return rows, findings


def test_a_curated_mini_mias_folder_reads_as_a_spreadsheet_writes_it(tmp_path, shared_data, caplog):
    """What a held-out set's curator may write: rows emptied to commas, a Windows path, no
    severity column; and the problems named by row and column: a finding with only part of a
    circle (warned: no circle), a decimal comma, a blank laterality, a missing image (refused
    before any film is read)."""
    root = tmp_path / "mias"
    rows, findings = _mias_copy(shared_data, root)
    assert findings[0]["image_id"] == "mdb001" and findings[0]["center_col"]
    _write_csv(root / "findings.csv", [{k: v for k, v in f.items() if k != "severity"} for f in findings])
    windows = [dict(rows[0], image=rows[0]["image"].replace("/", "\\"))] + rows[1:]
    _write_csv(root / "images.csv", windows)
    with open(root / "images.csv", "a") as f:
        f.write(",,,,,,,\n,,,,,,,\n")
    studies = load_dataset(root)
    assert [s.study_id for s in studies] == [r["image_id"] for r in rows]
    assert studies[0].images[0].lesion_mask.any()
    _write_csv(root / "findings.csv", [dict(findings[0], radius="")] + findings[1:])
    caplog.clear()
    with caplog.at_level("WARNING", logger="BINDSLib.io.datasets"):
        studies = load_dataset(root)
    assert ("row 2: the CIRC finding of mdb001 has center_col and center_row but not radius: kept without a "
            "circle") in caplog.text
    assert studies[0].images[0].lesion_mask is None
    _write_csv(root / "findings.csv", findings)
    blank = [dict(rows[0]), dict(rows[1])] + [{k: "" for k in rows[0]}] + [dict(rows[2], pixel_spacing_mm="0,4")]
    _write_csv(root / "images.csv", blank)
    with pytest.raises(InputError, match=r"images.csv: row 5: pixel_spacing_mm '0,4' is not a number "
                                         r"\(write decimals with a point: 0.4\)"):
        load_dataset(root)  # row 5: the blank row 4 is counted as the file's line
    _write_csv(root / "images.csv", [dict(rows[0], laterality="")] + rows[1:])
    with pytest.raises(InputError, match=r"images.csv: row 2: laterality '' and view 'MLO' are not a mammogram's"):
        load_dataset(root)
    (root / rows[3]["image"]).unlink()
    (root / rows[2]["image"]).unlink()
    _write_csv(root / "images.csv", rows)
    with pytest.raises(InputError, match=rf"images.csv: row 4: image '{rows[2]['image']}': file not found in {root} "
                                         r"\(and 1 more listed file\(s\) missing\)"):
        next(iter_dataset(root))  # before the first study is read


def test_a_curated_busi_folder_names_empty_and_missing_masks(tmp_path, shared_data, caplog):
    """An all-zero mask of a lesion case is warned about (it cannot count in Dice or the
    pointing game); a normal case's missing mask file is taken as empty; a lesion case's missing
    mask is refused before any image is read."""
    import SimpleITK as sitk

    root = tmp_path / "busi"
    rows = _busi_copy(shared_data, root)
    src = shared_data / "busi"
    normal = next(r for r in csv.DictReader(open(src / "manifest.csv")) if r["label"] == "normal")
    shutil.copy(src / normal["image"], root / normal["image"])
    rows.append(normal)  # its mask file is not copied
    empty = sitk.ReadImage(str(root / rows[0]["mask"])) * 0
    sitk.WriteImage(empty, str(root / rows[0]["mask"]))
    _write_csv(root / "manifest.csv", rows)
    with caplog.at_level("WARNING", logger="BINDSLib.io.datasets"):
        studies = load_dataset(root)
    assert f"row 2: the mask of {rows[0]['label']} case {rows[0]['case_id']} is empty" in caplog.text
    assert f"the mask file of 1 normal case(s) is missing (taken as empty): {normal['case_id']}" in caplog.text
    assert not studies[-1].images[0].lesion_mask.any()
    (root / rows[1]["mask"]).unlink()
    with pytest.raises(InputError, match=rf"manifest.csv: row 3: mask '{rows[1]['mask']}': file not found"):
        next(iter_dataset(root))
    assert len(list(iter_dataset(root, reference_masks=False))) == len(rows)  # diagnosing needs no mask


def test_hidden_folders_beside_study_folders_are_not_studies(tmp_path):
    """A ``.NAME.XXXX.part`` folder left by a killed run (a copy of a study) neither counts as a
    study nor clashes with the study it copies."""
    from BINDSLib.io.loader import load
    from BINDSLib.studyfolder import write_study_folder
    from test_model_cases import make_case

    write_study_folder(make_case(0, True, ("US",)), tmp_path / "case0")
    write_study_folder(make_case(1, False, ("US",)), tmp_path / "case1")
    shutil.copytree(tmp_path / "case0", tmp_path / ".case0.k3j2x9.part")
    assert detect_layout(tmp_path) == "study-folders"
    assert sorted(s.study_id for s in load_dataset(tmp_path)) == sorted(s.study_id for s in load(tmp_path).studies)
    assert len(load_dataset(tmp_path)) == 2
