"""The CUDA kernels on a real NVIDIA GPU, on the real layer shapes of the network.

Skipped where no GPU is usable (and in a process where the simulator is enabled: run this
file in its own pytest process on a GPU machine). Each kernel's float32 result must be within
1e-4 relative error (largest difference over largest magnitude) of the NumPy reference run
on CuPy in float64; every output starts as NaN, so an element a kernel never writes fails.
"""
import numpy as np
import pytest

from minicolor import backend

if backend.why_no_cuda() or backend.simulator_enabled():
    pytest.skip(f"needs a CUDA GPU without the simulator ({backend.why_no_cuda() or 'simulator on'})",
                allow_module_level=True)

import cupy  # noqa: E402

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
from minicolor.reference import upsample as r_upsample  # noqa: E402

BATCH = 32


@pytest.fixture(autouse=True, scope="module")
def poison():
    kernels.POISON = True
    yield
    kernels.POISON = False


def relative_error(ours, reference):
    ours, reference = cupy.asarray(ours, dtype=cupy.float64), cupy.asarray(reference)
    assert not bool(cupy.isnan(ours).any()), "the kernel left elements unwritten (NaN)"
    return float(cupy.abs(ours - reference).max() / cupy.abs(reference).max())


def unique_conv_shapes():
    seen = {}
    for width in (16, 64):
        for name, conv, x_shape, _ in ColorizationNet(width).conv_layers(BATCH):
            key = (x_shape, conv.weight.shape, conv.stride, conv.padding, conv.dilation)
            seen.setdefault(key, f"w{width}-{name}")
    return [pytest.param(*key, id=label) for key, label in seen.items()]


@pytest.mark.parametrize("x_shape, w_shape, stride, padding, dilation", unique_conv_shapes())
def test_conv2d_on_network_shapes(x_shape, w_shape, stride, padding, dilation):
    rng = cupy.random.default_rng(0)
    x = rng.standard_normal(x_shape, dtype=cupy.float32)
    w = rng.standard_normal(w_shape, dtype=cupy.float32) * (2 / np.prod(w_shape[1:])) ** 0.5
    b = rng.standard_normal(w_shape[0], dtype=cupy.float32)
    g = ((stride, stride), (padding, padding), (dilation, dilation))
    x64, w64, b64 = x.astype(cupy.float64), w.astype(cupy.float64), b.astype(cupy.float64)
    y, saved = k_conv2d.forward(x, w, b, *g)
    y_ref, cols = r_conv2d.forward(x64, w64, b64, *g)
    assert relative_error(y, y_ref) < 1e-4
    gy = rng.standard_normal(y.shape, dtype=cupy.float32)
    gy64 = gy.astype(cupy.float64)
    assert relative_error(k_conv2d.backward_data(gy, w, x.shape, *g),
                          r_conv2d.backward_data(gy64, w64, x.shape, *g)) < 1e-4
    gw, gb = k_conv2d.backward_weight(gy, saved, w.shape, *g)
    gw_ref, gb_ref = r_conv2d.backward_weight(gy64, cols, w.shape)
    assert relative_error(gw, gw_ref) < 1e-4
    assert relative_error(gb, gb_ref) < 1e-4


ODD_CONV_CASES = [  # (x shape, F, k, stride, padding, dilation): the kernels' other code paths
    ((3, 129, 17, 13), 130, 3, 2, 2, 2),  # partial tiles everywhere; stride 2 with dilation 2 (phases)
    ((2, 70, 9, 11), 313, 1, 1, 0, 1),    # the classification head's 313 bins: 3 row tiles, the last partial
    ((2, 40, 10, 9), 3, 1, 2, 0, 1),      # thin tile (3 filters), 1x1 stride 2: 3 of 4 phases without taps
    ((4, 1, 33, 31), 20, 3, 1, 1, 1),     # one input channel: K = 9, thin tile, grad-input with M = 1
]


@pytest.mark.parametrize("dtype", [cupy.float32, cupy.float64])
@pytest.mark.parametrize("x_shape, f, k, stride, padding, dilation", ODD_CONV_CASES)
@pytest.mark.parametrize("version", ["naive", "tiled"])
def test_conv2d_on_odd_shapes(x_shape, f, k, stride, padding, dilation, dtype, version, monkeypatch):
    """Both versions against float64 NumPy on CuPy. These shapes are small, so the tiled version
    runs its 64 x 64 tile in both dtypes (the network shapes above reach 128 x 128 in float32)."""
    monkeypatch.setattr(k_conv2d, "VERSION", version)
    rng = cupy.random.default_rng(7)
    x = rng.standard_normal(x_shape, dtype=cupy.float32).astype(dtype)
    w = rng.standard_normal((f, x_shape[1], k, k), dtype=cupy.float32).astype(dtype)
    b = rng.standard_normal(f, dtype=cupy.float32).astype(dtype)
    g = ((stride, stride), (padding, padding), (dilation, dilation))
    x64, w64, b64 = x.astype(cupy.float64), w.astype(cupy.float64), b.astype(cupy.float64)
    tol = 1e-4 if dtype == cupy.float32 else 1e-12
    y, saved = k_conv2d.forward(x, w, b, *g)
    y_ref, cols = r_conv2d.forward(x64, w64, b64, *g)
    assert y.dtype == dtype and relative_error(y, y_ref) < tol
    gy = rng.standard_normal(y.shape, dtype=cupy.float32).astype(dtype)
    gy64 = gy.astype(cupy.float64)
    assert relative_error(k_conv2d.backward_data(gy, w, x.shape, *g),
                          r_conv2d.backward_data(gy64, w64, x.shape, *g)) < tol
    gw_ref, gb_ref = r_conv2d.backward_weight(gy64, cols, w.shape)
    gw, gb = k_conv2d.backward_weight(gy, saved, w.shape, *g)
    assert relative_error(gw, gw_ref) < tol
    assert relative_error(gb, gb_ref) < tol
    for splits in (1, 5) if version == "tiled" else ():
        gw, gb = k_conv2d_tiled.backward_weight(gy, saved, w.shape, *g, splits=splits)
        assert relative_error(gw, gw_ref) < tol
        assert relative_error(gb, gb_ref) < tol


@pytest.mark.parametrize("shape", [(BATCH, 16, 112, 112), (BATCH, 512, 28, 28)])
def test_batchnorm_on_network_shapes(shape):
    rng = cupy.random.default_rng(1)
    x = rng.standard_normal(shape, dtype=cupy.float32) * 2 + 1
    c = shape[1]
    weight, bias = rng.standard_normal(c, dtype=cupy.float32), rng.standard_normal(c, dtype=cupy.float32)
    rm, rv = cupy.zeros(c, cupy.float32), cupy.ones(c, cupy.float32)
    rm64, rv64 = cupy.zeros(c), cupy.ones(c)
    y, xhat, inv_std = k_batchnorm.forward(x, weight, bias, rm, rv, True, 0.1, 1e-5)
    y_ref, xhat_ref, inv_ref = r_batchnorm.forward(x.astype(cupy.float64), weight.astype(cupy.float64),
                                                   bias.astype(cupy.float64), rm64, rv64, True, 0.1, 1e-5)
    assert relative_error(y, y_ref) < 1e-4
    assert relative_error(rv, rv64) < 1e-4
    gy = rng.standard_normal(shape, dtype=cupy.float32)
    for ours, ref in zip(k_batchnorm.backward(gy, xhat, inv_std, weight, True),
                         r_batchnorm.backward(gy.astype(cupy.float64), xhat_ref, inv_ref,
                                              weight.astype(cupy.float64), True)):
        assert relative_error(ours, ref) < 1e-4


@pytest.mark.parametrize("shape, scale, mode", [((BATCH, 512, 28, 28), 2, "nearest"),
                                                ((BATCH, 2, 56, 56), 4, "bilinear")])
def test_upsample_on_network_shapes(shape, scale, mode):
    x = cupy.random.default_rng(2).standard_normal(shape, dtype=cupy.float32)
    y = k_upsample.forward(x, scale, mode)
    assert relative_error(y, r_upsample.forward(x.astype(cupy.float64), scale, mode)) < 1e-4
    gy = cupy.random.default_rng(3).standard_normal(y.shape, dtype=cupy.float32)
    assert relative_error(k_upsample.backward(gy, shape, scale, mode),
                          r_upsample.backward(gy.astype(cupy.float64), shape, scale, mode)) < 1e-4


def test_mse_on_network_shape():
    rng = cupy.random.default_rng(4)
    pred, target = (rng.standard_normal((BATCH, 2, 224, 224), dtype=cupy.float32) for _ in range(2))
    loss, diff = k_mse.forward(pred, target)
    ref = ((pred.astype(cupy.float64) - target) ** 2).mean()
    assert relative_error(loss, ref) < 1e-4
    grad = k_mse.backward(cupy.asarray(1.0, cupy.float32), diff)
    assert relative_error(grad, 2 * (pred.astype(cupy.float64) - target) / pred.size) < 1e-4


@pytest.mark.parametrize("dtype", [cupy.float32, cupy.float64])
def test_leaky_relu_on_a_network_shape(dtype):
    """More elements than the grid has threads (MAX_BLOCKS x THREADS): the grid-stride loop."""
    from minicolor.kernels import leaky_relu as k_leaky_relu
    from minicolor.reference import leaky_relu as r_leaky_relu

    rng = cupy.random.default_rng(6)
    x, gy = (rng.standard_normal((BATCH, 64, 112, 112), dtype=dtype) for _ in range(2))
    assert x.size > k_leaky_relu.MAX_BLOCKS * k_leaky_relu.THREADS
    y, gx = k_leaky_relu.forward(x, 0.2), k_leaky_relu.backward(gy, x, 0.2)
    assert y.dtype == gx.dtype == dtype
    assert relative_error(y, r_leaky_relu.forward(x.astype(cupy.float64), 0.2)) < 1e-6
    assert relative_error(gx, r_leaky_relu.backward(gy.astype(cupy.float64), x, 0.2)) < 1e-6


def test_training_step_on_cuda_matches_cpu():
    rng = np.random.default_rng(5)
    l = rng.uniform(-0.5, 0.5, (2, 1, 32, 32)).astype(np.float32)
    ab = rng.uniform(-0.5, 0.5, (2, 2, 32, 32)).astype(np.float32)
    losses = {}
    for device in ("cpu", "cuda"):
        net = ColorizationNet(width=4, seed=0).to(device)
        loss = F.mse_loss(net(tensor(l, device=device)), tensor(ab, device=device))
        loss.backward()
        losses[device] = loss.item()
    assert losses["cuda"] == pytest.approx(losses["cpu"], rel=1e-4)


def test_classification_ops_on_cuda_match_cpu():
    """softmax_cross_entropy and annealed_mean run their xp reference on CuPy: same numbers."""
    rng = np.random.default_rng(6)
    logits = rng.standard_normal((2, 7, 5, 4)).astype(np.float32)
    target = rng.random((2, 7, 5, 4)).astype(np.float32)
    target /= target.sum(axis=1, keepdims=True)
    weight = rng.uniform(0.5, 2, (2, 5, 4)).astype(np.float32)
    centers = rng.uniform(-50, 50, (7, 2)).astype(np.float32)
    results = {}
    for device in ("cpu", "cuda"):
        z = tensor(logits, requires_grad=True, device=device)
        xp = cupy if device == "cuda" else np
        loss = F.softmax_cross_entropy(z, xp.asarray(target), xp.asarray(weight))
        ab = F.annealed_mean(z, xp.asarray(centers))
        (loss + ab.mean()).backward()
        grad = cupy.asnumpy(z.grad) if device == "cuda" else z.grad
        results[device] = (loss.item(), ab.numpy(), grad)
    assert results["cuda"][0] == pytest.approx(results["cpu"][0], rel=1e-5)
    np.testing.assert_allclose(results["cuda"][1], results["cpu"][1], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(results["cuda"][2], results["cpu"][2], rtol=1e-4, atol=1e-6)


# --- the launch path, fused Adam, fused ReLU + batchnorm (issue 11) ------------------------------
from minicolor import nn, optim  # noqa: E402


def _bn_launch_args(rng, shape=(2, 8, 256)):
    """Arguments of batchnorm's _normalize on (N, C, H*W) arrays, with relu=True."""
    x = rng.standard_normal(shape, dtype=cupy.float32)
    c = shape[1]
    mean, inv_std = rng.standard_normal(c, dtype=cupy.float32), rng.random(c, dtype=cupy.float32) + 0.5
    w, b = rng.standard_normal(c, dtype=cupy.float32), rng.standard_normal(c, dtype=cupy.float32)
    y, xhat = cupy.full(shape, cupy.nan, cupy.float32), cupy.full(shape, cupy.nan, cupy.float32)
    return (x, mean, inv_std, w, b, True, y, xhat), (y, xhat)


@pytest.mark.parametrize("one_kernel", [True, False])
def test_fast_launch_matches_numbas_launch(one_kernel, monkeypatch):
    """The same kernels through kernels/_launch.py and through kernel[grid, block, stream]:
    bit-identical results, and the fast path really taken (a cached specialisation)."""
    monkeypatch.setattr(k_batchnorm, "ONE_KERNEL_MAX", 10**9 if one_kernel else 0)
    rng = cupy.random.default_rng(7)
    x = rng.standard_normal((2, 8, 16, 16), dtype=cupy.float32)
    c = x.shape[1]
    results = {}
    for fast in (False, True, True):  # the second fast run uses the cached entries
        monkeypatch.setattr(kernels, "FAST_LAUNCH", fast)
        w, b = cupy.ones(c, cupy.float32), cupy.zeros(c, cupy.float32)
        rm, rv = cupy.zeros(c, cupy.float32), cupy.ones(c, cupy.float32)
        y, xhat, inv_std = k_batchnorm.forward(x, w, b, rm, rv, True, 0.1, 1e-5, relu=True)
        gx, gw, gb = k_batchnorm.backward(y * 0.5, xhat, inv_std, w, True, relu_input=x)
        loss, diff = k_mse.forward(y, x)
        results[fast] = [a.get() for a in (y, xhat, inv_std, rm, rv, gx, gw, gb, loss, diff)]
    for ours, plain in zip(results[True], results[False]):
        np.testing.assert_array_equal(ours, plain)
    launcher = kernels._fast
    assert launcher.enabled
    taken = {kernel for (kernel, _), entry in launcher.entries.items() if entry}
    used = ([k_batchnorm._channel_forward, k_batchnorm._channel_backward] if one_kernel else
            [k_batchnorm._chunk_stats, k_batchnorm._combine_stats, k_batchnorm._normalize,
             k_batchnorm._chunk_grad_sums, k_batchnorm._combine_sums, k_batchnorm._grad_input])
    assert set(used + [k_mse._forward]) <= taken


STICKY = """
import warnings
import cupy
from numba import cuda
import minicolor.kernels as kernels

@cuda.jit
def poke(a, where):
    a[where] = 1.0

a = cupy.zeros(4, cupy.float32)
for _ in range(2):  # compiled, then on the fast path
    kernels.launch(poke, 1, 1, a, 0)
cupy.cuda.get_current_stream().synchronize()
print("fast path:", bool(kernels._fast))
warnings.simplefilter("error")  # a "fast launch path failed" warning would end the script
kernels.launch(poke, 1, 1, a, 1 << 40)  # far outside any allocation: an illegal address
try:
    cupy.cuda.get_current_stream().synchronize()
except Exception as exc:
    print("sync:", type(exc).__name__)
try:
    kernels.launch(poke, 1, 1, a, 0)
    cupy.cuda.get_current_stream().synchronize()
    print("no error")
except Exception as exc:
    print("error:", type(exc).__module__, type(exc).__name__, exc)
"""


def test_a_sticky_cuda_error_surfaces_as_an_error(tmp_path):
    """After an illegal address, every launch fails: the fast path must raise that CUDA error,
    not warn "fast launch path failed" and retry (in a process of its own: the context dies)."""
    import subprocess
    import sys

    script = tmp_path / "sticky.py"
    script.write_text(STICKY)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    out = done.stdout + done.stderr
    assert "fast path: True" in out, out
    assert "error:" in out and "ILLEGAL" in out.split("error:")[-1].upper(), out
    assert "fast launch path failed" not in out and "Warning" not in out, out


@pytest.mark.parametrize("fast", [False, True])
def test_launches_go_to_cupys_current_stream(fast, monkeypatch):
    """A CUDA graph captured on a CuPy stream catches the kernel: a launch on any other stream
    would break the capture (or run at once, outside the graph)."""
    monkeypatch.setattr(kernels, "FAST_LAUNCH", fast)
    rng = cupy.random.default_rng(8)
    args, (y, xhat) = _bn_launch_args(rng)
    cupy.cuda.Device().synchronize()  # the arguments were made on the default stream
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:  # the eager warm-up on the capture stream: compiled, the stream wrapped, cached
        kernels.launch(k_batchnorm._normalize, (1, 16), k_batchnorm.THREADS, *args)
        expected = y.get()
        y.fill(cupy.nan)
        stream.synchronize()
        stream.begin_capture()
        kernels.launch(k_batchnorm._normalize, (1, 16), k_batchnorm.THREADS, *args)
        graph = stream.end_capture()
    stream.synchronize()
    assert bool(cupy.isnan(y).all())  # captured, not run
    graph.launch(stream)
    stream.synchronize()
    np.testing.assert_array_equal(y.get(), expected)


def test_fused_adam_on_cuda_matches_reference():
    rng = np.random.default_rng(9)
    shapes = [(64, 32, 3, 3), (64,), (5, 7)]
    start = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    ref = [nn.Parameter(a.copy()) for a in start]
    gpu = [nn.Parameter(a.copy(), device="cuda") for a in start]
    opt_ref = optim.Adam(ref, lr=1e-2, weight_decay=0.01)
    opt_gpu = optim.Adam(gpu, lr=1e-2, weight_decay=0.01)
    assert opt_gpu.flat is not None
    for _ in range(5):
        for a, b in zip(ref, gpu):
            g = rng.standard_normal(a.shape).astype(np.float32)
            a.grad, b.grad = g, cupy.asarray(g)
        opt_ref.step()
        opt_gpu.step()
    assert opt_gpu.t == 5
    for a, b in zip(ref, gpu):  # equal to rounding (the GPU may fuse a * b + c into one FMA)
        np.testing.assert_allclose(b.numpy(), a.data, rtol=1e-5, atol=1e-6)
    for i in range(len(shapes)):
        np.testing.assert_allclose(cupy.asnumpy(opt_gpu.m[i]), opt_ref.m[i], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("shape", [(BATCH, 16, 112, 112), (BATCH, 512, 28, 28)])
def test_relu_batchnorm_on_network_shapes(shape):
    rng = cupy.random.default_rng(10)
    x = rng.standard_normal(shape, dtype=cupy.float32) * 2 + 0.5
    c = shape[1]
    weight, bias = rng.standard_normal(c, dtype=cupy.float32), rng.standard_normal(c, dtype=cupy.float32)
    rm, rv = cupy.zeros(c, cupy.float32), cupy.ones(c, cupy.float32)
    rm64, rv64 = cupy.zeros(c), cupy.ones(c)
    x64, w64, b64 = x.astype(cupy.float64), weight.astype(cupy.float64), bias.astype(cupy.float64)
    y, xhat, inv_std = k_batchnorm.forward(x, weight, bias, rm, rv, True, 0.1, 1e-5, relu=True)
    y_ref, xhat_ref, inv_ref = r_batchnorm.forward(x64, w64, b64, rm64, rv64, True, 0.1, 1e-5, relu=True)
    assert relative_error(y, y_ref) < 1e-4
    assert relative_error(rv, rv64) < 1e-4
    gy = rng.standard_normal(shape, dtype=cupy.float32)
    grads = k_batchnorm.backward(gy, xhat, inv_std, weight, True, relu_input=x)
    for ours, ref in zip(grads, r_batchnorm.backward(gy.astype(cupy.float64), xhat_ref, inv_ref, w64,
                                                     True, relu_input=x64)):
        assert relative_error(ours, ref) < 1e-4
    # the chunks' partial results are merged in a fixed order: a second run gives the same bits
    again = k_batchnorm.forward(x, weight, bias, rm.copy(), rv.copy(), True, 0.1, 1e-5, relu=True)
    for a, b in zip((y, xhat, inv_std), again):
        np.testing.assert_array_equal(a.get(), b.get())
    for a, b in zip(grads, k_batchnorm.backward(gy, xhat, inv_std, weight, True, relu_input=x)):
        np.testing.assert_array_equal(a.get(), b.get())


@pytest.mark.parametrize("shape", [(1, 32, 56, 56), (1, 128, 28, 28)])
def test_batchnorm_one_kernel_path_on_batch1_shapes(shape, monkeypatch):
    """Small channels take one kernel per pass: the same numbers as the two-kernel way (the
    same device functions; to rounding, in case the compiler contracts differently) and as the
    float64 reference."""
    rng = cupy.random.default_rng(11)
    x = rng.standard_normal(shape, dtype=cupy.float32) * 2 + 0.5
    gy = rng.standard_normal(shape, dtype=cupy.float32)
    c = shape[1]
    weight, bias = rng.standard_normal(c, dtype=cupy.float32), rng.standard_normal(c, dtype=cupy.float32)
    assert shape[0] * shape[2] * shape[3] <= k_batchnorm.ONE_KERNEL_MAX
    results = []
    for limit in (k_batchnorm.ONE_KERNEL_MAX, 0):
        monkeypatch.setattr(k_batchnorm, "ONE_KERNEL_MAX", limit)
        rm, rv = cupy.zeros(c, cupy.float32), cupy.ones(c, cupy.float32)
        y, xhat, inv_std = k_batchnorm.forward(x, weight, bias, rm, rv, True, 0.1, 1e-5, relu=True)
        grads = k_batchnorm.backward(gy, xhat, inv_std, weight, True, relu_input=x)
        results.append([a.get() for a in (y, xhat, inv_std, rm, rv, *grads)])
    for one, two in zip(*results):
        np.testing.assert_allclose(one, two, rtol=1e-6, atol=1e-6)
    x64, w64, b64 = x.astype(cupy.float64), weight.astype(cupy.float64), bias.astype(cupy.float64)
    y_ref, xhat_ref, inv_ref = r_batchnorm.forward(x64, w64, b64, cupy.zeros(c), cupy.ones(c), True, 0.1,
                                                   1e-5, relu=True)
    assert relative_error(results[0][0], y_ref) < 1e-4
    refs = r_batchnorm.backward(gy.astype(cupy.float64), xhat_ref, inv_ref, w64, True, relu_input=x64)
    for ours, ref in zip(results[0][5:], refs):
        assert relative_error(ours, ref) < 1e-4
