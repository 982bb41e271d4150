"""Study checks before inference: unusable images refused, suspicious ones flagged."""

import numpy as np
import pytest

from BINDSLib.errors import InputError
from BINDSLib.study import Geometry, Image, Role, SourceInfo, Study
from BINDSLib.validation import breast_side, check_study


def mammogram(lat: str, chest_wall: str, seed: int = 0) -> np.ndarray:
    """A 2D image whose bright half-ellipse (the breast) lies against ``chest_wall``."""
    rng = np.random.default_rng(seed)
    rows, cols = 60, 40
    r, c = np.ogrid[:rows, :cols]
    x = c if chest_wall == "left" else cols - 1 - c
    breast = ((r - rows / 2) / (rows / 2.2)) ** 2 + (x / 30) ** 2 <= 1
    return (breast * 800 + rng.normal(0, 20, (rows, cols))).astype(np.float32)


def mg(role: str, side: str, seed=0) -> Image:
    return Image(mammogram(role[3], side, seed), Geometry((0.1, 0.1, 1)), Role.parse(role),
                 source=SourceInfo(files=(f"/data/{role}.dcm",)))


def four_views(r_side="right", l_side="left"):
    return [mg("MG_R_CC", r_side, 1), mg("MG_R_MLO", r_side, 2), mg("MG_L_CC", l_side, 3), mg("MG_L_MLO", l_side, 4)]


def test_breast_side():
    assert breast_side(mammogram("L", "left")) == "left"
    assert breast_side(mammogram("R", "right")) == "right"


@pytest.mark.parametrize("convention", [("right", "left"), ("left", "right")])
def test_consistent_views_pass_in_either_display_convention(convention):
    assert check_study(Study("s", four_views(*convention))) == []


def test_swapped_breasts_warn():
    views = four_views()
    views[2] = mg("MG_L_CC", "right", 3)  # the left CC lies like the right breast
    w = check_study(Study("s", views))
    assert any("left breast's views lie against different" in x for x in w)
    all_same = [mg("MG_R_CC", "right", 1), mg("MG_L_CC", "right", 2)]
    assert any("swapped" in x for x in check_study(Study("s", all_same)))


def test_duplicated_views_refused():
    a = mg("MG_L_CC", "left", 1)
    b = Image(a.voxels.copy(), a.geometry, Role.parse("MG_R_CC"), source=SourceInfo(files=("/data/x.dcm",)))
    with pytest.raises(InputError, match="same mammogram appears as MG_L_CC and MG_R_CC"):
        check_study(Study("s", [a, b]))
    with pytest.raises(InputError, match="MG_L_CC more than once"):
        check_study(Study("s", [mg("MG_L_CC", "left", 1), mg("MG_L_CC", "left", 2)]))


def test_wrong_dimensionality_and_constant_images_refused():
    vol = Image(np.random.default_rng(0).random((5, 8, 8)), Geometry(), Role.parse("MG_L_CC"),
                source=SourceInfo(files=("/data/tomo.dcm",)))
    with pytest.raises(InputError, match="must be a 2D image") as e:
        check_study(Study("s", [vol]))
    assert "/data/tomo.dcm" in str(e.value)
    flat = Image(np.random.default_rng(0).random((1, 8, 8)), Geometry(), Role.parse("MR_T2"))
    with pytest.raises(InputError, match="single 2D slice"):
        check_study(Study("s", [flat]))
    const = Image(np.full((1, 32, 32), 7, np.uint8), Geometry(), Role.parse("US_L"))
    with pytest.raises(InputError, match=r"constant image \(every voxel 7\)"):
        check_study(Study("s", [const]))


@pytest.mark.parametrize("shape", [(1, 2, 2), (1, 1, 5000), (1, 7, 400)])
def test_images_too_small_to_diagnose_are_refused(shape):
    tiny = Image(np.random.default_rng(0).random(shape), Geometry(), Role.parse("US_L"))
    with pytest.raises(InputError, match=rf"US_L is {shape[1]} x {shape[2]} pixels: too small"):
        check_study(Study("s", [tiny]))


def test_nearly_blank_images_and_pictures_without_a_pixel_size_are_noted():
    blank = np.zeros((1, 600, 500), np.uint8)
    blank[0, 300, 200] = 255  # one bright pixel
    us = Image(blank, Geometry(), Role.parse("US_L"), source=SourceInfo(files=("/data/scan.png",)))
    notes = check_study(Study("s", [us]))
    assert any(n.startswith("US_L is nearly blank") for n in notes)
    assert any("US_L is a picture file without a pixel size (scan.png): 1 mm pixels assumed" in n for n in notes)
    textured = np.random.default_rng(0).integers(0, 255, (1, 60, 50)).astype(np.uint8)
    placed = Image(textured, Geometry((0.1, 0.1, 1)), Role.parse("US_L"), source=SourceInfo(files=("/d/scan.png",)))
    assert check_study(Study("s", [placed])) == []  # a known pixel size, a real picture
