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
    from minicolor import bench
    from minicolor.nn import Conv2d

    monkeypatch.setattr(k_conv2d, "VERSION", "naive")
    conv = Conv2d(2, 3, 3, 1, 1, rng=np.random.default_rng(0))
    rows = list(bench.conv_layer_rows("conv", conv, (1, 2, 4, 4), (1, 3, 4, 4), "sim", warmup=0, repeat=1))
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
