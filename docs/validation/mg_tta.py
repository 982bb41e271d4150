"""Intensity test-time augmentation of an MG bundle (docs/VALIDATION.md, "test-time
augmentation"). Not part of BINDS: an experiment, kept so that its figures can be reproduced.

    python docs/validation/mg_tta.py val|full [--model BUNDLE] [--data MINI_MIAS]

Every mini-MIAS study (``val``: those of the bundle's validation_cases.csv; ``full``: all) is
predicted as ``binds evaluate`` predicts it (the other breast attached), once as it is and once
with each gamma of ``GAMMAS`` applied to its films and its comparison films
(``v -> max * (v / max) ** gamma``, within the contrast augmentation training used, gamma
0.7-1.5). A TTA score is the sum of the variants' finding logits; its saliency map the sum of
their maps, each scaled to [0, 1]. Prints abnormal vs normal (AUC) and the pointing game.
"""

import argparse
import copy
from pathlib import Path

import numpy as np
from mg_ensemble import read, report, studies_of  # beside this script

from BINDSLib.model.inference import DiagnosisModel

ROOT = Path(__file__).resolve().parents[2]
GAMMAS = (1.0, 0.8, 1.25)


def with_gamma(study, g: float):
    """A copy of ``study`` whose films and comparison films have gamma ``g``."""
    def film(im):
        im = copy.copy(im)
        v = np.asarray(im.voxels, np.float32)
        top = float(v.max()) or 1.0
        im.voxels = (top * (v / top) ** g).astype(np.float32)
        return im
    out = copy.copy(study)
    out.images, out.comparison = [film(i) for i in study.images], [film(i) for i in study.comparison]
    return out


def main(split: str, bundle: Path, data: Path) -> None:
    studies = studies_of(split, bundle, data)
    model = DiagnosisModel.from_bundle(bundle, device="cpu")
    scores, maps = {}, {}
    for g in GAMMAS:
        scores[g], maps[g] = zip(*(read(model, st if g == 1.0 else with_gamma(st, g)) for st in studies))
    report(f"{split} gamma", studies, scores, maps, [(g,) for g in GAMMAS] + [GAMMAS])


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="Intensity test-time augmentation of an MG bundle.")
    ap.add_argument("split", choices=("val", "full"))
    ap.add_argument("--model", type=Path, default=ROOT / "Resources" / "Models" / "binds-mg-mias")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "mini-mias")
    a = ap.parse_args()
    main(a.split, a.model, a.data)
