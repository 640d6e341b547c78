"""leaky_relu, the NumPy reference: x where x > 0, else negative_slope * x.

A ReLU lets nothing through below zero, so a unit whose inputs stay negative gets no gradient
and stops learning. The leaky one lets a small share through (PyTorch's default slope: 0.01):

    forward    y  = x               where x > 0,   negative_slope * x    elsewhere
    backward   gx = gy              where x > 0,   negative_slope * gy   elsewhere

As in PyTorch, the gradient at x = 0 is the slope's side, and backward reads the saved input x
(not y: with a slope of 0 or below, y's sign no longer tells which side x was on).
kernels/leaky_relu.py computes the same, one thread per element.
"""
from ..backend import get_array_module


def forward(x, negative_slope=0.01):
    """y, of x's shape and dtype (the slope is rounded to that dtype, as NumPy rounds a Python
    float that meets a float32 array)."""
    xp = get_array_module(x)
    return xp.where(x > 0, x, x * negative_slope)


def backward(gy, x, negative_slope=0.01):
    """gx, the gradient for x, from gy (the gradient for y) and the x that forward saw."""
    xp = get_array_module(gy)
    return xp.where(x > 0, gy, gy * negative_slope)
