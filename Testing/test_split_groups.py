"""Leakage-free validation splits: groups stay on one side, BUSI label_conflict groups never
go to the held-out side, and the held-out case list round-trips through ``binds evaluate
--cases``."""

from __future__ import annotations

import csv
import math

import pytest

from BINDSLib.model.data import Sample, group_of, holdout_ok, split_groups
from BINDSLib.study import Diagnosis, Study


def _sample(i: int, group: str, malignant: float, ok: bool = True) -> Sample:
    return Sample(study_id=f"s{i:03d}", prepared=None, malignant=malignant, subtype=-1,
                  pathology=None, wsi=None, group=group, holdout_ok=ok)


def _samples() -> list[Sample]:
    out = []
    i = 0
    for g in range(60):
        conflict = g % 10 == 0  # 6 groups with conflicting labels
        for k in range(1 + g % 3):
            mal = float((g + k) % 2) if conflict else float(g % 3 == 0)
            out.append(_sample(i, f"dup:{g}", mal, ok=not conflict))
            i += 1
    return out


def test_holdout_ok_reads_label_conflict():
    def study(**attrs):
        return Study(study_id="x", diagnosis=Diagnosis.BENIGN, attributes=attrs)

    assert holdout_ok(study())
    assert holdout_ok(study(dup_group="3", label_conflict="0"))
    assert not holdout_ok(study(dup_group="3", label_conflict="1"))
    assert group_of(study(dup_group="3")) == "dup:3"


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_conflict_groups_never_held_out(seed):
    samples = _samples()
    rest, held = split_groups(samples, 0.3, seed)
    assert sorted(rest + held) == list(range(len(samples)))
    assert held, "something must be held out"
    assert all(samples[i].holdout_ok for i in held)
    conflict = {s.group for s in samples if not s.holdout_ok}
    assert conflict and conflict <= {samples[i].group for i in rest}


@pytest.mark.parametrize("seed", [0, 3])
def test_groups_stay_on_one_side_and_split_is_reproducible(seed):
    samples = _samples()
    rest, held = split_groups(samples, 0.25, seed)
    assert {samples[i].group for i in rest}.isdisjoint({samples[i].group for i in held})
    assert split_groups(samples, 0.25, seed) == (rest, held)
    # stratified by the worst label of a group: both labels are held out
    assert {samples[i].malignant for i in held} == {0.0, 1.0}


def test_without_conflicts_split_is_unchanged():
    """Samples without the flag split exactly as before (the default holdout_ok is True)."""
    samples = [_sample(i, f"patient:{i // 2}", float(i % 5 == 0)) for i in range(40)]
    plain = [Sample(s.study_id, None, s.malignant, -1, None, None, s.group) for s in samples]
    assert split_groups(samples, 0.2, 0) == split_groups(plain, 0.2, 0)


def test_case_list_round_trip(tmp_path):
    from BINDSLib.commands.evaluate import read_case_list
    from BINDSLib.model.train import write_case_list

    samples = _samples()
    _, held = split_groups(samples, 0.2, 0)
    path = tmp_path / "validation_cases.csv"
    write_case_list(path, [samples[i] for i in held])
    assert read_case_list(path) == {samples[i].study_id for i in held}
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert rows[0].keys() == {"study_id", "group", "malignant"}
    plain = tmp_path / "ids.txt"
    plain.write_text("a\nb\n", encoding="utf-8")
    assert read_case_list(plain) == {"a", "b"}


def test_busi_split_keeps_conflicts_in_training(shared_data):
    """On the real BUSI manifest: no label_conflict study and no split dup_group in validation."""
    root = shared_data / "busi"
    if not (root / "manifest.csv").is_file():
        pytest.skip("BUSI not in the shared data")
    with open(root / "manifest.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    samples = []
    for i, r in enumerate(rows):
        mal = {"malignant": 1.0, "benign": 0.0, "normal": 0.0}.get(r["label"], math.nan)
        st = Study(study_id=r["case_id"], attributes={"dup_group": r["dup_group"],
                                                      "label_conflict": r["label_conflict"]})
        samples.append(_sample(i, group_of(st), mal, holdout_ok(st)))
    rest, held = split_groups(samples, 0.2, 0)
    assert not any(rows[i]["label_conflict"] == "1" for i in held)
    assert {samples[i].group for i in rest}.isdisjoint({samples[i].group for i in held})
    assert 0.15 < len(held) / len(rows) < 0.25
