"""Separable linear interpolation (BINDSLib/model/interpolation.py) against torch's kernels."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from BINDSLib.model.interpolation import box_taps, resize, resize_taps


@pytest.mark.parametrize("shape,size", [
    ((1, 1, 12, 24, 24), (96, 192, 192)),   # the lesion logits of the paper preset's MRI
    ((2, 1, 3, 6, 6), (17, 40, 33)),         # up-sampling by odd factors
    ((1, 1, 20, 9, 31), (7, 9, 10)),         # down-sampling, one axis kept
    ((1, 1, 1, 1, 5), (4, 3, 5)),            # single-voxel axes
])
def test_resize_is_interpolate(shape, size):
    gen = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=gen) * 5
    want = F.interpolate(x.double(), size=size, mode="trilinear", align_corners=False).float()
    got = resize(x, size)
    assert got.shape == want.shape and got.is_contiguous()
    assert torch.allclose(got, want, atol=2e-5), float((got - want).abs().max())
    with torch.inference_mode():  # how the diagnosis runs it
        assert torch.allclose(resize(x, size), want, atol=2e-5)


def test_resize_keeps_torchs_kernel_for_autograd_2d_and_channels():
    x = torch.randn(1, 1, 4, 5, 6, requires_grad=True)
    y = resize(x, (8, 10, 12))
    assert y.grad_fn is not None and "UpsampleTrilinear3D" in type(y.grad_fn).__name__
    y.sum().backward()  # training differentiates through the lesion logits
    assert x.grad is not None
    x2 = torch.randn(2, 3, 7, 9)
    assert torch.equal(resize(x2, (14, 5)), F.interpolate(x2, size=(14, 5), mode="bilinear",
                                                          align_corners=False))
    x3 = torch.randn(1, 4, 3, 4, 5)  # several channels: torch's vectorised kernel
    assert torch.equal(resize(x3, (6, 8, 10)), F.interpolate(x3, size=(6, 8, 10), mode="trilinear",
                                                             align_corners=False))


def _apply(taps, values):
    i0, i1, w0, w1 = taps
    return (values[i0] * w0 + values[i1] * w1).tolist()


def test_taps_follow_torchs_coordinate_rules():
    v = torch.tensor([10.0, 20.0, 30.0, 40.0, 50.0], dtype=torch.float64)
    # interpolate: p = (o + 0.5) * in / out - 0.5 = 0 (clamped), .25, .75, 1.25 (row 1 only)
    assert _apply(resize_taps(2, 4), v[:2]) == pytest.approx([10.0, 12.5, 17.5, 20.0])
    # grid_sample: a box over the whole axis reads the source's own rows...
    assert _apply(box_taps(0.0, 1.0, 5, 5), v) == pytest.approx(v.tolist())
    # ... and taps outside the source weigh nothing (zero padding, half-voxel borders):
    # source coordinates -1.5, 0.5, 2.5, 4.5 (grid_sample gives the same)
    assert _apply(box_taps(0.0, 2.0, 4, 4), v[:4]) == pytest.approx([0.0, 15.0, 35.0, 0.0])
