"""LeakyReLU, the worked example of docs/add-a-layer.md: every check a layer gets.

1. the NumPy reference against PyTorch (forward and backward, the slope's edge cases);
2. the gradient check (minicolor/gradcheck.py): backward against finite differences of forward;
3. the module: shape, FLOPs, description, and its PyTorch twin giving the same numbers;
4. the CUDA kernels against the reference in Numba's CUDA simulator, float32 and float64,
   every output NaN-poisoned first, a grid smaller than the array (the grid-stride loop);
5. the dispatch table finds both files by their name, and nothing else names them.
The kernels on a real GPU: tests/test_kernels_gpu.py. Compiled for sm_90: tests/test_kernel_compile.py.
"""
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from minicolor import backend, gradcheck, nn, tensor
from minicolor import functional as F
from minicolor.reference import leaky_relu as reference
from conftest import torch_or_skip

SLOPES = [0.01, 0.2, 0.0, -0.5, 1.5]


def with_edges(rng, shape, dtype):
    """Random values with the awkward ones first (as many as fit): 0, -0, both infinities, NaN."""
    x = rng.standard_normal(shape).astype(dtype)
    edges = [0.0, -0.0, np.inf, -np.inf, np.nan]
    x.reshape(-1)[:len(edges)] = edges[:x.size]
    return x


# --- 1. the reference against PyTorch ------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("slope", SLOPES)
def test_reference_matches_pytorch(rng, slope, dtype):
    torch = torch_or_skip()
    x, gy = with_edges(rng, (2, 3, 4, 5), dtype), rng.standard_normal((2, 3, 4, 5)).astype(dtype)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.leaky_relu(xt, slope)
    yt.backward(torch.tensor(gy))
    with np.errstate(invalid="ignore"):  # -inf * 0 is NaN, in PyTorch too
        y, gx = reference.forward(x, slope), reference.backward(gy, x, slope)
    assert y.dtype == gx.dtype == dtype
    np.testing.assert_array_equal(y, yt.detach().numpy())  # bit for bit, NaN where PyTorch has NaN
    np.testing.assert_array_equal(gx, xt.grad.numpy())


def test_reference_default_slope_and_the_gradient_at_zero():
    x = np.array([-2.0, 0.0, 3.0])
    np.testing.assert_array_equal(reference.forward(x), [-0.02, 0.0, 3.0])
    np.testing.assert_array_equal(reference.backward(np.ones(3), x), [0.01, 0.01, 1.0])  # at 0: the slope


# --- 2. the gradient check ------------------------------------------------------------------------
@pytest.mark.parametrize("slope", SLOPES)
def test_gradcheck(rng, slope):
    x = rng.standard_normal((2, 3, 3))
    x[np.abs(x) < 1e-3] = 0.5  # finite differences across the kink at 0 would not be a derivative
    assert gradcheck(lambda t: F.leaky_relu(t, slope), [tensor(x, requires_grad=True)])


def test_bad_arguments_say_what_was_expected():
    with pytest.raises(TypeError, match="leaky_relu: x must be float32 or float64, got dtype int64"):
        F.leaky_relu(tensor(np.arange(3)))
    with pytest.raises(TypeError, match="leaky_relu: negative_slope must be a number, got '0.1'"):
        F.leaky_relu(tensor(np.zeros(3)), "0.1")


# --- 3. the module and its twin ----------------------------------------------------------------------
def test_module_describes_itself():
    layer = nn.LeakyReLU(0.2)
    assert layer.output_shape((2, 3, 4, 5)) == (2, 3, 4, 5)
    assert layer.flops((2, 3, 4, 5)) == 2 * 120
    assert layer.describe() == "leaky_relu 0.2" and nn.LeakyReLU().describe() == "leaky_relu 0.01"
    assert repr(layer) == "LeakyReLU(negative_slope=0.2)"


def test_module_twin_gives_the_same_numbers(rng):
    torch = torch_or_skip()
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, rng=rng, dtype=np.float64), nn.LeakyReLU(0.1))
    twin = net.to_torch()
    assert isinstance(twin[1], torch.nn.LeakyReLU) and twin[1].negative_slope == 0.1
    x, gy = rng.standard_normal((2, 2, 5, 5)), rng.standard_normal((2, 3, 5, 5))
    xt, xm = torch.tensor(x, requires_grad=True), tensor(x, requires_grad=True)
    yt, ym = twin(xt), net(xm)
    yt.backward(torch.tensor(gy))
    ym.backward(gy)
    np.testing.assert_allclose(ym.data, yt.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(xm.grad, xt.grad.numpy(), rtol=1e-12, atol=1e-12)


# --- 4. the kernels in the simulator ----------------------------------------------------------------------
@pytest.fixture
def simulated_kernels(monkeypatch):
    """minicolor.kernels.leaky_relu in Numba's CUDA simulator, every output NaN before a kernel
    writes it (kernels.POISON): an element a kernel forgets shows up as NaN."""
    try:
        backend.enable_simulator()
    except backend.DeviceError as exc:  # numba.cuda already imported for a real GPU
        pytest.skip(str(exc))
    import minicolor.kernels as kernels
    from minicolor.kernels import leaky_relu

    monkeypatch.setattr(kernels, "POISON", True)
    previous = sys.getswitchinterval()
    sys.setswitchinterval(5e-5)  # the simulator's Python threads take turns quickly
    yield leaky_relu
    sys.setswitchinterval(previous)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # -inf * 0, in a
# simulated thread, where the test's np.errstate does not reach
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("slope", [0.01, 0.0, -0.5])
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (7,), (1, 1, 1, 1)])
def test_kernels_match_reference(rng, simulated_kernels, shape, slope, dtype):
    x, gy = with_edges(rng, shape, dtype), rng.standard_normal(shape).astype(dtype)
    with np.errstate(invalid="ignore"):  # -inf * 0 is NaN, in the kernel as in the reference
        y, y_ref = simulated_kernels.forward(x, slope), reference.forward(x, slope)
    gx = simulated_kernels.backward(gy, x, slope)
    assert y.shape == gx.shape == shape and y.dtype == gx.dtype == dtype
    np.testing.assert_array_equal(y, y_ref)  # to the bit, NaN where the reference has NaN
    np.testing.assert_array_equal(gx, reference.backward(gy, x, slope))


def test_grid_stride_loop_covers_an_array_larger_than_the_grid(rng, simulated_kernels, monkeypatch):
    monkeypatch.setattr(simulated_kernels, "MAX_BLOCKS", 2)  # 2 blocks for 7 blocks' worth of values
    x = rng.standard_normal((7, simulated_kernels.THREADS)).astype(np.float32)
    np.testing.assert_array_equal(simulated_kernels.forward(x), reference.forward(x))
    np.testing.assert_array_equal(simulated_kernels.backward(x, x), reference.backward(x, x))


def test_gradcheck_through_the_kernels(rng, simulated_kernels):
    x = rng.standard_normal((2, 3, 3))
    x[np.abs(x) < 1e-3] = 0.5
    t = tensor(x, requires_grad=True, device="sim")
    assert F.leaky_relu(t, 0.3).creator.impl is simulated_kernels
    assert gradcheck(lambda t: F.leaky_relu(t, 0.3), [t])


# --- 5. found by its name ---------------------------------------------------------------------------
def test_the_table_finds_the_files_by_name():
    """backend.implementation looks for leaky_relu.py in the device's folders: the reference on
    the CPU (there is no minicolor/cpu/leaky_relu.py), the kernels on sim and cuda."""
    assert backend.implementation("leaky_relu", "cpu") is reference
    assert "kernels" in backend.DEVICES["sim"].folders and "kernels" in backend.DEVICES["cuda"].folders


def test_no_other_source_file_names_the_layer():
    """Registered nowhere: the four files of docs/add-a-layer.md are the only ones in minicolor/
    and kernels/ that name it (the table finds the op by file name, the tools ask the module)."""
    root = Path(__file__).resolve().parents[1]
    naming = sorted(str(path.relative_to(root)) for folder in ("minicolor", "kernels")
                    for path in (root / folder).rglob("*.py")
                    if re.search(r"leaky", path.read_text(), re.IGNORECASE))
    assert naming == ["kernels/leaky_relu.py", "minicolor/functional.py", "minicolor/nn.py",
                      "minicolor/reference/leaky_relu.py"]


def test_the_page_shows_the_code_as_it_is():
    """Each listing of docs/add-a-layer.md (a ```py block whose first line names its file) is
    that file's text, whole or an unchanged stretch of it."""
    root = Path(__file__).resolve().parents[1]
    listings = re.findall(r"^```py\n# (\S+)\n(.*?)^```", (root / "docs" / "add-a-layer.md").read_text(),
                          re.S | re.M)
    assert [path for path, _ in listings] == ["minicolor/reference/leaky_relu.py", "kernels/leaky_relu.py",
                                              "minicolor/functional.py", "minicolor/nn.py"]
    for path, text in listings:
        assert text in (root / path).read_text(), f"docs/add-a-layer.md shows {path} as it no longer is"
