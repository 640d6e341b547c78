"""Which interpolation points make F(4x4, 3x3) most accurate in float32?

    python examples/winograd_points.py

Winograd's F(m, r) can be built on any m + r - 2 distinct points plus "infinity" (Toom-Cook):
the input transform evaluates the input polynomial at the points, the filter transform the
filter's, the elementwise product multiplies the two polynomials' values, and the output
transform interpolates the product back. minicolor uses 0, 1, -1, 2, -2 (Lavin & Gray's
choice). Larger points make larger constants (2^3 = 8 in A^T), and larger constants make
float32 round more coarsely (Barabasz et al. 2020, "Error analysis and improving the accuracy
of Winograd convolution for deep neural networks", study how the points set the error).

This script builds the matrices for a few choices, exactly in fractions, checks each on a 1-D
correlation, and measures the float32 error of a 2-D layer (128 channels in, 32 out, 200 tiles
of 4 x 4 outputs, three random draws) against float64, as the largest difference over the
largest value, with minicolor's own matrices (`minicolor/cpu/winograd.py`) in the first row:
the construction on its points gives the same matrices. Pairing a point with its inverse (2
and -1/2) rounds 2.7 times less than +-2 or +-1/2 alone. docs/winograd.md, *Other points*,
shows the table.
"""
from fractions import Fraction

import numpy as np

from minicolor.cpu import winograd

CHOICES = [  # the finite points; "infinity" is always the last
    (0, 1, -1, 2, -2),
    (0, 1, -1, Fraction(1, 2), Fraction(-1, 2)),
    (0, 1, -1, 2, Fraction(-1, 2)),
    (0, 1, -1, Fraction(1, 2), -2),
    (0, 1, -1, Fraction(3, 2), Fraction(-3, 2)),
]


def _times(a, b):
    """The product of two polynomials given by their coefficients, lowest degree first."""
    out = [Fraction(0)] * (len(a) + len(b) - 1)
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            out[i + j] += x * y
    return out


def _roots(points):
    """The coefficients of prod (x - p) over ``points``."""
    poly = [Fraction(1)]
    for p in points:
        poly = _times(poly, [-p, Fraction(1)])
    return poly


def matrices(points, m=4, r=3):
    """(A^T, G, B^T) of F(m, r) on the finite ``points`` (m + r - 2 of them) and infinity.

    A^T (m x n): row i holds p^i at each finite point, and 1 at infinity in the last row (the
    leading coefficient of the product). G (n x r): row j holds the filter polynomial's value
    at point j, p^k, divided by N_j = prod over the other points (p_j - p_l) (Lagrange's
    denominator, which interpolation needs); the last row picks the leading tap. B^T (n x n):
    row j holds the coefficients of prod over l != j of (x - p_l), the last row those of the
    product over all points."""
    n = m + r - 1
    pts = [Fraction(p) for p in points]
    if len(pts) != n - 1 or len(set(pts)) != len(pts):
        raise ValueError(f"F({m}, {r}) needs {n - 1} distinct finite points, got {points}")
    at = [[p**i for p in pts] + [Fraction(int(i == m - 1))] for i in range(m)]
    g = []
    for j, p in enumerate(pts):
        scale = np.prod([p - q for q in pts if q != p])
        g.append([p**k / scale for k in range(r)])
    g.append([Fraction(int(k == r - 1)) for k in range(r)])
    bt = [_roots([q for q in pts if q != p]) + [Fraction(0)] for p in pts] + [_roots(pts)]
    return tuple(np.array([[float(v) for v in row] for row in mat]) for mat in (at, g, bt))


def check_1d(at, g, bt, rng):
    """Largest error of one 1-D tile against the direct correlation, in float64."""
    m, r = at.shape[0], g.shape[1]
    d, taps = rng.standard_normal(m + r - 1), rng.standard_normal(r)
    direct = np.array([d[i:i + r] @ taps for i in range(m)])
    return np.abs(at @ ((g @ taps) * (bt @ d)) - direct).max()


def float32_error(at, g, bt, channels=128, filters=32, tiles=200, seed=1):
    """Largest difference of F(4x4, 3x3) in float32 from the direct float64 sum, over the
    largest output: ``tiles`` tiles of 6 x 6 inputs, ``channels`` in, ``filters`` out."""
    rng = np.random.default_rng(seed)
    d = rng.standard_normal((tiles, channels, 6, 6))
    w = rng.standard_normal((filters, channels, 3, 3)) / np.sqrt(9 * channels)
    exact = sum(np.einsum("tcij,fc->tfij", d[:, :, a:a + 4, b:b + 4], w[:, :, a, b])
                for a in range(3) for b in range(3))
    at, g, bt, d, w = (x.astype(np.float32) for x in (at, g, bt, d, w))
    u = np.einsum("ia,fcab,jb->fcij", g, w, g)  # G w G^T
    v = np.einsum("ia,tcab,jb->tcij", bt, d, bt)  # B^T d B
    y = np.einsum("ia,tfab,jb->tfij", at, np.einsum("fcij,tcij->tfij", u, v), at)
    return np.abs(y - exact).max() / np.abs(exact).max()


def main():
    rng = np.random.default_rng(0)
    rows = [("minicolor's BT, G, AT (0, 1, -1, 2, -2)", (winograd.AT, winograd.G, winograd.BT))]
    rows += [(", ".join(str(p) for p in points), matrices(points)) for points in CHOICES]
    print(f"{'points (and infinity)':<42}{'1-D check':>10}{'float32 error, 3 draws':>26}"
          f"{'max |A^T|':>11}{'max |G|':>9}{'max |B^T|':>11}")
    for name, (at, g, bt) in rows:
        errors = ", ".join(f"{float32_error(at, g, bt, seed=s):.1e}" for s in (1, 2, 3))
        print(f"{name:<42}{check_1d(at, g, bt, rng):>10.0e}{errors:>26}"
              f"{np.abs(at).max():>11.3g}{np.abs(g).max():>9.3g}{np.abs(bt).max():>11.3g}")


if __name__ == "__main__":
    main()
