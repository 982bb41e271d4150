"""The BINDS diagnosis model: multimodal (MG, US, MRI) breast lesion malignancy and molecular
subtype, lesion localisation, modality contributions and alignment-based saliency.

Public API (torch is imported only when a model is built or loaded)::

    from BINDSLib.model import DiagnosisModel
    model = DiagnosisModel.from_bundle("binds-diagnosis-demo")   # or a bundle path
    pred = model.predict(study, lesion_masks=None, modalities=None)

Modules: :mod:`.config` (settings, presets), :mod:`.preprocess` (study -> inputs, maps back to
image grids), :mod:`.encoders`, :mod:`.crops`, :mod:`.fusion`, :mod:`.pathology`,
:mod:`.network`, :mod:`.losses`, :mod:`.saliency`, :mod:`.inference`, :mod:`.data`,
:mod:`.train`, :mod:`.calibration`, :mod:`.metrics`, :mod:`.evaluation`, :mod:`.plots`.
See docs/MODEL.md.
"""

from .config import COMBINATIONS, MODALITIES, MR_CHANNELS, SUBTYPES, DiagnosisConfig, preset
from .inference import DEFAULT_BUNDLE, DiagnosisModel, ImageOutput, Prediction

__all__ = ["COMBINATIONS", "DEFAULT_BUNDLE", "MODALITIES", "MR_CHANNELS", "SUBTYPES",
           "DiagnosisConfig", "DiagnosisModel", "ImageOutput", "Prediction", "preset"]
