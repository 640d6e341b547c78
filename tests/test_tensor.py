import numpy as np
import pytest

import minicolor
from minicolor import Tensor, gradcheck, no_grad, tensor


def t64(rng, *shape):
    return tensor(rng.standard_normal(shape), requires_grad=True)


@pytest.mark.parametrize("op", [
    lambda a, b: a + b, lambda a, b: a - b, lambda a, b: a * b,
    lambda a, b: a / (b * b + 1.0), lambda a, b: -a * 3.0 + 2.0 - b,
    lambda a, b: (a ** 3).sum(axis=1, keepdims=True) * b, lambda a, b: (a * b).mean(axis=0),
    lambda a, b: (a.reshape(6, 4) ** 2).sum(), lambda a, b: 1.0 / (a * a + 1.0) - 5.0 * b,
])
def test_arithmetic_gradients(rng, op):
    assert gradcheck(op, [t64(rng, 3, 8), t64(rng, 3, 8)])


def test_broadcasting_sums_gradient_back_to_each_shape(rng):
    a, b, c = t64(rng, 2, 3, 4), t64(rng, 3, 1), t64(rng, 4)
    assert gradcheck(lambda a, b, c: a * b + c, [a, b, c])
    for t in (a, b, c):
        t.zero_grad()
    (a * b + c).sum().backward()
    assert b.grad.shape == (3, 1) and c.grad.shape == (4,)
    np.testing.assert_allclose(c.grad, np.full(4, 6.0))


def test_backward_twice_accumulates(rng):
    x = t64(rng, 5)
    y = (x * x).sum()
    y.backward()
    first = x.grad.copy()
    y.backward()
    np.testing.assert_allclose(x.grad, 2 * first)
    np.testing.assert_allclose(first, 2 * x.data)


def test_shared_subexpression_gets_both_paths(rng):
    x = t64(rng, 4)
    y = x * 2.0
    z = (y * y + y).sum()  # dz/dx = (2y + 1) * 2
    z.backward()
    np.testing.assert_allclose(x.grad, (2 * y.data + 1) * 2)


def test_deep_graph_has_no_recursion_limit():
    x = tensor(np.ones(3), requires_grad=True)
    y = x
    for _ in range(5000):
        y = y + 1.0
    y.sum().backward()
    np.testing.assert_allclose(x.grad, np.ones(3))


def test_no_grad_builds_no_graph(rng):
    x = t64(rng, 3)
    with no_grad():
        y = x * 2.0
    assert y.creator is None and not y.requires_grad
    assert minicolor.tensor(1.0).requires_grad is False


def test_backward_on_non_scalar_needs_grad(rng):
    x = t64(rng, 3)
    with pytest.raises(RuntimeError, match="needs a scalar"):
        (x * 2.0).backward()
    with pytest.raises(ValueError, match="expected"):
        (x * 2.0).backward(np.ones(4))
    (x * 2.0).backward(np.ones(3))
    np.testing.assert_allclose(x.grad, np.full(3, 2.0))


def test_tensor_basics(rng):
    data = rng.standard_normal((2, 3)).astype(np.float32)
    t = tensor(data, requires_grad=True)
    assert t.shape == (2, 3) and t.dtype == np.float32 and t.device == "cpu"
    assert isinstance(t.numpy(), np.ndarray) and t.numpy() is not t.data
    d = t.detach()
    assert not d.requires_grad and d.creator is None
    assert "shape=(2, 3)" in repr(t)
    with pytest.raises(TypeError, match="floating-point"):
        Tensor(np.arange(3), requires_grad=True)
    with pytest.raises(ValueError, match="device must be one of"):
        tensor(data, device="tpu")


def test_cuda_device_without_gpu_is_a_clear_error():
    if minicolor.cuda_available():
        pytest.skip("a GPU is present")
    with pytest.raises(minicolor.DeviceError, match="device 'cuda' needs CuPy"):
        tensor(np.ones(2), device="cuda")
