"""``relu(conv(x) + bias [+ residual])`` as one oneDNN call on the CPU, for inference.

Both scoring paths run ResNet basic blocks whose BatchNorm is folded into the convolutions
(risk: :class:`~BINDSLib.risk.network.InferenceEncoder`; diagnosis:
:meth:`~BINDSLib.model.network.DiagnosisNetwork.fold_batch_norm`). On the CPU, in float32 and
without autograd, :func:`conv_act` runs the convolution with its ReLU, and the residual sum
of a block, inside the oneDNN kernel (``torch.ops.mkldnn._convolution_pointwise``, the kernel
``torch.compile`` uses): one pass less over the block's output per fused step. Elsewhere (GPU,
bf16, gradients, or a build without the operator) it is ``F.conv2d``/``F.conv3d`` followed by
the same element-wise steps (also under CPU autocast, which the fused operator would ignore).
The result is the same up to float rounding either way.

A single-channel strided 2D convolution (the ResNet stems: 7 x 7, stride 2, on a grey image)
runs as the equivalent stride-1 convolution on the space-to-depth input
(:func:`space_to_depth`), although the taps are padded to a multiple of the stride (64
instead of 49 per output for 7 x 7 / 2). With one input channel, oneDNN runs far below its
usual rate and returns the output in the plain layout (channels-last and contiguous are the
same memory for one channel), so the max-pool after it runs at its slow NCHW rate and the
next convolution copies it; with ``stride^2`` phase channels the output is channels-last.
Stem + max-pool, 2 threads: 2048 x 1664 ~1.5x faster per view (risk scoring: max-pooling
1.0 -> 0.25 s per exam); 4 x 512 x 416 131 -> 32 ms; 4 x 224 x 224 27 -> 4 ms.

The residual sum is the operator's ``"add"`` binary post-op (``"sum"`` is refused as
"undefined" by torch 2.13's CPU kernel). A flavour that fails once (unary or binary, 2D or 3D)
is switched off for the process, with one log line, and the others keep running fused.
"""

from __future__ import annotations

import contextlib
import logging

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

_HAVE_OP = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
#: Whether each flavour of the fused operator is still in use in this process, by
#: ``(flavour, input ndim)``: ``("unary" | "binary", 4 | 5)``.
ENABLED = {(flavour, ndim): _HAVE_OP for flavour in ("unary", "binary") for ndim in (4, 5)}


def flop_formulas() -> dict:
    """``custom_mapping`` for ``torch.utils.flop_counter.FlopCounterMode``: the fused operator
    counts the FLOPs of its convolution (as ``aten.convolution``), so that a count does not
    depend on whether fusion ran. (Not registered globally: importing the FLOP counter costs
    ~80 MB of resident memory that ``binds diagnose`` does not need.)"""
    if not _HAVE_OP:
        return {}
    from torch.utils.flop_counter import conv_flop_count, shape_wrapper

    @shape_wrapper
    def flops(x_shape, *args, out_shape=None, **kwargs) -> int:
        # unary: (x, weight, bias, padding, ...); binary: (x, other, weight, bias, ...)
        binary = args[1] is not None and len(args[1]) == len(x_shape)
        w_shape = args[1] if binary else args[0]
        return conv_flop_count(x_shape, w_shape, out_shape, transposed=False)

    flops._get_raw = True  # already shape-wrapped
    return {torch.ops.mkldnn._convolution_pointwise: flops}


def channels_last(ndim: int) -> torch.memory_format:
    """The channels-last memory format of a ``ndim``-dimensional activation (4 or 5)."""
    return torch.channels_last_3d if ndim == 5 else torch.channels_last


def cpu_autocast() -> bool:
    """Whether CPU autocast is on (``torch.is_autocast_enabled("cpu")`` needs torch >= 2.4;
    BINDS supports torch >= 2.2)."""
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # pragma: no cover - torch < 2.4
        return torch.is_autocast_cpu_enabled()


def eligible(x: torch.Tensor) -> bool:
    """Whether the fused kernel may run on ``x``: float32 on the CPU, without autograd (the
    operator has no backward) and without autocast (it would ignore it)."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled()
            and not cpu_autocast())


#: Whether :func:`conv_act` rewrites single-channel strided 2D convolutions by
#: :func:`space_to_depth` (off inside :func:`model_arithmetic`).
SPACE_TO_DEPTH = True


@contextlib.contextmanager
def model_arithmetic():
    """Within: no rewrite that adds arithmetic (the zero taps of :func:`space_to_depth`), so that
    a FLOP count is the model's own, whatever the execution path."""
    global SPACE_TO_DEPTH
    before, SPACE_TO_DEPTH = SPACE_TO_DEPTH, False
    try:
        yield
    finally:
        SPACE_TO_DEPTH = before


def space_to_depth(x: torch.Tensor, weight: torch.Tensor, stride: int, padding) -> tuple[torch.Tensor, torch.Tensor]:
    """``(u, w)`` with ``conv2d(u, w)`` (stride 1, no padding) equal to
    ``conv2d(x, weight, stride=stride, padding=padding)`` up to float rounding.

    With ``xp`` the zero-padded input, output ``o`` is ``sum_k xp[s o + k] w[k]``; writing
    ``k = s j + r`` (taps padded with zeros to a multiple of ``s``), that is
    ``sum_j sum_r u_r[o + j] w[s j + r]`` with phase images ``u_r[m] = xp[s m + r]``:
    ``pixel_unshuffle`` makes the phases (channel ``c s^2 + r s + q`` for row phase ``r``,
    column phase ``q``) and the weight is rearranged to match. Both are channels-last.
    """
    s = int(stride)
    (kh, kw), (h, w_in) = weight.shape[-2:], x.shape[-2:]
    ph, pw = padding
    th, tw = -(-kh // s), -(-kw // s)  # taps per phase
    ho, wo = (h + 2 * ph - kh) // s + 1, (w_in + 2 * pw - kw) // s + 1
    # pad (or crop: rows no output reads) to exactly s * (out + taps - 1) rows and columns
    xp = F.pad(x, (pw, s * (wo - 1 + tw) - w_in - pw, ph, s * (ho - 1 + th) - h - ph))
    u = F.pixel_unshuffle(xp, s).contiguous(memory_format=torch.channels_last)
    co, ci = weight.shape[:2]
    wp = F.pad(weight, (0, s * tw - kw, 0, s * th - kh))
    wp = wp.view(co, ci, th, s, tw, s).permute(0, 1, 3, 5, 2, 4).reshape(co, ci * s * s, th, tw)
    return u, wp.contiguous(memory_format=torch.channels_last)


def _rewrites_to_depth(x: torch.Tensor, weight: torch.Tensor, stride, dilation, groups: int) -> bool:
    return (SPACE_TO_DEPTH and x.ndim == 4 and weight.shape[1] == 1 and groups == 1
            and stride[0] == stride[1] > 1 and all(d == 1 for d in dilation)
            and max(weight.shape[-2:]) > stride[0] and eligible(x))


def conv_act(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride, padding,
             dilation, groups: int, relu: bool, residual: torch.Tensor | None = None) -> torch.Tensor:
    """``act(conv(x, weight, bias) [+ residual])``, ``act`` = ReLU when ``relu``.

    ``x`` is ``(N, C, H, W)`` or ``(N, C, D, H, W)``; ``stride``, ``padding``, ``dilation`` are
    sequences of one value per spatial axis. Channels-last ``x`` and ``weight`` are what the
    fused kernel is fast with. A single-channel strided 2D convolution runs on its
    :func:`space_to_depth` form (inference on the CPU).
    """
    stride, padding, dilation = list(stride), list(padding), list(dilation)
    if _rewrites_to_depth(x, weight, stride, dilation, groups):
        x, weight = space_to_depth(x, weight, stride[0], padding)
        stride, padding = [1, 1], [0, 0]
    key = ("unary" if residual is None else "binary", x.ndim)
    if ENABLED.get(key) and eligible(x) and weight.dtype == torch.float32:
        act = "relu" if relu else "none"
        op = torch.ops.mkldnn._convolution_pointwise
        try:
            if residual is None:
                return op(x, weight, bias, padding, stride, dilation, groups, act, [], "")
            return op.binary(x, residual, weight, bias, padding, stride, dilation, groups,
                             "add", None, act if relu else None, [], None)
        except (RuntimeError, AttributeError) as e:
            log.info("oneDNN fused convolution (%s, %dD) unavailable (%s); using plain convolutions",
                     key[0], x.ndim - 2, str(e).splitlines()[0][:120])
            ENABLED[key] = False
    conv = F.conv3d if x.ndim == 5 else F.conv2d
    b = bias.to(x.dtype) if bias is not None else None
    y = conv(x, weight.to(x.dtype), b, stride, padding, dilation, groups)
    if residual is not None:
        y = y.add_(residual)
    return F.relu_(y) if relu else y
