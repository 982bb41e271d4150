"""Preprocessing: model grids, exact mapping back to each image's grid, MG orientation, MR
stacking in physical space, intensity normalisation."""

from __future__ import annotations

import numpy as np
import pytest

from BINDSLib.errors import InputError
from BINDSLib.model.config import MR_CHANNELS
from BINDSLib.model.preprocess import (
    SourceImage, chest_wall_on_right, normalise_intensity, plane_grid, prepare_study,
    to_image_grid, to_model_grid, volume_grid,
)
from BINDSLib.study import Geometry
from test_model_cases import OBLIQUE, ball, make_case, tiny_config


def _centroid_lps(mask: np.ndarray, geometry: Geometry) -> np.ndarray:
    idx = np.argwhere(mask > 0.5).mean(0)  # (slice, row, col)
    return geometry.index_to_lps(idx[::-1])


def test_plane_grid_keeps_physical_positions_for_oblique_geometry():
    shape = (1, 48, 64)
    blob = ball(shape, (0, 13, 41), 2.0, OBLIQUE.spacing_mm)
    src = SourceImage("US", shape, OBLIQUE)
    grid = plane_grid(shape, OBLIQUE, (96, 96))
    on_model = to_model_grid(blob.astype(np.float32), src, grid)
    # the blob's physical centre is the same on the model grid (tolerance << one image voxel)
    err = np.linalg.norm(_centroid_lps(on_model, grid.geometry) - _centroid_lps(blob, OBLIQUE))
    assert err < 0.1
    # isotropic in-plane, aspect kept, same orientation
    sx, sy, _ = grid.geometry.spacing_mm
    assert sx == pytest.approx(sy)
    assert np.allclose(grid.geometry.direction_matrix, OBLIQUE.direction_matrix)


def test_map_back_is_exact_on_the_original_grid():
    shape = (1, 48, 64)
    blob = ball(shape, (0, 20, 30), 4.0, OBLIQUE.spacing_mm)
    src = SourceImage("US", shape, OBLIQUE)
    grid = plane_grid(shape, OBLIQUE, (128, 128))
    back = to_image_grid(to_model_grid(blob.astype(np.float32), src, grid), grid, src) >= 0.5
    assert back.shape == shape
    # voxel-exact apart from the boundary; a one-voxel shift would break both checks
    assert (back != blob.astype(bool)).sum() <= 0.1 * blob.sum()
    assert np.abs(np.argwhere(back).mean(0) - np.argwhere(blob).mean(0)).max() < 0.25


def test_known_point_lands_on_the_right_voxel():
    shape = (1, 30, 40)
    geom = Geometry((0.8, 0.5, 1.0), (5.0, -3.0, 2.0), (0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0))
    grid = plane_grid(shape, geom, (60, 60))
    model = np.zeros(grid.shape, np.float32)
    target = np.array([23, 11])  # (col, row) in the image
    # a peak on the model grid exactly at the image voxel's physical position
    lps = geom.index_to_lps((target[0], target[1], 0))
    ijk = np.linalg.solve(grid.geometry.direction_matrix * np.array(grid.geometry.spacing_mm),
                          lps - np.array(grid.geometry.origin_mm))
    rr, cc = np.mgrid[:grid.shape[1], :grid.shape[2]]
    model[0] = np.exp(-((cc - ijk[0]) ** 2 + (rr - ijk[1]) ** 2) / 2.0)
    back = to_image_grid(model, grid, SourceImage("x", shape, geom))
    assert tuple(np.unravel_index(np.argmax(back), shape)) == (0, target[1], target[0])


def test_right_mammogram_is_mirrored_and_mapped_back():
    study = make_case(0, True, ("MG",))
    prep = prepare_study(study, tiny_config(), use_reference_masks=True)
    mg = prep.inputs["MG"]
    assert [s[0].label for s in mg.sources] == ["MG_L_CC", "MG_L_MLO", "MG_R_CC", "MG_R_MLO"]
    for k in range(4):
        img = mg.images[k, 0]
        cols = img.shape[1]
        # chest wall (the bright band) ends up at the left for both breasts
        assert img[:, : cols // 4].mean() > img[:, -cols // 4:].mean()
    r_cc = mg.grids[2]
    assert r_cc.geometry.direction_matrix[0, 0] == pytest.approx(-1.0)  # column axis reversed
    src = mg.sources[0][0]
    mask = study.image("MG_L_CC").lesion_mask
    back = to_image_grid(mg.masks[0, 0].astype(np.float32), mg.grids[0], src) >= 0.5
    assert (back != mask.astype(bool)).sum() <= 0.15 * mask.sum()


def test_chest_wall_rule():
    plane = np.zeros((20, 30))
    plane[:, :8] = 1.0
    assert chest_wall_on_right(plane, "L") is False
    assert chest_wall_on_right(plane, "R") is False  # stored mirrored already: keep
    assert chest_wall_on_right(plane[:, ::-1], "R") is True


def test_mr_sequences_on_other_grids_meet_on_the_reference_grid():
    study = make_case(0, True, ("MR",))
    prep = prepare_study(study, tiny_config(), use_reference_masks=True)
    mr = prep.inputs["MR"]
    assert mr.images.shape == (1, len(MR_CHANNELS), 8, 32, 32)
    assert mr.channels.all()
    grid = mr.grids[0]
    # the reference is DCE1; its grid covers the DCE1 volume
    dce1 = study.image("MR_DCE1")
    assert np.allclose(grid.geometry.direction_matrix, dce1.geometry.direction_matrix)
    # the lesion (bright in every channel) peaks at the same model voxel in T2 (coarser grid,
    # other origin) as in DCE1 - physical-space resampling
    t2 = MR_CHANNELS.index("T2")
    d1 = MR_CHANNELS.index("DCE1")
    c_t2 = np.argwhere(mr.images[0, t2] > 0.8 * mr.images[0, t2].max()).mean(0)
    c_d1 = np.argwhere(mr.images[0, d1] > 0.8 * mr.images[0, d1].max()).mean(0)
    assert np.abs(c_t2 - c_d1).max() < 1.0
    # and maps come back onto every sequence's own grid
    back = to_image_grid(mr.masks[0, 0].astype(np.float32), grid, next(s for s in mr.sources[0] if s.label == "MR_T2"))
    assert back.shape == study.image("MR_T2").shape
    ref_c = np.argwhere(study.image("MR_T2").lesion_mask).mean(0)
    assert np.abs(np.argwhere(back >= 0.5).mean(0) - ref_c).max() < 0.75


def test_volume_grid_stretches_slices_keeps_in_plane_aspect():
    g = Geometry((2.0, 1.0, 4.0))
    grid = volume_grid((10, 40, 30), g, (5, 32, 32))
    sx, sy, sz = grid.geometry.spacing_mm
    assert sx == pytest.approx(sy) and sz == pytest.approx(8.0)


def test_multiframe_ultrasound_uses_one_frame_and_maps_back_to_it():
    study = make_case(0, True, ("US",), us_frames=3)
    prep = prepare_study(study, tiny_config())
    us = prep.inputs["US"]
    src = us.sources[0][0]
    assert src.frame == 1
    back = to_image_grid(np.ones(us.grids[0].shape, np.float32), us.grids[0], src)
    assert back.shape == (3, 48, 64)
    assert back[0].max() == 0 and back[2].max() == 0 and back[1].mean() > 0.9


def test_a_cine_outlined_on_another_frame_is_read_on_that_frame():
    """A reader's outline on a frame other than the one the model would read: the model reads
    the outlined frame (else the outline would be dropped while the result says "user")."""
    study = make_case(0, True, ("US",), us_frames=5)
    im = study.images[0]
    mask = np.zeros(im.shape, np.uint8)
    mask[3, 18:24, 30:40] = 1
    prep = prepare_study(study, tiny_config(), lesion_masks={im.label: mask})
    us = prep.inputs["US"]
    assert us.sources[0][0].frame == 3 and us.masks[0, 0].any() and us.mask_given[0]
    # outlined on the frame read anyway (or on none): that frame, as before
    mask[2, 18:24, 30:40] = 1
    assert prepare_study(study, tiny_config(), lesion_masks={im.label: mask}).inputs["US"].sources[0][0].frame == 2
    assert prepare_study(study, tiny_config()).inputs["US"].sources[0][0].frame == 2


def test_normalise_intensity_robust_percentiles():
    x = np.linspace(0, 100, 10001, dtype=np.float32)
    x[-1] = 1e9  # a single bright marker
    y = normalise_intensity(x, (0.5, 99.5))
    assert y.dtype == np.float32 and y.min() == 0.0 and y.max() == 1.0
    assert y[5000] == pytest.approx(0.5, abs=0.01)
    assert normalise_intensity(np.full((4, 4), 7.0), (0.5, 99.5)).max() == 0.0


def test_modalities_selection_and_bad_masks():
    study = make_case(0, True)
    cfg = tiny_config()
    prep = prepare_study(study, cfg, modalities=("US",))
    assert prep.modalities == ("US",)
    with pytest.raises(InputError, match="none of the requested"):
        prepare_study(make_case(0, True, ("US",)), cfg, modalities=("MR",))
    with pytest.raises(InputError, match="shape"):
        prepare_study(study, cfg, lesion_masks={"US_L": np.zeros((5, 5))})
    with pytest.raises(InputError, match="no image"):
        prepare_study(study, cfg, lesion_masks={"US_R": np.zeros((48, 64))})


def _mg_labels(prep) -> list[str]:
    return [s[0].label for s in prep.inputs["MG"].sources]


def test_one_view_bundle_keeps_the_preferred_view_then_marked_images_first():
    study = make_case(0, True, ("MG",))  # L/R x CC/MLO
    plain = prepare_study(study, tiny_config(mg_max_views=1))
    assert _mg_labels(plain) == ["MG_L_CC"]  # slot order: L before R, CC before MLO
    mlo = tiny_config(mg_max_views=1, mg_views=("mlo",))
    assert mlo.mg_views == ("MLO",)
    prep = prepare_study(study, mlo)
    assert _mg_labels(prep) == ["MG_L_MLO"]
    assert sorted(n.split(":")[0] for n in prep.notes) == ["MG_L_CC", "MG_R_CC", "MG_R_MLO"]
    # a user's outline on another image wins over the view preference: it must be used
    edited = np.zeros(study.image("MG_R_CC").shape, np.uint8)
    edited[0, 30:36, 30:36] = 1
    prep = prepare_study(study, mlo, lesion_masks={"MG_R_CC": edited})
    assert _mg_labels(prep) == ["MG_R_CC"]
    # two slots: the kept images stay in slot order
    two = prepare_study(study, tiny_config(mg_max_views=2, mg_views=("MLO",)))
    assert _mg_labels(two) == ["MG_L_MLO", "MG_R_MLO"]
    with pytest.raises(ValueError, match="not mammography views"):
        tiny_config(mg_views=("LATERAL",))


def _film(rows=200, cols=160, lesion=(100, 50, 8)):
    """A film-like mammogram: dark background, the breast a half-disc at the left edge, a
    bright film label far from it at the top right, a lesion disc inside the breast."""
    rr, cc = np.mgrid[:rows, :cols]
    plane = np.zeros((rows, cols), np.float32)
    breast = ((rr - 100) / 80.0) ** 2 + (cc / 90.0) ** 2 <= 1
    plane[breast] = 0.5
    plane[8:18, 140:152] = 1.0  # the film label
    r, c, rad = lesion
    disc = (rr - r) ** 2 + (cc - c) ** 2 <= rad ** 2
    plane[disc] = 0.8
    return plane, disc


def test_breast_box_keeps_the_breast_and_drops_labels_and_background():
    from BINDSLib.model.preprocess import BREAST_MARGIN, breast_box

    plane, _ = _film()
    r0, r1, c0, c1 = breast_box(plane)
    mr, mc = round(BREAST_MARGIN * 200), round(BREAST_MARGIN * 160)
    # the breast spans rows 20-180 and columns 0-90; the label (columns 140-151) is left out
    assert (r0, r1, c0) == (20 - mr, 181 + mr, 0)
    assert c1 == 91 + mc and c1 < 140
    assert breast_box(np.zeros((50, 40), np.float32)) is None  # blank
    speck = np.zeros((100, 100), np.float32)
    speck[10:13, 10:13] = 1.0
    assert breast_box(speck) is None  # too small to be a breast: use the whole image
    # a large film is searched on a subsample, with the box scaled back to full resolution
    big = np.kron(plane, np.ones((8, 8), np.float32))
    b0, b1, d0, d1 = breast_box(big)
    assert abs(b0 - 8 * 20 + round(BREAST_MARGIN * 1600)) <= 8 and abs(d1 - 8 * 91 - round(BREAST_MARGIN * 1280)) <= 8


def test_breast_support_is_the_breast_grown_by_the_margin():
    from BINDSLib.model.preprocess import BREAST_MARGIN, breast_support

    plane, disc = _film()
    slots = np.stack([plane, np.zeros_like(plane)])[:, None]  # a film, and a blank slot
    support = breast_support(slots)
    assert support.shape == slots.shape and support.dtype == bool
    film = support[0, 0]
    rr, cc = np.mgrid[:200, :160]
    ellipse = ((rr - 100) / 80.0) ** 2 + (cc / 90.0) ** 2
    assert film[ellipse <= 1].all() and film[disc].all()  # the breast and its lesion
    assert not film[8:18, 140:152].any()  # the film label
    margin = round(BREAST_MARGIN * 200)  # 4 pixels: the skin line stays in, the background not
    assert film[100, 90 + margin - 1] and not film[100, 90 + margin + 2]
    assert not film[100, 130:].any() and not film[0:8, 100:].any()
    assert support[1, 0].all()  # no breast found: nothing is ruled out


def test_breast_fitted_grid_is_finer_and_maps_back_exactly():
    from BINDSLib.study import Image, Modality, Role, Study

    plane, disc = _film()
    geom = Geometry((0.4, 0.4, 1.0), (10.0, -5.0, 0.0))
    study = Study("film", [Image(plane[None] * 1000, geom, Role(Modality.MG, laterality="L", view="MLO"),
                                 lesion_mask=disc[None].astype(np.uint8))])
    cfg_image = tiny_config(mg_size=(96, 64), mg_max_views=1)
    cfg_breast = tiny_config(mg_size=(96, 64), mg_max_views=1, mg_fit="breast")
    whole = prepare_study(study, cfg_image, use_reference_masks=True).inputs["MG"]
    fitted = prepare_study(study, cfg_breast, use_reference_masks=True).inputs["MG"]
    g_whole, g_fit = whole.grids[0], fitted.grids[0]
    # the breast (about 160 x 91 pixels of 200 x 160) gets the grid: a finer spacing
    assert g_fit.geometry.spacing_mm[0] < 0.85 * g_whole.geometry.spacing_mm[0]
    # the reference lesion lands where it is in physical space, and maps back onto itself
    src = fitted.sources[0][0]
    on_model = fitted.masks[0, 0][None].astype(np.float32)
    err = np.linalg.norm(_centroid_lps(on_model, g_fit.geometry) - _centroid_lps(disc[None], geom))
    assert err < 0.2
    back = to_image_grid(on_model, g_fit, src) >= 0.5
    assert back.shape == (1, 200, 160)
    assert (back[0] != disc).sum() <= 0.25 * disc.sum()
    # outside the fitted box nothing comes back (the label's corner stays 0)
    ones = to_image_grid(np.ones(g_fit.shape, np.float32), g_fit, src)
    assert ones[0, 8:18, 140:152].max() == 0.0 and ones[0, 100, 40] == pytest.approx(1.0)


def test_breast_box_must_lie_in_the_image():
    with pytest.raises(ValueError, match="not inside"):
        plane_grid((1, 20, 20), Geometry(), (32, 32), box=(0, 25, 0, 10))
