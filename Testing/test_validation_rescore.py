"""The shipped real-image bundles still give the predictions docs/VALIDATION.md records.

docs/VALIDATION.md holds, between ``<!-- rescore:begin -->`` and ``<!-- rescore:end -->``, a
table of a few shared images with the malignancy probability, the finding probability
(abnormal vs normal) and the lesion Dice (predicted mask against the reference mask; ``-``
without one) ``binds evaluate`` wrote for them (its ``predictions.csv``). This test re-scores those images from ../shared/data with the bundle
named in each row, through the same ``DiagnosisModel.predict`` as ``binds evaluate``, and checks
the recorded values. It skips when ../shared/data or the bundle is absent.

Regenerate the table from evaluation outputs (after re-running the commands of the report):

    python Testing/test_validation_rescore.py --write \\
        binds-us-busi=busi=out/validation/us-busi-val/predictions.csv \\
        binds-mg-mias=mini-mias=out/validation/mg-mias-val/predictions.csv
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REPORT = REPO / "docs" / "VALIDATION.md"
BEGIN, END = "<!-- rescore:begin -->", "<!-- rescore:end -->"
HEADER = "| bundle | dataset | case | label | malignancy probability | finding probability | lesion Dice |"
#: Absolute tolerances: the same weights and inputs on another CPU (other oneDNN kernels);
#: a mask edge pixel that flips moves a Dice by ~1e-3.
TOLERANCE = 5e-4
DICE_TOLERANCE = 0.01


def recorded_rows(text: str) -> list[dict]:
    """The rows of the rescore table in the report text."""
    if BEGIN not in text or END not in text:
        return []
    block = text.split(BEGIN, 1)[1].split(END, 1)[0]
    rows = []
    for line in block.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 7 or cells[0] in ("bundle", "") or set(cells[0]) <= {"-", " "}:
            continue
        rows.append({"bundle": cells[0].strip("`"), "dataset": cells[1], "case": cells[2].strip("`"),
                     "label": cells[3], "probability": float(cells[4]), "finding": float(cells[5]),
                     "dice": None if cells[6] == "-" else float(cells[6])})
    return rows


def table(rows: list[dict]) -> str:
    lines = [HEADER, "|---|---|---|---|---|---|---|"]
    lines += [f"| `{r['bundle']}` | {r['dataset']} | `{r['case']}` | {r['label']} | {r['probability']:.6f} | "
              f"{r['finding']:.6f} | {'-' if r['dice'] is None else format(r['dice'], '.4f')} |" for r in rows]
    return "\n".join(lines)


def pick_rows(bundle: str, dataset: str, predictions_csv: Path, per_label: int = 2) -> list[dict]:
    """A few cases of each label (the first in case order) from a ``predictions.csv``."""
    with open(predictions_csv, newline="", encoding="utf-8") as f:
        preds = sorted(csv.DictReader(f), key=lambda r: r["study_id"])
    out, count = [], {}
    for r in preds:
        label = r["diagnosis"] or "unlabelled"
        if count.get(label, 0) < per_label:
            count[label] = count.get(label, 0) + 1
            dice = float(r["lesion_dice"]) if r.get("lesion_dice") not in (None, "", "nan") else None
            out.append({"bundle": bundle, "dataset": dataset, "case": r["study_id"], "label": label,
                        "probability": float(r["malignancy_probability"]),
                        "finding": float(r["finding_probability"]), "dice": dice})
    return out


def write_table(specs: list[str]) -> None:
    rows = []
    for spec in specs:
        bundle, dataset, csv_path = spec.split("=", 2)
        rows += pick_rows(bundle, dataset, Path(csv_path))
    text = REPORT.read_text(encoding="utf-8")
    if BEGIN not in text:
        raise SystemExit(f"{REPORT} has no {BEGIN} ... {END} block")
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    REPORT.write_text(f"{head}{BEGIN}\n{table(rows)}\n{END}{tail}", encoding="utf-8")
    print(f"{len(rows)} rows written to {REPORT}")


# -- the test ---------------------------------------------------------------------------------

def test_the_table_parser_reads_what_the_writer_writes():
    rows = [{"bundle": "b", "dataset": "busi", "case": "benign_001", "label": "benign", "probability": 0.123456,
             "finding": 0.9, "dice": 0.8125},
            {"bundle": "b", "dataset": "busi", "case": "normal_001", "label": "normal", "probability": 0.5,
             "finding": 0.012345, "dice": None}]
    assert recorded_rows(f"x\n{BEGIN}\n{table(rows)}\n{END}\ny") == rows


def _rows_by_bundle():
    rows = recorded_rows(REPORT.read_text(encoding="utf-8")) if REPORT.is_file() else []
    by: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        by.setdefault((r["bundle"], r["dataset"]), []).append(r)
    return by


@pytest.mark.parametrize("bundle, dataset", sorted(_rows_by_bundle()) or [pytest.param(
    None, None, marks=pytest.mark.skip(reason="docs/VALIDATION.md records no rescore table"))])
def test_shipped_bundle_reproduces_the_recorded_predictions(bundle, dataset, shared_data):
    from BINDSLib.bundle import find_bundle
    from BINDSLib.errors import ModelError
    from BINDSLib.io.datasets import load_dataset
    from BINDSLib.model.inference import DiagnosisModel
    from BINDSLib.model.metrics import dice

    try:
        find_bundle(bundle)
    except ModelError:
        pytest.skip(f"bundle {bundle} is not installed")
    rows = _rows_by_bundle()[(bundle, dataset)]
    root = shared_data / dataset
    if not root.is_dir():
        pytest.skip(f"{root} is absent")
    wanted = {r["case"] for r in rows}
    studies = {s.study_id: s for s in load_dataset(root) if s.study_id in wanted}
    assert set(studies) == wanted, f"cases missing from {root}: {sorted(wanted - set(studies))}"
    model = DiagnosisModel.from_bundle(bundle, device="cpu")
    for r in rows:
        study = studies[r["case"]]
        assert (study.diagnosis.value if study.diagnosis else "unlabelled") == r["label"], r["case"]
        pred = model.predict(study, saliency="none")
        p = pred.malignancy_probability
        assert abs(p - r["probability"]) <= TOLERANCE, (
            f"{bundle} on {r['case']}: {p:.6f}, the report records {r['probability']:.6f}")
        # the MG bundle reads every mini-MIAS film against the woman's other film (the folder has both)
        assert pred.finding_compared is (True if model.config.bilateral_weight > 0 else None), r["case"]
        f = pred.finding_probability
        assert abs(f - r["finding"]) <= TOLERANCE, (
            f"{bundle} on {r['case']}: finding probability {f:.6f}, the report records {r['finding']:.6f}")
        # the lesion outline (the ultrasound bundle's refiner draws it) against the reference
        scored = [dice(pred.images[im.label].lesion_mask, im.lesion_mask) for im in study.images
                  if im.lesion_mask is not None and im.lesion_mask.any() and im.label in pred.images]
        if r["dice"] is None:
            assert not scored, f"{r['case']}: the report records no Dice, the study has a lesion mask"
        else:
            assert scored and abs(sum(scored) / len(scored) - r["dice"]) <= DICE_TOLERANCE, (
                f"{bundle} on {r['case']}: Dice {scored}, the report records {r['dice']:.4f}")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--write":
        write_table(sys.argv[2:])
    else:
        sys.exit(__doc__)
