"""Synthetic breast imaging cases for teaching, tests and the demo model bundles.

* :func:`make_study` / :func:`make_case` - a multimodal study (4-view mammography,
  ultrasound of the lesion, DCE/T2/DWI/ADC MRI) with pathology, subtype and lesion masks.
* :func:`make_history` / :func:`make_cohort` - women's annual screening mammograms with a
  latent risk and a cancer outcome (longitudinal risk).
* :func:`write_phantoms` - batches of either as study folders plus ``manifest.csv``.

Everything is deterministic from a seed. See docs/SYNTHETIC.md for what is simulated and
what is not realistic.
"""

from .cases import SIZES, CaseTruth, SizePreset, SyntheticCase, make_case, make_study, size_preset
from .fields import derive_seed
from .lesion import SUBTYPE_PROBABILITIES, Phenotype, sample_pathology, sample_phenotype
from .longitudinal import WomanRisk, make_cohort, make_history, sample_woman
from .phantoms import write_phantoms

__all__ = [
    "make_study", "make_case", "CaseTruth", "SyntheticCase", "SIZES", "SizePreset", "size_preset",
    "make_history", "make_cohort", "sample_woman", "WomanRisk", "write_phantoms",
    "derive_seed", "SUBTYPE_PROBABILITIES", "Phenotype", "sample_pathology", "sample_phenotype",
]
