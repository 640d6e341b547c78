"""Every CUDA kernel against its NumPy reference, run in Numba's CUDA simulator (no GPU needed).

Shapes are tiny (the simulator runs one Python thread per CUDA thread) but cover the awkward
cases: partial tiles, stride 2, dilation 2, padding, odd and non-square sizes, batch > 1,
channel counts that are not multiples of the tile, and split-K reductions.
"""
import sys

import numpy as np
import pytest

from minicolor import backend

try:
    backend.enable_simulator()
except backend.DeviceError as exc:  # numba.cuda already imported for a real GPU
    pytest.skip(str(exc), allow_module_level=True)

import minicolor.kernels as kernels  # noqa: E402
from minicolor import functional as F  # noqa: E402
from minicolor import tensor  # noqa: E402
from minicolor.kernels import batchnorm as k_batchnorm  # noqa: E402
from minicolor.kernels import conv2d as k_conv2d  # noqa: E402
from minicolor.kernels import conv2d_tiled as k_conv2d_tiled  # noqa: E402
from minicolor.kernels import mse as k_mse  # noqa: E402
from minicolor.kernels import upsample as k_upsample  # noqa: E402
from minicolor.models import ColorizationNet  # noqa: E402
from minicolor.reference import batchnorm as r_batchnorm  # noqa: E402
from minicolor.reference import conv2d as r_conv2d  # noqa: E402
from minicolor.reference import mse as r_mse  # noqa: E402
from minicolor.reference import upsample as r_upsample  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def simulator_settings():
    previous = sys.getswitchinterval()
    sys.setswitchinterval(5e-5)  # barrier-heavy kernels run several times faster
    kernels.POISON = True  # outputs start as NaN: an unwritten element fails the comparison
    yield
    kernels.POISON = False
    sys.setswitchinterval(previous)


CONV_CASES = [  # (N, C, H, W, F, k, stride, padding, dilation); simulator tiles: 8x8, thin 4x16, small 4x4
    (2, 3, 7, 6, 4, 3, 2, 1, 1),   # stride 2: 4 grad-input phases of unequal sizes, batch 2
    (1, 2, 9, 8, 3, 3, 1, 2, 2),   # dilation 2
    (1, 3, 5, 7, 2, 1, 1, 0, 1),   # 1x1 with 2 filters: the thin tile (like the regression head)
    (1, 2, 3, 3, 11, 3, 1, 1, 1),  # 11 filters: two row tiles, the second partial
    (1, 5, 4, 4, 6, 3, 1, 1, 1),   # reduction 45: not a multiple of the slice BK = 4 (padded taps)
    (2, 1, 6, 5, 7, 3, 1, 1, 1),   # one input channel (first layer): K = 9, grad-input on the thin tile
    (1, 2, 7, 6, 5, 3, 2, 2, 2),   # stride 2 with dilation 2: three of the four phases have no taps
    (1, 6, 5, 6, 9, 1, 2, 0, 1),   # 1x1 stride 2: only phase (0, 0) has a tap, the rest of gx is 0
    (1, 3, 8, 8, 5, 3, 3, 1, 1),   # stride 3: 9 phases, one tap row and column each
    (2, 1, 5, 4, 6, 1, 1, 0, 1),   # grad-weight with 2 columns (1 tap + bias): the small tile
    (1, 3, 2, 2, 5, 1, 1, 0, 1),   # 4 pixels: every pass on the small tile
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("version", k_conv2d.VERSIONS)
def test_conv2d_kernels_match_reference(rng, case, dtype, version, monkeypatch):
    monkeypatch.setattr(k_conv2d, "VERSION", version)  # the one switch: every pass runs this version
    n, c, h, w, f, k, s, p, d = case
    geometry = ((s, s), (p, p), (d, d))
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = rng.standard_normal((f, c, k, k)).astype(dtype)
    b = rng.standard_normal(f).astype(dtype)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    launches = kernels.launch_count
    y, saved = k_conv2d.forward(x, wt, b, *geometry)
    y_ref, cols = r_conv2d.forward(x, wt, b, *geometry)
    np.testing.assert_allclose(y, y_ref, **tol)
    assert y.dtype == dtype
    gy = rng.standard_normal(y.shape).astype(dtype)
    np.testing.assert_allclose(k_conv2d.backward_data(gy, wt, x.shape, *geometry),
                               r_conv2d.backward_data(gy, wt, x.shape, *geometry), **tol)
    gw_ref, gb_ref = r_conv2d.backward_weight(gy, cols, wt.shape)
    gw, gb = k_conv2d.backward_weight(gy, saved, wt.shape, *geometry)
    np.testing.assert_allclose(gw, gw_ref, **tol)
    np.testing.assert_allclose(gb, gb_ref, **tol)
    assert gw.dtype == gb.dtype == dtype
    assert kernels.launch_count == launches + 3  # one kernel per pass, in both versions
    if version == "tiled":  # its reduction over pixels can be split: every split gives the same sums
        for splits in (1, 3):
            gw, gb = k_conv2d_tiled.backward_weight(gy, saved, wt.shape, *geometry, splits=splits)
            np.testing.assert_allclose(gw, gw_ref, **tol)
            np.testing.assert_allclose(gb, gb_ref, **tol)


def test_conv2d_version_switch(monkeypatch):
    """VERSION picks the module every pass runs; a wrong name is a one-line error naming both."""
    assert k_conv2d.VERSIONS == ("naive", "tiled")
    for version in k_conv2d.VERSIONS:
        monkeypatch.setattr(k_conv2d, "VERSION", version)
        assert k_conv2d.version().__name__ == f"minicolor.kernels.conv2d_{version}"
        x, w = np.zeros((1, 1, 3, 3)), np.zeros((2, 1, 3, 3))
        with kernels.recording() as launches:
            k_conv2d.forward(x, w, None, (1, 1), (1, 1), (1, 1))
        assert launches[0][0].py_func.__module__ == f"minicolor.kernels.conv2d_{version}"
    monkeypatch.setattr(k_conv2d, "VERSION", "fast")
    with pytest.raises(ValueError, match="must be one of naive, tiled, got 'fast'"):
        k_conv2d.forward(np.zeros((1, 1, 3, 3)), np.zeros((2, 1, 3, 3)), None, (1, 1), (1, 1), (1, 1))


def test_bench_times_both_conv_versions(monkeypatch):
    """``minicolor bench`` on sim times each conv pass in both versions; minicolor_s is the
    version a training step runs, and the printed row says what tiling buys."""
    from minicolor.tools import bench
    from minicolor.nn import Conv2d

    monkeypatch.setattr(k_conv2d, "VERSION", "naive")
    conv = Conv2d(2, 3, 3, 1, 1, rng=np.random.default_rng(0))
    rows = list(bench.conv_layer_rows("conv", conv, (1, 2, 4, 4), "sim", warmup=0, repeat=1))
    assert [r["pass"] for r in rows] == ["forward", "grad-input", "grad-weight"]
    for row in rows:
        assert row["naive_s"] > 0 and row["tiled_s"] > 0 and row["minicolor_s"] == row["naive_s"]
        line = bench.format_layer(row)
        assert "naive" in line and "tiled" in line and f"tiling x{row['naive_s'] / row['tiled_s']:.1f}" in line


@pytest.mark.parametrize("case", [(2, 8, 8, 3, 2, 1, 1), (1, 7, 9, 3, 2, 2, 2), (1, 6, 6, 1, 2, 0, 1),
                                  (1, 9, 6, 5, 3, 2, 1), (1, 5, 5, 3, 1, 1, 1)])
def test_conv2d_grad_input_phases_do_no_wasted_taps(case):
    """Every (tap, filter) row is in exactly one stride phase, and the multiply-adds done are
    those of taps that land on the output grid, none between two outputs: about 1/(sh*sw) of
    what gathering over all taps would do."""
    n, h, w, k, s, p, d = case
    c, f = 3, 4
    g = k_conv2d.geometry((n, c, h, w), (f, c, k, k), (s, s), (p, p), (d, d))
    taps, a_rows, phases = k_conv2d_tiled._backward_data_plan(g, bk=4)
    real = a_rows >= 0
    assert sorted(a_rows[real]) == list(range(k * k * f))  # each (tap, filter) row once
    assert (taps[~real, 1] == k_conv2d_tiled.OUTSIDE).all() and (phases[:, 1] % 4 == 0).all()
    work = sum(int(real[first:first + rows].sum()) * n * count_h * count_w
               for first, rows, count_h, count_w, _, _ in phases)
    reached = np.zeros((h, w), int)  # for each input pixel, the taps that land on the output grid
    for ih in range(h):
        for iw in range(w):
            for i in range(k):
                for j in range(k):
                    th, tw = ih + p - i * d, iw + p - j * d
                    if th % s == 0 and tw % s == 0:
                        reached[ih, iw] += 1
    assert work == n * f * reached.sum()
    starts = {(int(start_h), int(start_w)) for *_, start_h, start_w in phases}
    assert len(starts) == s * s  # the phases tile the input: every pixel of gx is written


def test_conv2d_backward_weight_fills_the_gpu_with_split_k():
    """The default split of grad-weight's reduction gives at least 264 blocks (2 per H100 SM)
    when there are pixels enough (>= 512 per split). Recorded, not run."""
    x = np.zeros((2, 2, 256, 256), np.float32)
    gy = np.zeros((2, 3, 256, 256), np.float32)
    with kernels.recording() as launches:
        k_conv2d_tiled.backward_weight(gy, x, (3, 2, 3, 3), (1, 1), (1, 1), (1, 1))
    (kernel, grid, block, args), = launches
    assert grid[0] * grid[1] * grid[2] >= 264
    assert args[2].shape == (grid[2] * 3 * (2 * 9 + 1),)  # one partial [gw | gb] per split


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(2, 3, 5, 3), (1, 2, 1, 7)])
def test_batchnorm_kernels_match_reference(rng, shape, training):
    c = shape[1]
    x = rng.standard_normal(shape) * 3 + 1
    weight, bias = rng.standard_normal(c), rng.standard_normal(c)
    running = [rng.standard_normal(c), rng.uniform(0.5, 2, c)]
    ours_running = [r.copy() for r in running]
    y, xhat, inv_std = k_batchnorm.forward(x, weight, bias, *ours_running, training, 0.1, 1e-5)
    y_ref, xhat_ref, inv_std_ref = r_batchnorm.forward(x, weight, bias, *running, training, 0.1, 1e-5)
    np.testing.assert_allclose(y, y_ref, atol=1e-12)
    np.testing.assert_allclose(ours_running[0], running[0], atol=1e-12)
    np.testing.assert_allclose(ours_running[1], running[1], atol=1e-12)
    gy = rng.standard_normal(shape)
    for ours, ref in zip(k_batchnorm.backward(gy, xhat, inv_std, weight, training),
                         r_batchnorm.backward(gy, xhat_ref, inv_std_ref, weight, training)):
        np.testing.assert_allclose(ours, ref, atol=1e-12)


# Shapes of several chunks per channel (CHUNK is 512 values in the simulator), with a short last
# chunk and chunk boundaries in the middle of a plane: m = 720 (512 + 208), 1,197 (512 + 512 + 173).
CHUNKED = [(2, 2, 18, 20), (3, 1, 19, 21)]
TOLERANCE = {np.float32: dict(rtol=2e-5, atol=2e-5), np.float64: dict(rtol=1e-11, atol=1e-11)}


def batchnorm_case(rng, shape, dtype):
    c = shape[1]
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    parameters = [rng.standard_normal(c).astype(dtype) for _ in range(2)]
    running = [rng.standard_normal(c).astype(dtype), rng.uniform(0.5, 2, c).astype(dtype)]
    return x, parameters, running, rng.standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("one_kernel", [False, True])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", CHUNKED)
def test_batchnorm_in_chunks_matches_reference(rng, shape, dtype, relu, one_kernel, monkeypatch):
    """Channels reduced in several chunks: by one block per chunk and a merge (the default for
    these sizes), or chunk after chunk in one block per channel."""
    monkeypatch.setattr(k_batchnorm, "ONE_KERNEL_MAX", 10**9 if one_kernel else 0)
    assert k_batchnorm._chunks(shape[0] * shape[2] * shape[3]) >= 2
    x, (weight, bias), running, gy = batchnorm_case(rng, shape, dtype)
    ours_running = [r.copy() for r in running]
    y, xhat, inv_std = k_batchnorm.forward(x, weight, bias, *ours_running, True, 0.1, 1e-5, relu=relu)
    ref = r_batchnorm.forward(x, weight, bias, *running, True, 0.1, 1e-5, relu=relu)
    for ours, theirs in zip([y, xhat, inv_std, *ours_running], [*ref, *running]):
        assert ours.dtype == dtype
        np.testing.assert_allclose(ours, theirs, **TOLERANCE[dtype])
    grads = k_batchnorm.backward(gy, xhat, inv_std, weight, True, relu_input=x if relu else None)
    ref_grads = r_batchnorm.backward(gy, ref[1], ref[2], weight, True, relu_input=x if relu else None)
    for ours, theirs in zip(grads, ref_grads):
        scale = max(1.0, float(np.abs(theirs).max()))
        np.testing.assert_allclose(ours / scale, theirs / scale, **TOLERANCE[dtype])


@pytest.mark.parametrize("shape", CHUNKED)
def test_batchnorm_split_and_one_kernel_agree_bit_for_bit(rng, shape, monkeypatch):
    """The chunks are merged in the same order with the same formulas either way, so the
    results do not depend on the way (nor, on a GPU, on how many blocks run at once)."""
    x, (weight, bias), _, gy = batchnorm_case(rng, shape, np.float32)
    results = []
    for limit in (0, 10**9, 0):  # split, one kernel, split again
        monkeypatch.setattr(k_batchnorm, "ONE_KERNEL_MAX", limit)
        running = [np.zeros(shape[1], np.float32), np.ones(shape[1], np.float32)]
        y, xhat, inv_std = k_batchnorm.forward(x, weight, bias, *running, True, 0.1, 1e-5, relu=True)
        grads = k_batchnorm.backward(gy, xhat, inv_std, weight, True, relu_input=x)
        results.append([y, xhat, inv_std, *running, *grads])
    for a, b, c in zip(*results):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


def exact_channels(rng, shape, centres):
    """float32 values whose sums are exact in float32 and float64 alike: multiples of 0.5,
    in pairs around each channel's centre (so its mean is the centre, deviations are small)."""
    n, c, h, w = shape
    half = rng.integers(-6, 7, (c, n * h * w // 2)) / 2
    values = np.concatenate([half, -half], axis=1) + np.asarray(centres)[:, None]
    values = rng.permuted(values, axis=1)
    return np.ascontiguousarray(values.reshape(c, n, h, w).transpose(1, 0, 2, 3), np.float32)


@pytest.mark.parametrize("one_kernel", [False, True])
@pytest.mark.parametrize("shape", [(2, 3, 4, 8), (2, 3, 16, 32)])
def test_batchnorm_rounds_as_the_reference_does(rng, shape, one_kernel, monkeypatch):
    """Where the sums are exact (so the float64 sums of the kernels and NumPy's float32 ones
    agree), every result is the reference's to the bit: inv_std, the running estimates, xhat, y
    in float32 arithmetic with eps and momentum rounded to float32, as the reference rounds
    them; and gx is the reference's formula in float32 on the kernel's own sums."""
    monkeypatch.setattr(k_batchnorm, "ONE_KERNEL_MAX", 10**9 if one_kernel else 0)
    x = exact_channels(rng, shape, [3.5, 7.0, -20.0])  # the last channel: all zero after the ReLU
    c, m = shape[1], shape[0] * shape[2] * shape[3]
    weight, bias = rng.standard_normal(c).astype(np.float32), rng.standard_normal(c).astype(np.float32)
    running = [rng.standard_normal(c).astype(np.float32), rng.uniform(0.5, 2, c).astype(np.float32)]
    ours_running = [r.copy() for r in running]
    y, xhat, inv_std = k_batchnorm.forward(x, weight, bias, *ours_running, True, 0.1, 1e-5, relu=True)
    ref = r_batchnorm.forward(x, weight, bias, *running, True, 0.1, 1e-5, relu=True)
    for name, ours, theirs in zip(["y", "xhat", "inv_std", "running_mean", "running_var"],
                                  [y, xhat, inv_std, *ours_running], [*ref, *running]):
        np.testing.assert_array_equal(ours, theirs, err_msg=name)
    gy = rng.standard_normal(shape).astype(np.float32)
    gx, gweight, gbias = k_batchnorm.backward(gy, xhat, inv_std, weight, True, relu_input=x)
    per_channel = lambda v: v.reshape(1, -1, 1, 1)  # noqa: E731
    expected = (gy - per_channel(gbias / m) - xhat * per_channel(gweight / m)) * per_channel(inv_std * weight)
    np.testing.assert_array_equal(gx, expected * (x > 0))
    _, ref_gweight, ref_gbias = r_batchnorm.backward(gy, ref[1], ref[2], weight, True, relu_input=x)
    np.testing.assert_allclose(gweight, ref_gweight, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gbias, ref_gbias, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 2, 3, 5), CHUNKED[0]])
def test_fused_relu_turns_minus_infinity_into_zero(rng, shape):
    """relu(-inf) = 0, as np.maximum gives; ``value -= value`` made it NaN (-inf - -inf)."""
    x, (weight, bias), running, gy = batchnorm_case(rng, shape, np.float32)
    x[0, 0, 0, :2] = -np.inf
    x[-1, -1, -1, -1] = -np.inf
    ours_running = [r.copy() for r in running]
    y, xhat, inv_std = k_batchnorm.forward(x, weight, bias, *ours_running, True, 0.1, 1e-5, relu=True)
    ref = r_batchnorm.forward(x, weight, bias, *running, True, 0.1, 1e-5, relu=True)
    assert np.isfinite(y).all() and np.isfinite(ours_running[1]).all()
    for ours, theirs in zip([y, xhat, inv_std, *ours_running], [*ref, *running]):
        np.testing.assert_allclose(ours, theirs, **TOLERANCE[np.float32])
    gx, _, _ = k_batchnorm.backward(gy, xhat, inv_std, weight, True, relu_input=x)
    assert (gx[np.isneginf(x)] == 0).all() and np.isfinite(gx).all()


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
@pytest.mark.parametrize("shape, scale", [((2, 2, 3, 4), 2), ((1, 1, 2, 3), 4), ((1, 1, 1, 1), 3)])
def test_upsample_kernels_match_reference(rng, shape, scale, mode):
    x = rng.standard_normal(shape)
    y = k_upsample.forward(x, scale, mode)
    np.testing.assert_allclose(y, r_upsample.forward(x, scale, mode), atol=1e-12)
    gy = rng.standard_normal(y.shape)
    np.testing.assert_allclose(k_upsample.backward(gy, shape, scale, mode),
                               r_upsample.backward(gy, shape, scale, mode), atol=1e-12)


@pytest.mark.parametrize("shape", [(3, 5), (2, 2, 17, 19)])
def test_mse_kernels_match_reference(rng, shape):
    pred, target = rng.standard_normal(shape), rng.standard_normal(shape)
    loss, diff = k_mse.forward(pred, target)
    loss_ref, diff_ref = r_mse.forward(pred, target)
    np.testing.assert_allclose(loss, loss_ref, rtol=1e-12)
    g = np.asarray(0.7)
    np.testing.assert_allclose(k_mse.backward(g, diff), r_mse.backward(g, diff_ref), atol=1e-15)


def test_sim_device_runs_layers_through_kernels(rng):
    x = tensor(rng.standard_normal((1, 2, 4, 4)), requires_grad=True, device="sim")
    w = tensor(rng.standard_normal((3, 2, 3, 3)), requires_grad=True, device="sim")
    y = F.conv2d(x, w, padding=1)
    assert y.device == "sim" and type(y.creator.impl) is type(k_conv2d) and y.creator.impl is k_conv2d


@pytest.mark.parametrize("version", k_conv2d.VERSIONS)
def test_colorization_network_agrees_on_sim_and_cpu(rng, version, monkeypatch):
    """Forward and backward of a (width 1) ColorizationNet: same loss and parameter gradients,
    with either conv version (the one switch: every conv of the network runs it).

    In float64: at 8x8 the deepest batchnorms see 2 values per channel, which amplifies
    float32 rounding differences between two correct summation orders past any fixed bound.
    """
    monkeypatch.setattr(k_conv2d, "VERSION", version)
    l = rng.uniform(-0.5, 0.5, (2, 1, 8, 8))
    ab = rng.uniform(-0.5, 0.5, (2, 2, 8, 8))
    results = {}
    for device in ("cpu", "sim"):
        net = ColorizationNet(width=1, seed=3, dtype=np.float64).to(device)
        loss = F.mse_loss(net(tensor(l, device=device)), tensor(ab, device=device))
        loss.backward()
        results[device] = (loss.item(), {name: p.grad for name, p in net.named_parameters()})
    assert results["sim"][0] == pytest.approx(results["cpu"][0], rel=1e-6)
    for name, grad in results["cpu"][1].items():
        scale = np.abs(grad).max() + 1e-6
        np.testing.assert_allclose(results["sim"][1][name] / scale, grad / scale, atol=1e-6,
                                   err_msg=name)


def test_classification_network_agrees_on_sim_and_cpu(rng):
    """The classification head (xp reference ops on top of the kernels) gives the same loss."""
    l = rng.uniform(-0.5, 0.5, (2, 1, 8, 8))
    ab = rng.uniform(-0.3, 0.3, (2, 2, 8, 8))
    losses = {}
    for device in ("cpu", "sim"):
        net = ColorizationNet(width=1, seed=3, head="classification", dtype=np.float64).to(device)
        loss, mse = net.loss(tensor(l, device=device), tensor(ab, device=device))
        loss.backward()
        losses[device] = (loss.item(), mse.item(), net.head.weight.grad.copy())
    assert losses["sim"][0] == pytest.approx(losses["cpu"][0], rel=1e-9)
    assert losses["sim"][1] == pytest.approx(losses["cpu"][1], rel=1e-9)
    np.testing.assert_allclose(losses["sim"][2], losses["cpu"][2], rtol=1e-6, atol=1e-9)
