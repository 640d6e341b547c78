"""examples/winograd_points.py: Toom-Cook matrices for any points, and their float32 error."""
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from minicolor.cpu import winograd

sys.path.insert(0, str(Path(__file__).parent.parent / "examples"))
import winograd_points  # noqa: E402


def test_the_construction_gives_minicolors_matrices_for_its_points():
    at, g, bt = winograd_points.matrices((0, 1, -1, 2, -2))
    np.testing.assert_allclose(at, winograd.AT, atol=1e-15)
    np.testing.assert_allclose(g, winograd.G, atol=1e-15)
    np.testing.assert_allclose(bt, winograd.BT, atol=1e-15)


@pytest.mark.parametrize("points", winograd_points.CHOICES + [(0, 1, -1, Fraction(1, 3))])
def test_every_choice_computes_a_correlation(points):
    m = len(points) + 1 - 2  # n = m + r - 1 with r = 3, n - 1 finite points
    at, g, bt = winograd_points.matrices(points, m=m)
    assert at.shape == (m, m + 2) and g.shape == (m + 2, 3) and bt.shape == (m + 2, m + 2)
    assert winograd_points.check_1d(at, g, bt, np.random.default_rng(0)) < 1e-12


def test_points_must_be_distinct_and_enough():
    with pytest.raises(ValueError, match="needs 5 distinct finite points"):
        winograd_points.matrices((0, 1, -1, 2, 2))
    with pytest.raises(ValueError, match="needs 5 distinct finite points"):
        winograd_points.matrices((0, 1, -1, 2))


def test_a_point_with_its_inverse_rounds_less_than_plus_and_minus_two():
    standard = winograd_points.float32_error(*winograd_points.matrices((0, 1, -1, 2, -2)), tiles=50)
    mixed = winograd_points.float32_error(*winograd_points.matrices((0, 1, -1, 2, Fraction(-1, 2))), tiles=50)
    assert 1e-7 < mixed < standard / 2 < 1e-4
