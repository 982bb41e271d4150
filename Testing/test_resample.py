"""Physical-space resampling: the separable linear path against SimpleITK's own linear
interpolation (same values, same zero region outside the source), and when each is used."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from BINDSLib.model import preprocess
from BINDSLib.model.preprocess import resample
from BINDSLib.study import Geometry


def sitk_linear(voxels, geometry: Geometry, shape, target: Geometry) -> np.ndarray:
    """The reference: the SimpleITK branch of ``resample`` (ITK's linear interpolator)."""
    real = preprocess._separable_linear
    preprocess._separable_linear = lambda *args: None
    try:
        return resample(voxels, geometry, shape, target, antialias=False)
    finally:
        preprocess._separable_linear = real


def rotation(rng) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


def case(seed: int, plane: bool):
    """A random source and an axis-aligned target (each axis of either sense) that covers part
    of it, part of the space beside it, at finer and coarser spacings."""
    rng = np.random.default_rng(seed)
    r = rotation(rng)
    src_shape = (1, *rng.integers(20, 60, 2)) if plane else tuple(rng.integers(6, 30, 3))
    src = Geometry(tuple(rng.uniform(0.3, 2.0, 3)), tuple(rng.uniform(-50, 50, 3)), tuple(r.ravel()))
    flips = np.where(rng.random(3) < 0.5, -1.0, 1.0)
    if plane:
        flips[2] = 1.0  # a plane target stays in the source's plane (its one slice at index 0)
    spacing = np.asarray(src.spacing_mm) * rng.uniform(0.4, 2.5, 3)
    shape = (1, *rng.integers(15, 80, 2)) if plane else tuple(rng.integers(5, 40, 3))
    if plane:
        spacing[2] = src.spacing_mm[2]
    direction = r @ np.diag(flips)
    # the target's centre somewhere around the source's centre (some voxels fall outside)
    centre = src.index_to_lps((np.array(src_shape[::-1]) - 1) / 2.0)
    shift = r @ (rng.uniform(-0.4, 0.4, 3) * np.array(src_shape[::-1]) * np.asarray(src.spacing_mm))
    if plane:
        shift = shift - r[:, 2] * (r[:, 2] @ shift)
    half = direction @ ((np.array(shape[::-1]) - 1) / 2.0 * spacing)
    target = Geometry(tuple(spacing), tuple(centre + shift - half), tuple(direction.ravel()))
    voxels = rng.random(src_shape).astype(np.float32)
    return voxels, src, shape, target


@pytest.mark.parametrize("plane", [False, True])
@pytest.mark.parametrize("seed", range(8))
def test_separable_path_matches_simpleitk(seed, plane, monkeypatch):
    voxels, src, shape, target = case(seed, plane)
    want = sitk_linear(voxels, src, shape, target)
    for block in (preprocess.RESAMPLE_BLOCK, 7):  # one block, and many (rows of a few voxels)
        monkeypatch.setattr(preprocess, "RESAMPLE_BLOCK", block)
        got = preprocess._separable_linear(voxels, src, shape, target)
        assert got is not None and got.shape == tuple(shape) and got.dtype == np.float32
        # the same voxels outside the source (0) and inside it, the same values to rounding
        assert np.array_equal(got == 0, want == 0)
        assert np.abs(got - want).max() < 1e-5
    assert 0 < (want != 0).mean() < 1  # the case covers both: inside and outside


def test_target_wholly_outside_is_zero():
    voxels, src, shape, target = case(0, False)
    far = Geometry(target.spacing_mm, tuple(np.asarray(target.origin_mm) + 1e4), target.direction)
    got = preprocess._separable_linear(voxels, src, shape, far)
    assert got.shape == tuple(shape) and not got.any()


def test_single_voxel_axes_and_exact_grid():
    # the same grid: the identity, exactly
    voxels, src, _, _ = case(3, False)
    assert np.array_equal(preprocess._separable_linear(voxels, src, voxels.shape, src), voxels)
    # one row (1 x 1 x 5): outside [-0.5, n - 0.5) it is 0, inside the index is clamped
    row = np.arange(1, 6, dtype=np.float32)[None, None]
    g = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    t = Geometry((0.25, 1.0, 1.0), (-0.75, 0.0, 0.0))
    got = preprocess._separable_linear(row, g, (1, 1, 23), t)[0, 0]
    assert np.allclose(got, sitk_linear(row, g, (1, 1, 23), t)[0, 0])
    assert np.allclose(got[:6], [0, 1, 1, 1, 1.25, 1.5])
    assert np.allclose(got[-4:], [5, 5, 0, 0])  # ci 4, 4.25 | 4.5, 4.75


def test_oblique_grids_fall_back_to_simpleitk():
    voxels, src, shape, target = case(1, False)
    tilt = np.asarray(target.direction_matrix) @ np.array(
        [[np.cos(0.2), -np.sin(0.2), 0], [np.sin(0.2), np.cos(0.2), 0], [0, 0, 1]])
    oblique = Geometry(target.spacing_mm, target.origin_mm, tuple(tilt.ravel()))
    assert preprocess._separable_linear(voxels, src, shape, oblique) is None
    got = resample(voxels, src, shape, oblique, antialias=False)
    assert np.array_equal(got, sitk_linear(voxels, src, shape, oblique))


def test_which_path_resample_takes(monkeypatch):
    calls = []
    real = preprocess._separable_linear

    def spy(*args):
        calls.append(args[2])
        return real(*args)

    monkeypatch.setattr(preprocess, "_separable_linear", spy)
    voxels, src, shape, target = case(2, False)
    resample(voxels, src, shape, target, antialias=False)
    assert calls == [shape]
    resample(voxels, src, shape, target, linear=False)  # nearest neighbour: SimpleITK
    assert len(calls) == 1
    # a target four times coarser: anti-aliased by BinShrink first, then SimpleITK
    big = np.random.default_rng(0).random((1, 64, 64)).astype(np.float32)
    g = Geometry((0.5, 0.5, 1.0), (0.0, 0.0, 0.0))
    coarse = Geometry((2.0, 2.0, 1.0), (0.75, 0.75, 0.0))
    out = resample(big, g, (1, 16, 16), coarse)
    assert len(calls) == 1
    assert out[0, 5, 5] == pytest.approx(big[0, 20:24, 20:24].mean(), abs=1e-5)


def test_large_outputs_are_ordinary_arrays():
    # a large output has its own memory mapping: writable, picklable (DataLoader workers),
    # and still valid after the function returns
    src = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    voxels = np.ones((8, 80, 80), np.float32)
    out = preprocess._separable_linear(voxels, src, (16, 160, 160), src.with_spacing((0.5, 0.5, 0.5)))
    assert out.nbytes >= 2**20 and out.flags.writeable
    out[0, 0, 0] = 7.0
    back = pickle.loads(pickle.dumps(out))
    assert back[0, 0, 0] == 7.0 and np.array_equal(back, out)
    assert out[1:-1, 1:-1, 1:-1].min() == 1.0 and not out[-1].any()  # ci = n - 0.5: outside
