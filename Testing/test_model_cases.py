"""Small hand-made studies and a tiny network config for the diagnosis-model tests.

Imported by the other ``test_model_*`` / ``test_train`` / ``test_evaluate`` modules; the tests
here check the helpers themselves. Images are small and have non-trivial geometry (anisotropic
spacing, oblique directions, offsets) so that geometry mistakes show.
"""

from __future__ import annotations

import numpy as np

from BINDSLib.model.config import DiagnosisConfig, EncoderConfig
from BINDSLib.study import (
    Diagnosis, Geometry, Image, Modality, MRSequence, Pathology, Role, Study,
)

TINY_ENCODER_2D = EncoderConfig(layers=(1, 1, 1, 1), channels=(4, 8, 8, 16), stem_kernel=3)
TINY_ENCODER_3D = EncoderConfig(layers=(1, 1, 1, 1), channels=(4, 8, 8, 16), stem_kernel=3)


def tiny_config(**overrides) -> DiagnosisConfig:
    """A network small enough for unit tests (a forward pass in milliseconds)."""
    kw = dict(preset="demo", mg_size=(64, 48), us_size=(48, 64), mr_size=(8, 32, 32),
              mg_crop=(32, 32), us_crop=(32, 32), mr_crop=(16, 32, 32),
              locator_2d=TINY_ENCODER_2D, locator_3d=TINY_ENCODER_3D,
              classifier_2d=TINY_ENCODER_2D, classifier_3d=TINY_ENCODER_3D,
              embed_dim=16, fusion_layers=1, fusion_heads=2, align_dim=8, pathology_hidden=16,
              dropout=0.0)
    kw.update(overrides)
    return DiagnosisConfig(**kw)


def ball(shape, centre, radius_mm, spacing_mm) -> np.ndarray:
    """uint8 ``(D, R, C)`` ball of ``radius_mm`` around ``centre`` (slice, row, col) indices."""
    zz, yy, xx = np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij")
    d2 = (((xx - centre[2]) * spacing_mm[0]) ** 2 + ((yy - centre[1]) * spacing_mm[1]) ** 2
          + ((zz - centre[0]) * spacing_mm[2]) ** 2)
    return (d2 <= radius_mm ** 2).astype(np.uint8)


def rotation_z(degrees: float) -> tuple:
    a = np.deg2rad(degrees)
    return (np.cos(a), -np.sin(a), 0.0, np.sin(a), np.cos(a), 0.0, 0.0, 0.0, 1.0)


OBLIQUE = Geometry((0.6, 0.4, 1.0), (-12.0, 30.5, 7.0), rotation_z(30))


def _noise(rng, shape, mean, sd):
    return rng.normal(mean, sd, shape).astype(np.float32)


def tiny_model(metadata: dict | None = None, **overrides):
    """A :class:`DiagnosisModel` of :func:`tiny_config` with seeded random weights and a
    malignant pathology prototype (so that alignment saliency is not flat), on the CPU."""
    import torch

    from BINDSLib.model.inference import DiagnosisModel
    from BINDSLib.model.network import DiagnosisNetwork

    torch.manual_seed(0)
    net = DiagnosisNetwork(tiny_config(**overrides))
    net.pathology.prototype_malignant.copy_(torch.randn(net.config.align_dim))
    net.pathology.prototype_counts[0] = 1
    return DiagnosisModel(net, metadata or {}, device="cpu")


def make_case(seed: int = 0, malignant: bool | None = True, modalities=("MG", "US", "MR"),
              us_frames: int = 1) -> Study:
    """A study with a lesion (``malignant`` None: a normal study) in every requested modality.

    Malignant lesions are brighter on MG and MR and darker on US than benign ones, so a
    network can learn the label quickly. MG: four views (right breast stored with the chest
    wall at the right); US: an oblique geometry; MR: seven sequences, T2 and ADC on a coarser
    grid with another origin.
    """
    rng = np.random.default_rng(seed)
    gain = 1.0 if malignant is None else (1.6 if malignant else 0.8)
    has_lesion = malignant is not None
    images = []
    if "MG" in modalities:
        shp, sp = (1, 72, 56), (0.5, 0.5, 1.0)
        for lat in "LR":
            for view in ("CC", "MLO"):
                v = _noise(rng, shp, 100, 8)
                wall = slice(0, 18) if lat == "L" else slice(-18, None)
                v[:, :, wall] += 60
                c = (0, 30 + rng.integers(-4, 5), 30 + rng.integers(-4, 5))
                m = ball(shp, c, 5.0, sp) if has_lesion and lat == "L" else np.zeros(shp, np.uint8)
                v += m * 70 * gain
                images.append(Image(v, Geometry(sp, (0.0, 0.0, 0.0)), Role(Modality.MG, laterality=lat, view=view),
                                    lesion_mask=m))
    if "US" in modalities:
        shp = (us_frames, 48, 64)
        v = _noise(rng, shp, 60, 8)
        m = ball(shp, (us_frames // 2, 20, 35), 4.0, OBLIQUE.spacing_mm) if has_lesion else np.zeros(shp, np.uint8)
        v -= m * 25 * gain
        images.append(Image(v, OBLIQUE, Role(Modality.US, laterality="L"), lesion_mask=m))
    if "MR" in modalities:
        ref = Geometry((2.0, 2.0, 3.0), (-30.0, -20.0, -15.0))
        coarse = Geometry((3.0, 3.0, 4.0), (-31.0, -21.5, -16.0))
        centre_lps = ref.index_to_lps((17, 15, 5))
        for seq, phase in ((MRSequence.T1_PRE, None), (MRSequence.DCE, 1), (MRSequence.DCE, 2),
                           (MRSequence.DCE, 3), (MRSequence.T2, None), (MRSequence.DWI, None),
                           (MRSequence.ADC, None)):
            geom, shp = (coarse, (8, 22, 24)) if seq in (MRSequence.T2, MRSequence.ADC) else (ref, (10, 32, 36))
            c = np.linalg.solve(geom.direction_matrix * np.array(geom.spacing_mm), centre_lps - np.array(geom.origin_mm))
            m = ball(shp, (c[2], c[1], c[0]), 7.0, geom.spacing_mm) if has_lesion else np.zeros(shp, np.uint8)
            v = _noise(rng, shp, 100, 8) + m * 40 * gain * (phase or 1)
            role = Role(Modality.MR, sequence=seq, phase=phase,
                        b_value=800.0 if seq is MRSequence.DWI else None)
            images.append(Image(v, geom, role, lesion_mask=m))
    if malignant is None:
        diagnosis, pathology = Diagnosis.NORMAL, None
    elif malignant:
        diagnosis = Diagnosis.MALIGNANT
        pathology = Pathology(malignant=True, histology="invasive ductal carcinoma (NST)", grade=2,
                              er_percent=80, pr_percent=40, her2_score=1, ki67_percent=10)
    else:
        diagnosis, pathology = Diagnosis.BENIGN, Pathology(malignant=False, histology="fibroadenoma")
    return Study(f"case{seed}", images, patient_id=f"woman{seed}", diagnosis=diagnosis,
                 pathology=pathology)


def test_make_case_has_requested_modalities_and_masks():
    s = make_case(1, True, ("MG", "MR"))
    assert [m.value for m in s.modalities()] == ["MG", "MR"]
    assert len(s.of("MG")) == 4 and len(s.of("MR")) == 7
    assert s.image("MR_DCE1").lesion_mask.sum() > 0 and s.image("MR_T2").lesion_mask.sum() > 0
    assert s.pathology.subtype.value == "luminal_a"


def test_tiny_config_round_trips_json():
    cfg = tiny_config()
    assert DiagnosisConfig.from_json(cfg.to_json()) == cfg
