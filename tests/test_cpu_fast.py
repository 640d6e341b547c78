"""The fast CPU path (minicolor/cpu/) against the NumPy reference, as the CUDA kernels are.

Every pass of every op, in float64 (to rounding: 1e-12 relative) and in float32 (1e-4 relative
to the float64 reference: the GPU tests' tolerance, which Winograd's F(4x4, 3x3) must meet
too), on odd shapes: stride, padding, dilation, 1x1, batch 1 and odd batches, non-square
images, channel counts that do and do not take the Winograd path. Plus gradient checks through
functional, results that do not depend on the thread count, the switch back to the reference,
and a whole training step against the reference path.
"""
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from minicolor import backend, functional as F
from minicolor import gradcheck, optim, tensor
from minicolor.cpu import adam as c_adam
from minicolor.cpu import products
from minicolor.cpu import batchnorm as c_batchnorm
from minicolor.cpu import conv2d as c_conv2d
from minicolor.cpu import relu as c_relu
from minicolor.cpu import threads
from minicolor.cpu import upsample as c_upsample
from minicolor.cpu import winograd
from minicolor.models import ColorizationNet
from minicolor.reference import adam as r_adam
from minicolor.reference import batchnorm as r_batchnorm
from minicolor.reference import conv2d as r_conv2d
from minicolor.reference import mse as r_mse
from minicolor.reference import relu as r_relu
from minicolor.reference import upsample as r_upsample


def relative_error(ours, reference):
    """Largest difference over largest magnitude (the GPU tests' measure)."""
    assert not np.isnan(ours).any()
    return float(np.abs(np.asarray(ours, np.float64) - reference).max() / np.abs(reference).max())


TOLERANCE = {np.float64: 1e-12, np.float32: 1e-4}


def pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


CONV_CASES = [  # (N, C, H, W, F, k, stride, padding, dilation)
    (1, 1, 5, 5, 2, 3, 1, 1, 1),       # one input channel (the first layer): im2col
    (2, 3, 7, 6, 4, 3, 2, 1, 1),       # stride 2, odd and non-square, batch 2
    (2, 2, 9, 8, 3, 3, 1, 2, 2),       # dilation 2, few channels: im2col
    (1, 3, 6, 7, 2, 1, 1, 0, 1),       # 1x1
    (3, 5, 6, 7, 2, 1, 1, 0, 1),       # 1x1, odd batch
    (1, 6, 5, 6, 9, 1, 2, 0, 1),       # 1x1 stride 2
    (2, 2, 8, 5, 3, (3, 2), (2, 1), (0, 1), (1, 2)),  # pairs everywhere
    (1, 2, 5, 5, 2, 5, 1, 0, 1),       # kernel as large as the input
    (1, 3, 8, 8, 5, 3, 3, 1, 1),       # stride 3
    (1, 2, 7, 6, 5, 3, 2, 2, 2),       # stride 2 with dilation 2
    (3, 16, 9, 7, 16, 3, 1, 1, 1),     # Winograd: odd batch, partial tiles in both directions
    (1, 16, 4, 4, 17, 3, 1, 1, 1),     # Winograd: one tile
    (2, 17, 10, 9, 20, 3, 1, 2, 2),    # Winograd, dilation 2: four phases of unequal sizes
    (1, 16, 5, 6, 16, 3, 1, 0, 1),     # Winograd without padding (grad-input padded by 2)
    (1, 16, 6, 11, 16, 3, 1, 3, 2),    # Winograd, padding 3 with dilation 2
    (2, 16, 9, 9, 16, 3, 1, 4, 2),     # padding 4 = 2 * dilation: still Winograd
    (1, 16, 7, 7, 16, 3, 1, 3, 1),     # Winograd, padding 3 > 2 * dilation
    (2, 16, 7, 7, 16, 3, 1, 0, 2),     # Winograd, dilation 2 without padding: grad-input reaches the edges
    (2, 16, 8, 8, 16, 3, 2, 1, 1),     # enough channels, but stride 2: im2col
    (3, 8, 7, 9, 5, 3, 2, 2, 2),       # stride 2 with dilation 2, odd batch
    (2, 64, 5, 6, 3, 1, 1, 0, 1),      # a 1x1 with 64 input channels
    (2, 3, 40, 9, 4, 3, 2, 1, 1),      # im2col with several bands per image (BAND_BYTES made small below)
    (1, 2, 37, 8, 3, 3, 1, 1, 1),      # stride 1, several bands: grad-input's bands overlap in gy
]


def conv_passes(impl, x, w, b, geometry):
    y, saved = impl.forward(x, w, b, *geometry)
    gy = np.random.default_rng(5).standard_normal(y.shape).astype(x.dtype)
    gx = impl.backward_data(gy, w, x.shape, *geometry)
    gw, gb = impl.backward_weight(gy, saved, w.shape, *geometry)
    return y, gx, gw, gb


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_matches_reference(rng, case, dtype, monkeypatch):
    monkeypatch.setattr(c_conv2d.im2col, "BAND_BYTES", 1024)  # many bands, even on small images
    n, c, h, w, f, k, s, p, d = case
    geometry = (pair(s), pair(p), pair(d))
    x = rng.standard_normal((n, c, h, w))
    wt = rng.standard_normal((f, c) + pair(k)) * (2 / (c * np.prod(pair(k)))) ** 0.5
    b = rng.standard_normal(f)
    reference = conv_passes(r_conv2d, x, wt, b, geometry)
    ours = conv_passes(c_conv2d, x.astype(dtype), wt.astype(dtype), b.astype(dtype), geometry)
    for name, a, r in zip(("y", "gx", "gw", "gb"), ours, reference):
        assert a.dtype == dtype and a.shape == r.shape, name
        assert relative_error(a, r) < TOLERANCE[dtype], name


def test_the_cases_take_every_route():
    routes = [c_conv2d.route((n, c, h, w), (f, c) + pair(k), pair(s), pair(p), pair(d))
              for n, c, h, w, f, k, s, p, d in CONV_CASES]
    assert all(routes.count(way) >= 6 for way in ("winograd", "im2col")), routes


def network_conv_shapes():
    seen = {}
    for name, conv, x_shape, _ in ColorizationNet(16).conv_layers(batch=2, size=48):
        key = (x_shape, conv.weight.shape, conv.stride, conv.padding, conv.dilation)
        seen.setdefault(key, name)
    return [pytest.param(*key, id=name) for key, name in seen.items()]


@pytest.mark.parametrize("x_shape, w_shape, stride, padding, dilation", network_conv_shapes())
def test_conv2d_on_network_shapes_in_float32(x_shape, w_shape, stride, padding, dilation):
    """Every layer shape of the width-16 network (at 48 px): float32 within 1e-4 of float64."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(x_shape)
    w = rng.standard_normal(w_shape) * (2 / np.prod(w_shape[1:])) ** 0.5
    b = rng.standard_normal(w_shape[0])
    geometry = (pair(stride), pair(padding), pair(dilation))
    reference = conv_passes(r_conv2d, x, w, b, geometry)
    ours = conv_passes(c_conv2d, *(a.astype(np.float32) for a in (x, w, b)), geometry)
    for name, a, r in zip(("y", "gx", "gw", "gb"), ours, reference):
        assert relative_error(a, r) < 1e-4, name


# --- Winograd's algebra -------------------------------------------------------------------------------
def test_winograd_matrices_compute_a_convolution(rng):
    """A^T [(G g) * (B^T d)] computes the 4 outputs of a 1-D 3-tap correlation of 6 inputs."""
    g, d = rng.standard_normal(3), rng.standard_normal(6)
    direct = np.array([d[i:i + 3] @ g for i in range(4)])
    np.testing.assert_allclose(winograd.AT @ ((winograd.G @ g) * (winograd.BT @ d)), direct, atol=1e-13)


def test_written_out_transforms_match_the_matrices(rng):
    """_bt, _at and _a are B^T, A^T and A, row by row."""
    d = rng.standard_normal(6)
    consts = (2.0, 4.0, 5.0)
    np.testing.assert_allclose(winograd._bt.py_func(*d, *consts), winograd.BT @ d, atol=1e-13)
    np.testing.assert_allclose(winograd._at.py_func(*d, 2.0, 4.0, 8.0), winograd.AT @ d, atol=1e-13)
    np.testing.assert_allclose(winograd._a.py_func(*d[:4], 2.0, 4.0, 8.0), winograd.AT.T @ d[:4],
                               atol=1e-13)
    np.testing.assert_allclose(winograd._b.py_func(*d, 2.0, 4.0, 5.0), winograd.BT.T @ d, atol=1e-13)


def test_filter_transforms_are_g_and_its_adjoint(rng):
    """_g and _gt are G and G^T row by row; weight_transform is G g G^T for every filter, and
    weight_transform_adjoint its adjoint: <U(w), dU> = <w, U^T(dU)>."""
    k = (1 / 4, 1 / 6, 1 / 12, 1 / 24)
    g, m = rng.standard_normal(3), rng.standard_normal(6)
    np.testing.assert_allclose(winograd._g.py_func(*g, k), winograd.G @ g, atol=1e-13)
    np.testing.assert_allclose(winograd._gt.py_func(*m, k), winograd.G.T @ m, atol=1e-13)
    w = rng.standard_normal((40, 16, 3, 3))  # 640 filters: a whole turn of the loop and a part
    U = winograd.weight_transform(w)
    direct = np.einsum("ia,fcab,jb->ijfc", winograd.G, w, winograd.G).reshape(36, 40, 16)
    np.testing.assert_allclose(U, direct, atol=1e-13)
    dU = rng.standard_normal((36, 40, 16))
    assert np.isclose(np.sum(U * dU), np.sum(w * winograd.weight_transform_adjoint(dU)), rtol=1e-12)


def test_grad_input_from_the_forward_pass_matches_one_without_it(rng):
    """backward_data reuses forward's transformed filters when given them, and gives the same."""
    x = rng.standard_normal((2, 16, 9, 7)).astype(np.float32)
    w = rng.standard_normal((20, 16, 3, 3)).astype(np.float32)
    geometry = ((1, 1), (2, 2), (2, 2))
    y, saved = c_conv2d.forward(x, w, None, *geometry)
    gy = rng.standard_normal(y.shape).astype(np.float32)
    with_saved = c_conv2d.backward_data(gy, w, x.shape, *geometry, saved=saved)
    assert np.array_equal(with_saved, c_conv2d.backward_data(gy, w, x.shape, *geometry))
    gw, _ = c_conv2d.backward_weight(gy, saved, w.shape, *geometry)  # reuses dM from grad-input
    assert np.array_equal(gw, c_conv2d.backward_weight(gy, c_conv2d.forward(x, w, None, *geometry)[1],
                                                       w.shape, *geometry)[0])


def test_winograd_float32_error_is_small(rng):
    """The figure docs/winograd.md quotes: a 128-channel layer, float32, against float64."""
    x = rng.standard_normal((1, 128, 28, 28))
    w = rng.standard_normal((128, 128, 3, 3)) * (2 / 1152) ** 0.5
    y, _ = winograd.conv(x.astype(np.float32), w.astype(np.float32), None, (1, 1), (1, 1))
    y_ref, _ = r_conv2d.forward(x, w, None, (1, 1), (1, 1), (1, 1))
    assert relative_error(y, y_ref) < 2e-5


# --- batchnorm and upsample ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(2, 3, 5, 3), (1, 2, 1, 7), (3, 4, 6, 5)])
def test_batchnorm_matches_reference(rng, shape, training, relu, dtype):
    c = shape[1]
    x = rng.standard_normal(shape) * 3 + 0.5
    weight, bias = rng.standard_normal(c), rng.standard_normal(c)
    running = [rng.standard_normal(c), rng.uniform(0.5, 2, c)]
    ours_running = [r.astype(dtype) for r in running]
    y, xhat, inv_std = c_batchnorm.forward(x.astype(dtype), weight.astype(dtype), bias.astype(dtype),
                                           *ours_running, training, 0.1, 1e-5, relu=relu)
    y_ref, xhat_ref, inv_std_ref = r_batchnorm.forward(x, weight, bias, *running, training, 0.1, 1e-5,
                                                       relu=relu)
    assert y.dtype == dtype and relative_error(y, y_ref) < TOLERANCE[dtype]
    for ours, ref in zip(ours_running, running):
        assert relative_error(ours, ref) < TOLERANCE[dtype]
    gy = rng.standard_normal(shape)
    grads = c_batchnorm.backward(gy.astype(dtype), xhat, inv_std, weight.astype(dtype), training,
                                 relu_input=x.astype(dtype) if relu else None)
    grads_ref = r_batchnorm.backward(gy, xhat_ref, inv_std_ref, weight, training,
                                     relu_input=x if relu else None)
    for ours, ref in zip(grads, grads_ref):
        assert ours.dtype == dtype and relative_error(ours, ref) < TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
@pytest.mark.parametrize("shape, scale", [((2, 2, 3, 4), 2), ((1, 1, 2, 3), 4), ((1, 1, 1, 1), 3),
                                          ((3, 2, 5, 1), 2)])
def test_upsample_matches_reference(rng, shape, scale, mode, dtype):
    x = rng.standard_normal(shape)
    y = c_upsample.forward(x.astype(dtype), scale, mode)
    assert y.dtype == dtype and relative_error(y, r_upsample.forward(x, scale, mode)) < TOLERANCE[dtype]
    gy = rng.standard_normal(y.shape)
    gx = c_upsample.backward(gy.astype(dtype), shape, scale, mode)
    assert gx.dtype == dtype
    assert relative_error(gx, r_upsample.backward(gy, shape, scale, mode)) < TOLERANCE[dtype]


# --- relu and Adam: the reference's bits -------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_relu_gives_the_references_bits(rng, dtype):
    x = rng.standard_normal(7 * 10001).astype(dtype)
    x[:5] = [np.nan, -0.0, 0.0, np.inf, -np.inf]
    gy = rng.standard_normal(x.shape).astype(dtype)
    gy[5:7] = [np.inf, -1.0]  # inf * 0 is NaN, -1 * 0 is -0.0: both must agree
    y, y_ref = c_relu.forward(x.reshape(7, -1)), r_relu.forward(x.reshape(7, -1))
    assert y.dtype == dtype and np.array_equal(y.view(np.uint8), y_ref.view(np.uint8))
    with np.errstate(invalid="ignore"):
        gx, gx_ref = c_relu.backward(gy.reshape(7, -1), y), r_relu.backward(gy.reshape(7, -1), y_ref)
    assert gx.dtype == dtype and np.array_equal(gx.view(np.uint8), gx_ref.view(np.uint8))


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_adam_gives_the_references_bits(rng, dtype, weight_decay):
    state = [rng.standard_normal(40007).astype(dtype) for _ in range(4)]  # param, grad, m, v
    state[3] = np.abs(state[3])
    ours, theirs = [a.copy() for a in state], [a.copy() for a in state]
    hyper = np.array([1e-3, 0.9, 0.999, 1e-8, weight_decay])
    coef, count = np.zeros(r_adam.COEF_SIZE, dtype), np.zeros(1)
    for _ in range(3):
        r_adam.advance(count, hyper, coef)
        r_adam.update(*theirs, coef)
        c_adam.update(*ours, coef)
    for a, b in zip(ours, theirs):
        assert np.array_equal(a, b)


# --- through functional: gradient checks, the switch ----------------------------------------------------
def test_device_cpu_runs_the_fast_path_and_the_switch_goes_back():
    assert backend.implementation("conv2d", "cpu") is c_conv2d
    assert backend.implementation("mse", "cpu") is r_mse  # no fast version: it would not pay
    assert backend.use_references_on_cpu(True) is False
    try:
        assert backend.implementation("conv2d", "cpu") is r_conv2d
    finally:
        assert backend.use_references_on_cpu(False) is True
    assert backend.implementation("conv2d", "cpu") is c_conv2d


def test_an_unknown_cpu_path_is_refused():
    env = dict(os.environ, MINICOLOR_CPU="fastest")
    out = subprocess.run([sys.executable, "-c", "import minicolor"], env=env, capture_output=True, text=True)
    assert out.returncode != 0
    assert "MINICOLOR_CPU must be one of ('fast', 'reference'), got 'fastest'" in out.stderr


def test_environment_variable_selects_the_reference():
    code = "from minicolor import backend; print(backend.implementation('batchnorm', 'cpu').__name__)"
    env = dict(os.environ, MINICOLOR_CPU="reference")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "minicolor.reference.batchnorm"


@pytest.mark.parametrize("case", [(2, 16, 5, 6, 16, 3, 1, 1, 1), (1, 16, 7, 5, 16, 3, 1, 2, 2),
                                  (2, 3, 7, 6, 4, 3, 2, 1, 1)])
def test_conv2d_gradcheck(rng, case):
    n, c, h, w, f, k, s, p, d = case
    x = tensor(rng.standard_normal((n, c, h, w)), requires_grad=True)
    wt = tensor(rng.standard_normal((f, c, k, k)) * 0.3, requires_grad=True)
    b = tensor(rng.standard_normal(f), requires_grad=True)
    assert gradcheck(lambda x, wt, b: F.conv2d(x, wt, b, s, p, d), [x, wt, b])


@pytest.mark.parametrize("training", [True, False])
def test_relu_batch_norm_gradcheck(rng, training):
    x = tensor(rng.standard_normal((2, 3, 4, 5)), requires_grad=True)
    weight = tensor(rng.standard_normal(3), requires_grad=True)
    bias = tensor(rng.standard_normal(3), requires_grad=True)
    mean, var = np.zeros(3), np.ones(3)
    assert gradcheck(lambda x, wt, b: F.relu_batch_norm(x, wt, b, mean.copy(), var.copy(), training),
                     [x, weight, bias])


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_upsample_gradcheck(rng, mode):
    x = tensor(rng.standard_normal((2, 2, 3, 4)), requires_grad=True)
    assert gradcheck(lambda x: F.upsample(x, 3, mode), [x])


# --- threads --------------------------------------------------------------------------------------------
def test_results_do_not_depend_on_the_thread_count(rng, monkeypatch):
    """1 and 2 threads give the same bits: no reduction is split between threads."""
    monkeypatch.setattr(c_conv2d.im2col, "BAND_BYTES", 2048)  # several bands per image
    x = rng.standard_normal((3, 16, 12, 10)).astype(np.float32)
    w = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
    w2 = rng.standard_normal((8, 16, 3, 3)).astype(np.float32)
    results = []
    previous = threads.current()
    try:
        for count in (1, 2, 1):
            threads.set_threads(count)
            out = conv_passes(c_conv2d, x, w, None, ((1, 1), (1, 1), (1, 1)))  # Winograd
            out += conv_passes(c_conv2d, x, w2, None, ((2, 2), (1, 1), (1, 1)))  # im2col, stride 2
            out += conv_passes(c_conv2d, x, np.ascontiguousarray(w2[:, :, :1, :1]), None, ((1, 1), (0, 0), (1, 1)))  # 1x1
            y, xhat, inv_std = c_batchnorm.forward(x, np.ones(16, np.float32), np.zeros(16, np.float32),
                                                   np.zeros(16, np.float32), np.ones(16, np.float32),
                                                   True, 0.1, 1e-5, relu=True)
            out += (y,) + c_batchnorm.backward(x, xhat, inv_std, np.ones(16, np.float32), True, relu_input=x)
            out += (c_relu.forward(x), c_relu.backward(x[::-1].copy(), x))
            param, grad, m, v = (a.ravel().copy() for a in (x, x[::-1], x * 0.5, x * x))
            c_adam.update(param, grad, m, v, np.array([0.9, 0.1, 0.999, 0.001, 1e-8, 0, 1e-3, 0.001], np.float32))
            out += (param, m, v)
            results.append(out)
    finally:
        threads.set_threads(previous or 1)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert np.array_equal(a, b)


_LAYER_PROBE = """
import ctypes, ctypes.util, sys
if sys.argv[1] == "preload":
    ctypes.CDLL(ctypes.util.find_library("gomp"))  # as PyTorch's import does: OpenMP loads first
import numba
from minicolor.cpu import threads
threads.set_threads(1)
print(numba.threading_layer())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_numba_threads_never_spin_on_an_openmp_loaded_before_them():
    """OpenMP with passive waiting by default; the workqueue layer when a library loaded libgomp
    first (OMP_WAIT_POLICY can no longer reach it, and its threads would spin)."""
    import ctypes.util

    if ctypes.util.find_library("gomp") is None:
        pytest.skip("no libgomp on this machine")
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_THREADING_LAYER", "OMP_WAIT_POLICY")}
    layers = {how: subprocess.run([sys.executable, "-c", _LAYER_PROBE, how], env=env, capture_output=True,
                                  text=True, check=True).stdout.split()[-1]
              for how in ("plain", "preload")}
    assert layers == {"plain": "omp", "preload": "workqueue"}


def test_thread_count_follows_the_free_cores(monkeypatch):
    assert threads.choose(2, 0.1) == 2
    assert threads.choose(2, 0.7) == 1   # another process holds most of a core
    assert threads.choose(2, 6.0) == 1   # never fewer than one
    assert threads.choose(8, 2.2) == 6
    before = (10.0, 100.0, 5.0)
    after = (11.0, 101.5, 5.5)  # the machine used 1.5 core-seconds in 1 s, this process 0.5
    assert threads.others_busy(before, after) == pytest.approx(1.0)
    monkeypatch.setenv("MINICOLOR_THREADS", "3")
    assert threads.requested() == 3
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")  # the user's limit for NumPy's BLAS holds
    assert threads.limit() == 1
    monkeypatch.delenv("OPENBLAS_NUM_THREADS")
    assert threads.limit() == threads.numba.config.NUMBA_NUM_THREADS
    monkeypatch.setenv("MINICOLOR_THREADS", "none")
    with pytest.raises(ValueError, match="MINICOLOR_THREADS must be 'auto' or a positive int, got 'none'"):
        threads.requested()


# --- a training step ------------------------------------------------------------------------------------
def training_steps(path, dtype, monkeypatch):
    """Losses of three Adam steps, and the gradients of the first (before any update)."""
    monkeypatch.setitem(backend.DEVICES, "cpu", backend.DEVICES["cpu"]._replace(folders=backend.CPU_PATHS[path]))
    rng = np.random.default_rng(3)
    net = ColorizationNet(width=2, seed=1, dtype=dtype)
    opt = optim.Adam(net.parameters(), lr=1e-3)
    l = tensor(rng.uniform(-0.5, 0.5, (3, 1, 24, 16)).astype(dtype))
    ab = tensor(rng.uniform(-0.5, 0.5, (3, 2, 24, 16)).astype(dtype))
    losses, grads = [], None
    for _ in range(3):
        opt.zero_grad()
        loss = F.mse_loss(net(l), ab)
        loss.backward()
        grads = grads or {name: p.grad.copy() for name, p in net.named_parameters()}
        opt.step()
        losses.append(loss.item())
    return losses, grads


def test_training_steps_match_the_reference_path_in_float64(monkeypatch):
    """A width-2 network (its 16-channel layers in groups 4 to 7 take the Winograd route, its
    stride-2 layers one product, the rest the reference): three Adam steps, fast path against
    reference path, to rounding."""
    fast, reference = (training_steps(path, np.float64, monkeypatch) for path in ("fast", "reference"))
    assert fast[0] == pytest.approx(reference[0], rel=1e-9)
    for name, grad in reference[1].items():
        np.testing.assert_allclose(fast[1][name], grad, atol=1e-9 * np.abs(grad).max(), err_msg=name)


def test_training_steps_in_float32_are_as_accurate_as_the_reference(monkeypatch):
    """In float32 both paths differ from the float64 result by rounding (a bias gradient sums
    over a thousand values that mostly cancel); the fast path's error stays within a few times
    the reference's own. Losses after the first step drift apart by 0.1-0.3%: Adam's first steps
    move a weight by about lr whatever the size of its gradient, so gradients near rounding
    size, of either sign, move the two networks apart by lr."""
    exact = training_steps("reference", np.float64, monkeypatch)
    fast, reference = (training_steps(path, np.float32, monkeypatch) for path in ("fast", "reference"))
    assert fast[0][0] == pytest.approx(exact[0][0], rel=1e-5)
    assert fast[0][1:] == pytest.approx(reference[0][1:], rel=1e-2)
    for name, grad in exact[1].items():
        scale = np.abs(grad).max()
        ours, theirs = (float(np.abs(run[1][name] - grad).max() / scale) for run in (fast, reference))
        assert ours < 3 * theirs + 1e-4, (name, ours, theirs)


def test_shared_jobs_all_run_once_and_an_error_stops_the_rest(monkeypatch):
    """products.share runs every job once over the threads; when a job fails, the error reaches
    the caller, and no job runs after share has returned."""
    monkeypatch.setattr(threads, "current", lambda: 2)
    done = []
    products.share([lambda i=i: done.append(i) for i in range(50)])
    assert sorted(done) == list(range(50))

    def fail():
        raise ValueError("the first job")
    started = []
    slow = [lambda i=i: (time.sleep(0.002), started.append(i)) for i in range(50)]
    with pytest.raises(ValueError, match="the first job"):  # the caller takes it, at once
        products.share([fail] + slow)
    count = len(started)
    time.sleep(0.05)
    assert len(started) == count
