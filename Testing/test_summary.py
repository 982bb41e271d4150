"""The PNG summary: lesion outlines where the lesion is (small ones included), saliency in
heat colours, images fitted with their physical aspect, long text lines wrapped."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from BINDSLib.outputs.summary import (DPI, LINE_INCHES, OUTLINE_RGB, PANEL_INCHES, TEXT_CHARS,
                                      render_panel, representative_slice, write_summary_png)

CYAN = tuple(int(c * 255) for c in OUTLINE_RGB)


def _is(pic, rgb):
    return np.all(pic == np.array(rgb, np.uint8), axis=-1)


def test_small_lesion_in_a_large_image_keeps_its_outline_at_its_place():
    img = np.random.default_rng(0).integers(0, 4000, (1, 2000, 1600)).astype(np.uint16)
    lesion = np.zeros(img.shape, np.uint8)
    lesion[0, 1500:1503, 400:403] = 1  # 3 x 3 pixels, far smaller than one display sample
    pic, k = render_panel(img, lesion, None, 1.0, (250, 250))
    assert k == 0
    assert pic.shape == (250, 200, 3)  # 2000 x 1600 fitted into 250 x 250, aspect kept
    r, c = np.nonzero(_is(pic, CYAN))
    assert r.size > 0
    # the lesion sits at 75 % of the height and 25 % of the width
    assert abs(r.mean() / 250 - 0.75) < 0.02 and abs(c.mean() / 200 - 0.25) < 0.02


def test_outline_follows_a_large_lesion_and_not_its_inside():
    img = np.zeros((1, 100, 100), np.float32)
    lesion = np.zeros_like(img, dtype=np.uint8)
    lesion[0, 20:60, 30:80] = 1
    pic, _ = render_panel(img, lesion, None, 1.0, (100, 100))
    cyan = _is(pic, CYAN)
    assert cyan[20, 30:80].all() and cyan[59, 30:80].all() and cyan[20:60, 30].all()
    assert not cyan[40, 55]  # inside stays the image
    assert not cyan[:18].any() and not cyan[62:].any()


def test_saliency_blends_heat_only_where_shown():
    img = np.full((1, 64, 64), 100.0, np.float32)
    img[0, 0, 0] = 0.0  # a display range
    sal = np.zeros_like(img)
    sal[0, 10:20, 10:20] = 0.5  # hot: red-orange (1.0 would be white)
    sal[0, 40:50, 40:50] = 0.1  # below the floor: not shown
    pic, _ = render_panel(img, None, sal, 1.0, (64, 64))
    hot = pic[15, 15].astype(int)
    assert hot[0] > hot[2] + 100  # red-yellow, not grey
    assert pic[45, 45, 0] == pic[45, 45, 1] == pic[45, 45, 2]  # grey
    assert not _is(pic, CYAN).any()


def test_physical_aspect_and_representative_slice():
    vol = np.zeros((5, 40, 80), np.int16)
    lesion = np.zeros_like(vol, dtype=np.uint8)
    lesion[3, 10:20, 10:20] = 1
    lesion[1, 10:12, 10:12] = 1
    pic, k = render_panel(vol, lesion, None, 2.0, (200, 200))
    assert k == 3 == representative_slice(lesion, None)
    assert pic.shape[:2] == (200, 200)  # 40 rows of 2 mm, 80 columns of 1 mm: square


@pytest.mark.parametrize("n_panels", [1, 6])
def test_summary_png_has_every_panel_and_the_text(tmp_path, n_panels):
    rng = np.random.default_rng(1)
    panels = []
    for i in range(n_panels):
        vox = rng.integers(0, 255, (1, 120, 160)).astype(np.uint8)
        les = np.zeros_like(vox)
        les[0, 50:70, 60:90] = 1
        panels.append({"label": f"IMG{i}", "voxels": vox, "lesion": les, "saliency": None, "aspect": 1.0})
    long_line = "x" * 200
    out = write_summary_png(tmp_path / "summary.png", panels, ["line one", long_line], "BINDS - test")
    assert out.exists() and not list(tmp_path.glob(".*part*"))
    pic = np.asarray(Image.open(out).convert("RGB"))
    # a long note wraps: the figure is as wide as TEXT_CHARS characters (or the panels), not
    # as the note; the wrapped text stays inside the picture
    assert pic.shape[1] <= max(0.078 * TEXT_CHARS + 0.3, PANEL_INCHES * min(4, n_panels)) * DPI + 2
    assert pic.shape[1] >= 0.078 * TEXT_CHARS * DPI
    cyan = _is(pic, CYAN)
    # one outline per panel: count the panels' columns that hold cyan
    cols = min(4, n_panels)
    width = pic.shape[1] / cols
    assert {int(c // width) for c in np.nonzero(cyan.any(0))[0]} == set(range(cols))
    dark = pic.sum(-1) < 200
    text_in = LINE_INCHES * (3 + 2)  # 3 lines + 2
    text_rows = int(pic.shape[0] * text_in / (PANEL_INCHES * ((n_panels + 3) // 4) + text_in))
    text = dark[-text_rows:]
    assert text.any()  # the text block
    assert not text[:, -int(0.15 * DPI):].any()  # no character cut off at the right edge
    ink_rows = np.nonzero(text.any(1))[0]
    lines = 1 + np.count_nonzero(np.diff(ink_rows) > 3)  # runs of rows with ink
    assert lines == 3  # "line one" + the 200-character line in two (110 + 4 indent + 90)
    assert dark[:20].any()  # the title
