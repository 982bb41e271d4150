"""The fused oneDNN convolution (conv + bias [+ residual] [+ ReLU] in one call) equals the plain
steps, in 2D and 3D, and stays fused on a build that has the operator."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from BINDSLib import fusedconv
from BINDSLib.fusedconv import channels_last, conv_act

ALL_ON = {(flavour, ndim): True for flavour in ("unary", "binary") for ndim in (4, 5)}


@pytest.fixture
def fusion_on(monkeypatch):
    """Every flavour switched on, as in a fresh process; the test then checks that none of
    them fell back (on a build that has the operator)."""
    monkeypatch.setattr(fusedconv, "ENABLED", dict(ALL_ON))
    yield
    if fusedconv._HAVE_OP:
        assert fusedconv.ENABLED == ALL_ON, "a fused flavour fell back to plain convolutions"


def _reference(x, w, b, stride, relu, residual):
    conv = F.conv3d if x.ndim == 5 else F.conv2d
    y = conv(x, w, b, stride, 1)
    if residual is not None:
        y = y + residual
    return F.relu(y) if relu else y


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("with_residual", [True, False])
def test_conv_act_equals_the_plain_steps(dims, relu, with_residual, fusion_on):
    g = torch.Generator().manual_seed(dims * 4 + relu * 2 + with_residual)
    x = torch.randn(2, 6, *[10] * dims, generator=g).contiguous(memory_format=channels_last(dims + 2))
    w = (torch.randn(6, 6, *[3] * dims, generator=g) * 0.2).contiguous(memory_format=channels_last(dims + 2))
    b = torch.randn(6, generator=g)
    residual = torch.randn_like(x) if with_residual else None
    ref = _reference(x, w, b, [1] * dims, relu, residual)
    with torch.inference_mode():
        out = conv_act(x, w, b, [1] * dims, [1] * dims, [1] * dims, 1, relu, residual)
    assert out.shape == ref.shape
    assert torch.allclose(out, ref, atol=1e-5)
    if relu:  # the ReLU clipped something
        assert (out >= 0).all() and (_reference(x, w, b, [1] * dims, False, residual) < 0).any()


@pytest.mark.skipif(not fusedconv._HAVE_OP, reason="this torch build has no oneDNN fused convolution")
@pytest.mark.parametrize("dims", [2, 3])
def test_both_fused_flavours_run_on_this_build(dims, monkeypatch):
    """Before, the residual sum used the "sum" post-op, which torch 2.13 refuses: every call
    fell back to plain convolutions after the first, silently."""
    monkeypatch.setattr(fusedconv, "ENABLED", dict(ALL_ON))
    calls = []
    op = torch.ops.mkldnn._convolution_pointwise

    class Spy:
        def __call__(self, *a):
            calls.append("unary")
            return op(*a)

        def binary(self, *a):
            calls.append("binary")
            return op.binary(*a)

    monkeypatch.setattr(torch.ops.mkldnn, "_convolution_pointwise", Spy(), raising=False)
    cl = channels_last(dims + 2)
    x = torch.randn(1, 4, *[8] * dims).contiguous(memory_format=cl)
    w = torch.randn(4, 4, *[3] * dims).contiguous(memory_format=cl)
    one = [1] * dims
    with torch.inference_mode():
        conv_act(x, w, torch.zeros(4), one, one, one, 1, True)
        conv_act(x, w, torch.zeros(4), one, one, one, 1, True, residual=x.clone())
    assert calls == ["unary", "binary"] and fusedconv.ENABLED == ALL_ON


def test_gradients_take_the_plain_path():
    x = torch.randn(1, 3, 6, 6, requires_grad=True)
    w = torch.randn(3, 3, 3, 3)
    out = conv_act(x, w, None, [1, 1], [1, 1], [1, 1], 1, True, residual=torch.ones(1, 3, 6, 6))
    out.sum().backward()
    ref_x = x.detach().clone().requires_grad_(True)
    _reference(ref_x, w, None, [1, 1], True, torch.ones(1, 3, 6, 6)).sum().backward()
    assert torch.allclose(x.grad, ref_x.grad, atol=1e-5)


def test_a_failing_flavour_is_switched_off_and_the_result_still_right(monkeypatch):
    monkeypatch.setattr(fusedconv, "ENABLED", dict(ALL_ON))

    class Broken:
        def __call__(self, *a):
            raise RuntimeError("Unary Fusion behavior undefined.")

        def binary(self, *a):
            raise RuntimeError("Binary Fusion behavior undefined.")

    monkeypatch.setattr(torch.ops.mkldnn, "_convolution_pointwise", Broken(), raising=False)
    x = torch.randn(1, 2, 5, 5)
    w = torch.randn(2, 2, 3, 3)
    with torch.inference_mode():
        out = conv_act(x, w, None, [1, 1], [1, 1], [1, 1], 1, True, residual=x)
    assert fusedconv.ENABLED == {**ALL_ON, ("binary", 4): False}  # only that flavour
    assert torch.allclose(out, _reference(x, w, None, [1, 1], True, x), atol=1e-5)


@pytest.mark.parametrize("dims", [2, 3])
def test_flop_counter_counts_the_fused_convolutions(dims, fusion_on):
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(1, 4, *[6] * dims).contiguous(memory_format=channels_last(dims + 2))
    w = torch.randn(8, 4, *[3] * dims).contiguous(memory_format=channels_last(dims + 2))
    w2 = torch.randn(8, 8, *[3] * dims).contiguous(memory_format=channels_last(dims + 2))
    one = [1] * dims
    with torch.inference_mode():
        with FlopCounterMode(display=False) as plain:
            y = _reference(x, w, None, one, True, None)
            _reference(y, w2, None, one, True, y)
        with FlopCounterMode(display=False, custom_mapping=fusedconv.flop_formulas()) as fused:
            y = conv_act(x, w, torch.zeros(8), one, one, one, 1, True)
            conv_act(y, w2, torch.zeros(8), one, one, one, 1, True, residual=y)
    assert fused.get_total_flops() == plain.get_total_flops() == 2 * (4 + 8) * 8 * 3 ** dims * 6 ** dims


def test_cpu_autocast_takes_the_plain_path(fusion_on):
    """The fused operator would ignore autocast (float32 out of a bf16 region)."""
    x = torch.randn(1, 4, 8, 8).contiguous(memory_format=torch.channels_last)
    w = torch.randn(4, 4, 3, 3).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert fusedconv.cpu_autocast()
        out = conv_act(x, w, torch.zeros(4), [1, 1], [1, 1], [1, 1], 1, True)
    assert out.dtype == torch.bfloat16
    assert not fusedconv.cpu_autocast()


@pytest.mark.parametrize("kernel,stride,padding,size", [
    ((7, 7), 2, (3, 3), (37, 30)),   # the ResNet stem, odd and even sides
    ((7, 7), 2, (0, 2), (20, 23)),   # rows no output reads are cropped (negative pad)
    ((5, 3), 3, (2, 1), (17, 19)),   # stride 3, a kernel shorter than 2 strides on one axis
    ((4, 4), 2, (1, 1), (16, 16)),   # taps already a multiple of the stride
])
def test_space_to_depth_is_the_strided_convolution(kernel, stride, padding, size):
    g = torch.Generator().manual_seed(sum(size))
    x = torch.randn(3, 1, *size, generator=g)
    w = torch.randn(5, 1, *kernel, generator=g)
    u, w2 = fusedconv.space_to_depth(x, w, stride, padding)
    assert u.shape[1] == stride ** 2 and u.is_contiguous(memory_format=torch.channels_last)
    want = F.conv2d(x, w, None, stride, padding)
    got = F.conv2d(u, w2)
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-5)


def test_conv_act_rewrites_single_channel_strided_convolutions(monkeypatch, fusion_on):
    """A grey-image stem runs on its space-to-depth form (same values, channels-last output);
    several channels, stride 1, gradients and FLOP counting under model_arithmetic keep the
    plain convolution."""
    seen = []
    real = fusedconv.space_to_depth
    monkeypatch.setattr(fusedconv, "space_to_depth", lambda *a: seen.append(1) or real(*a))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 40, 36, generator=g).contiguous(memory_format=torch.channels_last)
    w = torch.randn(8, 1, 7, 7, generator=g).contiguous(memory_format=torch.channels_last)
    b = torch.randn(8, generator=g)
    ref = F.relu(F.conv2d(x, w, b, 2, 3))
    with torch.inference_mode():
        out = conv_act(x, w, b, [2, 2], [3, 3], [1, 1], 1, True)
        assert len(seen) == 1 and out.shape == ref.shape and torch.allclose(out, ref, atol=1e-5)
        assert out.is_contiguous(memory_format=torch.channels_last)
        conv_act(x, w[..., :3, :3], b, [1, 1], [1, 1], [1, 1], 1, True)  # stride 1
        conv_act(x.expand(2, 2, 40, 36), torch.cat([w, w], 1), b, [2, 2], [3, 3], [1, 1], 1, True)
        with fusedconv.model_arithmetic():
            conv_act(x, w, b, [2, 2], [3, 3], [1, 1], 1, True)
        assert fusedconv.SPACE_TO_DEPTH
    xg = x.clone().requires_grad_(True)
    conv_act(xg, w, b, [2, 2], [3, 3], [1, 1], 1, True).sum().backward()
    assert len(seen) == 1 and xg.grad is not None
