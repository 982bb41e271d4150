"""Score-level and map-level ensembles of MG bundles trained on the same split (docs/VALIDATION.md,
"Ensembling"). Not part of BINDS: an experiment, kept so that its figures can be reproduced.

    python docs/validation/mg_ensemble.py val|full BUNDLE [BUNDLE ...] [--data MINI_MIAS]

For every mini-MIAS study (``val``: the studies of the first bundle's validation_cases.csv;
``full``: all), each bundle predicts as ``binds evaluate`` does (the other breast attached).
An ensemble's finding score is the sum of its members' finding logits, each z-scored over the
studies; its saliency map is the sum of its members' maps, each scaled to [0, 1]. It prints
abnormal vs normal (AUC) and the pointing game of every member and every combination.
``--data``: the mini-MIAS folder (default: ../shared/data/mini-mias beside the repository).
"""

import argparse
import csv
import itertools
from pathlib import Path

import numpy as np

from BINDSLib.io.datasets import iter_mini_mias
from BINDSLib.model.evaluation import _lesion_reference
from BINDSLib.model.inference import DiagnosisModel
from BINDSLib.model.metrics import auc, pointing_hit

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "mini-mias"


def studies_of(split: str, bundle, data: Path) -> list:
    """The mini-MIAS studies of ``split``: ``val``, those of the bundle's validation_cases.csv;
    ``full``, all."""
    val = {r["study_id"] for r in csv.DictReader(open(Path(bundle) / "docs" / "validation_cases.csv"))}
    return [s for s in iter_mini_mias(data) if split == "full" or s.study_id in val]


def read(model, study) -> tuple[float, np.ndarray]:
    """The study's finding logit and its film's saliency map scaled to [0, 1]."""
    p = model.predict(study, saliency="alignment")
    s = np.asarray(p.images[study.images[0].label].saliency, np.float32)
    return p.finding_logit, (s - s.min()) / (np.ptp(s) + 1e-12)


def report(split: str, studies: list, scores: dict, maps: dict, combinations) -> None:
    """Print abnormal vs normal and the pointing game of each combination (a tuple of keys of
    ``scores`` (N,) and ``maps`` (N maps)): scores summed, maps summed."""
    y = np.array([int(s.diagnosis.value != "normal") for s in studies])
    refs = [_lesion_reference(s.images[0]) for s in studies]
    for names in combinations:
        z = sum(np.asarray(scores[k]) for k in names)
        hits = [pointing_hit(sum(maps[k][i] for k in names), r) for i, r in enumerate(refs) if r is not None]
        print(f"{split} {' + '.join(map(str, names))}: abnormal vs normal {auc(z, y):.3f}, "
              f"pointing game {np.mean(hits):.3f} ({sum(hits)}/{len(hits)})", flush=True)


def main(split: str, bundles: list[str], data: Path = DATA) -> None:
    studies = studies_of(split, bundles[0], data)
    scores, maps = {}, {}
    for b in bundles:
        model = DiagnosisModel.from_bundle(b, device="cpu")
        f, maps[b] = zip(*(read(model, st) for st in studies))
        scores[b] = (np.array(f) - np.mean(f)) / np.std(f)
    report(split, studies, scores, maps,
           [c for k in range(1, len(bundles) + 1) for c in itertools.combinations(bundles, k)])


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="Ensembles of MG bundles trained on the same split.")
    ap.add_argument("split", choices=("val", "full"))
    ap.add_argument("bundles", nargs="+")
    ap.add_argument("--data", type=Path, default=DATA)
    a = ap.parse_args()
    main(a.split, a.bundles, a.data)
