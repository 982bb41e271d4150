"""Separable linear interpolation (BINDSLib/model/interpolation.py); the crops themselves are
compared with grid_sample in test_model_network.py."""

from __future__ import annotations

import pytest
import torch

from BINDSLib.model.interpolation import box_taps, separable_linear


def _apply(taps, values):
    i0, i1, w0, w1 = taps
    return (values[i0] * w0 + values[i1] * w1).tolist()


def test_box_taps_follow_grid_samples_coordinate_rules():
    v = torch.tensor([10.0, 20.0, 30.0, 40.0, 50.0], dtype=torch.float64)
    # a box over the whole axis reads the source's own rows...
    assert _apply(box_taps(0.0, 1.0, 5, 5), v) == pytest.approx(v.tolist())
    # ... and taps outside the source weigh nothing (zero padding, half-voxel borders):
    # source coordinates -1.5, 0.5, 2.5, 4.5 (grid_sample gives the same)
    assert _apply(box_taps(0.0, 2.0, 4, 4), v[:4]) == pytest.approx([0.0, 15.0, 35.0, 0.0])


def test_separable_linear_in_chunks_is_one_pass(monkeypatch):
    """Chunking along the first axis (to bound the temporaries) changes no value: the same
    result with chunks of one output row and in one piece, from a strided source."""
    from BINDSLib.model import interpolation

    gen = torch.Generator().manual_seed(5)
    src = torch.rand((9, 12, 10, 3), generator=gen).permute(1, 0, 2, 3)  # (12, 9, 10, 3), strided
    taps = [box_taps(0.1, 0.8, 12, 7), box_taps(-0.3, 1.2, 9, 11), box_taps(0.0, 0.5, 10, 4)]
    whole = separable_linear(src, taps)
    monkeypatch.setattr(interpolation, "CHUNK_BYTES", 1)  # one output row per chunk
    rows = separable_linear(src, taps)
    assert whole.shape == (7, 11, 4, 3) and whole.is_contiguous()
    assert torch.allclose(whole, rows, atol=1e-6)
    # and both are the separable product of the taps, written out per voxel
    want = torch.zeros((7, 11, 4, 3), dtype=torch.float64)
    for o0 in range(7):
        for o1 in range(11):
            for o2 in range(4):
                for i, wi in ((taps[0][0][o0], taps[0][2][o0]), (taps[0][1][o0], taps[0][3][o0])):
                    for j, wj in ((taps[1][0][o1], taps[1][2][o1]), (taps[1][1][o1], taps[1][3][o1])):
                        for k, wk in ((taps[2][0][o2], taps[2][2][o2]), (taps[2][1][o2], taps[2][3][o2])):
                            want[o0, o1, o2] += wi * wj * wk * src[i, j, k].double()
    assert torch.allclose(whole.double(), want, atol=1e-5)
