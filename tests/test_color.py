import numpy as np
import pytest

from minicolor import color


def test_round_trip(rng):
    rgb = rng.random((50, 40, 3))
    np.testing.assert_allclose(color.lab_to_rgb(color.rgb_to_lab(rgb)), rgb, atol=1e-9)


def test_matches_scikit_image(rng):
    skcolor = pytest.importorskip("skimage.color")
    rgb = np.concatenate([rng.random((64, 3)), np.eye(3), np.zeros((1, 3)), np.ones((1, 3))])
    lab = color.rgb_to_lab(rgb)
    assert np.abs(lab - skcolor.rgb2lab(rgb)).max() < 1e-3
    lab_points = np.stack([rng.uniform(0, 100, 200), rng.uniform(-60, 60, 200),
                           rng.uniform(-60, 60, 200)], -1)
    assert np.abs(color.lab_to_rgb(lab_points) - skcolor.lab2rgb(lab_points)).max() < 1e-3


def test_known_values():
    lab = color.rgb_to_lab(np.array([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]))
    np.testing.assert_allclose(lab[0], [100, 0, 0], atol=0.01)  # rounded D65 constants
    np.testing.assert_allclose(lab[1], [0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(lab[2], [53.24, 80.09, 67.20], atol=0.01)


def test_out_of_gamut_is_clipped():
    rgb = color.lab_to_rgb(np.array([[50.0, 120.0, -120.0], [100.0, 100.0, 100.0]]))
    assert rgb.min() >= 0 and rgb.max() <= 1


def test_float32_stays_float32_and_bad_shape(rng):
    assert color.rgb_to_lab(rng.random((4, 3)).astype(np.float32)).dtype == np.float32
    with pytest.raises(ValueError, match=r"expected shape \(..., 3\), got \(4, 4\)"):
        color.rgb_to_lab(np.zeros((4, 4)))


def test_scaling_is_inverse():
    ab = np.linspace(-100, 100, 7)
    np.testing.assert_allclose(color.denormalize_ab(color.normalize_ab(ab)), ab)
    assert color.normalize_l(50.0) == 0.0
