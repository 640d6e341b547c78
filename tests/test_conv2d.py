"""conv2d: gradient checks, a direct-loop oracle, PyTorch where installed, property tests, errors."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minicolor import functional as F
from minicolor import gradcheck, tensor
from minicolor.reference import conv2d as ref
from oracles import conv2d_loop

from conftest import torch_or_skip

CASES = [  # (N, C, H, W, F, k, stride, padding, dilation)
    (1, 1, 5, 5, 2, 3, 1, 1, 1),
    (2, 3, 7, 6, 4, 3, 2, 1, 1),      # stride 2, odd, non-square, batch > 1
    (2, 2, 9, 8, 3, 3, 1, 2, 2),      # dilation 2
    (1, 3, 6, 7, 2, 1, 1, 0, 1),      # 1x1
    (2, 2, 8, 5, 3, (3, 2), (2, 1), (0, 1), (1, 2)),  # pairs everywhere
    (1, 2, 5, 5, 2, 5, 1, 0, 1),      # kernel as large as the input
]


def pair(v):
    return (v, v) if isinstance(v, int) else v


@pytest.mark.parametrize("case", CASES)
def test_gradcheck(rng, case):
    n, c, h, w, f, k, s, p, d = case
    kh, kw = pair(k)
    x = tensor(rng.standard_normal((n, c, h, w)), requires_grad=True)
    wt = tensor(rng.standard_normal((f, c, kh, kw)), requires_grad=True)
    b = tensor(rng.standard_normal(f), requires_grad=True)
    assert gradcheck(lambda x, wt, b: F.conv2d(x, wt, b, s, p, d), [x, wt, b])


@pytest.mark.parametrize("case", CASES)
def test_forward_matches_direct_loops(rng, case):
    n, c, h, w, f, k, s, p, d = case
    kh, kw = pair(k)
    x = rng.standard_normal((n, c, h, w))
    wt = rng.standard_normal((f, c, kh, kw))
    b = rng.standard_normal(f)
    y = F.conv2d(tensor(x), tensor(wt), tensor(b), s, p, d).data
    np.testing.assert_allclose(y, conv2d_loop(x, wt, b, pair(s), pair(p), pair(d)), atol=1e-10)


def test_float32_stays_float32(rng):
    x = tensor(rng.standard_normal((1, 2, 5, 5)).astype(np.float32), requires_grad=True)
    w = tensor(rng.standard_normal((3, 2, 3, 3)).astype(np.float32), requires_grad=True)
    y = F.conv2d(x, w, padding=1)
    y.sum().backward()
    assert y.dtype == x.grad.dtype == w.grad.dtype == np.float32


@pytest.mark.parametrize("case", CASES)
def test_forward_and_backward_match_pytorch(rng, case):
    torch = torch_or_skip()
    n, c, h, w, f, k, s, p, d = case
    kh, kw = pair(k)
    x = rng.standard_normal((n, c, h, w))
    wt = rng.standard_normal((f, c, kh, kw))
    b = rng.standard_normal(f)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, wt, b))
    ty = torch.nn.functional.conv2d(tx, tw, tb, pair(s), pair(p), pair(d))
    gy = rng.standard_normal(tuple(ty.shape))
    ty.backward(torch.tensor(gy))
    mx, mw, mb = (tensor(a, requires_grad=True) for a in (x, wt, b))
    my = F.conv2d(mx, mw, mb, s, p, d)
    my.backward(gy)
    for mine, theirs in ((my.data, ty), (mx.grad, tx.grad), (mw.grad, tw.grad), (mb.grad, tb.grad)):
        np.testing.assert_allclose(mine, theirs.detach().numpy(), rtol=1e-10, atol=1e-10)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 2), c=st.integers(1, 3), f=st.integers(1, 3), h=st.integers(1, 9),
       w=st.integers(1, 9), k=st.integers(1, 3), s=st.integers(1, 3), p=st.integers(0, 2),
       d=st.integers(1, 2), seed=st.integers(0, 2**16))
def test_property_forward_and_adjoint(n, c, f, h, w, k, s, p, d, seed):
    if d * (k - 1) + 1 > min(h, w) + 2 * p:
        return  # the kernel does not fit; covered by the error tests
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w))
    wt = rng.standard_normal((f, c, k, k))
    y, _ = ref.forward(x, wt, None, (s, s), (p, p), (d, d))
    np.testing.assert_allclose(y, conv2d_loop(x, wt, None, (s, s), (p, p), (d, d)), atol=1e-9)
    # grad-input is the adjoint of forward: <conv(x), gy> == <x, backward_data(gy)>
    gy = rng.standard_normal(y.shape)
    gx = ref.backward_data(gy, wt, x.shape, (s, s), (p, p), (d, d))
    np.testing.assert_allclose((y * gy).sum(), (x * gx).sum(), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("x_shape, w_shape, kwargs, message", [
    ((3, 5, 5), (2, 3, 3, 3), {}, r"x must have shape \(N, C, H, W\), got shape \(3, 5, 5\)"),
    ((1, 3, 5, 5), (2, 3, 3), {}, r"w must have shape \(F, C, kh, kw\)"),
    ((1, 2, 5, 5), (2, 3, 3, 3), {}, "x has 2 channels .* but w expects 3"),
    ((1, 3, 5, 5), (2, 3, 3, 3), {"stride": 0}, "stride must be >= 1, got 0"),
    ((1, 3, 5, 5), (2, 3, 3, 3), {"padding": -1}, "padding must be >= 0"),
    ((1, 3, 2, 5), (2, 3, 3, 3), {}, "kernel height 3 .* more than the padded input height 2"),
    ((1, 3, 5, 5), (2, 3, 3, 3), {"dilation": 3}, r"dilation 3\) spans 7 pixels"),
])
def test_bad_input_is_a_clear_error(x_shape, w_shape, kwargs, message):
    x = tensor(np.zeros(x_shape, np.float32))
    w = tensor(np.zeros(w_shape, np.float32))
    with pytest.raises((ValueError, TypeError), match=message):
        F.conv2d(x, w, **kwargs)


def test_integer_and_mixed_dtypes_are_rejected():
    w = tensor(np.zeros((2, 3, 3, 3), np.float32))
    with pytest.raises(TypeError, match="x must be float32 or float64, got dtype int64"):
        F.conv2d(tensor(np.zeros((1, 3, 5, 5), np.int64)), w)
    with pytest.raises(TypeError, match="w has dtype float32, x has float64"):
        F.conv2d(tensor(np.zeros((1, 3, 5, 5))), w)
