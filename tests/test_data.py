import numpy as np
import pytest
from PIL import Image

from minicolor.data import (DataError, ImageFolder, KaggleColorization, Subset, batch_indices,
                            split)


def write_kaggle(root, counts=(3, 2, 1), size=8, l_count=None, ab_dtype=np.uint8, seed=0):
    rng = np.random.default_rng(seed)
    (root / "l").mkdir(parents=True)
    (root / "ab" / "ab").mkdir(parents=True)
    n = sum(counts) if l_count is None else l_count
    l = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
    np.save(root / "l" / "gray_scale.npy", l)
    abs_ = []
    for i, c in enumerate(counts, 1):
        ab = rng.integers(0, 256, (c, size, size, 2)).astype(ab_dtype)
        np.save(root / "ab" / "ab" / f"ab{i}.npy", ab)
        abs_.append(ab)
    return l, np.concatenate(abs_) if abs_ else None


def test_kaggle_layout_pairs_l_with_the_right_ab(tmp_path):
    l, ab = write_kaggle(tmp_path)
    ds = KaggleColorization(tmp_path)
    assert len(ds) == 6
    got_l, got_ab = ds.batch([5, 0, 3])
    np.testing.assert_allclose(got_l, l[[5, 0, 3]].astype(float) * 100 / 255, rtol=1e-6)
    np.testing.assert_array_equal(got_ab, np.moveaxis(ab[[5, 0, 3]], -1, 1).astype(np.float32) - 128)
    assert got_l.dtype == got_ab.dtype == np.float32
    assert isinstance(ds.l, np.memmap)
    assert len(KaggleColorization(tmp_path, limit=4)) == 4


def test_kaggle_missing_file(tmp_path):
    write_kaggle(tmp_path)
    (tmp_path / "ab" / "ab" / "ab2.npy").unlink()
    with pytest.raises(DataError, match="missing ab2.npy under"):
        KaggleColorization(tmp_path)


def test_kaggle_count_mismatch(tmp_path):
    write_kaggle(tmp_path, l_count=7)
    message = "gray_scale.npy holds 7 images but the ab files hold 3 \\+ 2 \\+ 1 = 6"
    with pytest.raises(DataError, match=message):
        KaggleColorization(tmp_path)


def test_kaggle_wrong_dtype(tmp_path):
    write_kaggle(tmp_path, ab_dtype=np.float32)
    with pytest.raises(DataError, match="ab1.npy has dtype float32; expected uint8"):
        KaggleColorization(tmp_path)


def test_kaggle_wrong_shape(tmp_path):
    write_kaggle(tmp_path)
    np.save(tmp_path / "ab" / "ab" / "ab3.npy", np.zeros((1, 8, 9, 2), np.uint8))
    with pytest.raises(DataError, match=r"ab3.npy has shape \(1, 8, 9, 2\); expected \(n, 8, 8, 2\)"):
        KaggleColorization(tmp_path)


def test_kaggle_not_a_directory(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        KaggleColorization(tmp_path / "nope")


def make_folder(root, rng):
    root.mkdir(exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(root / "rgb.jpg")
    Image.fromarray(rng.integers(0, 256, (50, 30), dtype=np.uint8), "L").save(root / "gray.png")
    rgba = rng.integers(0, 256, (32, 32, 4), dtype=np.uint8)
    rgba[..., 3] = 0  # fully transparent: composited on white
    Image.fromarray(rgba, "RGBA").save(root / "rgba.png")
    (root / "notes.txt").write_text("not an image")


def test_image_folder_handles_rgb_gray_rgba(tmp_path, rng):
    make_folder(tmp_path, rng)
    ds = ImageFolder(tmp_path, size=16)
    assert len(ds) == 3
    l, ab = ds.batch([0, 1, 2])
    assert l.shape == (3, 16, 16) and ab.shape == (3, 2, 16, 16)
    names = [p.split("/")[-1] for p in ds.paths]
    gray = names.index("gray.png")
    assert np.abs(ab[gray]).max() < 0.01  # a gray photo has (almost: rounded constants) no color
    white = names.index("rgba.png")
    np.testing.assert_allclose(l[white], 100, atol=1e-3)


def test_image_folder_crops_and_flips_deterministically(tmp_path, rng):
    make_folder(tmp_path, rng)
    ds = ImageFolder(tmp_path, size=16, resize=24)
    a = ds.batch([0, 1], np.random.default_rng(5))
    b = ds.batch([0, 1], np.random.default_rng(5))
    np.testing.assert_array_equal(a[0], b[0])
    center = ds.batch([0, 1])
    assert not np.array_equal(a[0], center[0]) or not np.array_equal(a[1], center[1])


def test_zoomed_crops(tmp_path, rng):
    make_folder(tmp_path, rng)
    ds = ImageFolder(tmp_path, size=8, resize=30, zoom=(2.0, 3.0))
    l, ab = ds.batch([0, 1, 2], np.random.default_rng(1))
    assert l.shape == (3, 8, 8) and ab.shape == (3, 2, 8, 8)
    with pytest.raises(ValueError, match="zoom must be"):
        ImageFolder(tmp_path, size=8, zoom=(0.5, 1.0))


def test_unreadable_image_is_named(tmp_path, rng):
    make_folder(tmp_path, rng)
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(DataError, match="cannot read image .*broken.jpg"):
        ImageFolder(tmp_path, size=16)
    with pytest.warns(UserWarning, match="skipping .*broken.jpg"):
        ds = ImageFolder(tmp_path, size=16, on_error="skip")
    assert len(ds) == 3 and ds.skipped[0].endswith("broken.jpg")


def test_empty_folder(tmp_path):
    with pytest.raises(DataError, match="no readable images"):
        ImageFolder(tmp_path, size=16)


def test_batch_indices_is_a_seeded_epoch_order():
    steps = [batch_indices(10, 4, k, seed=3) for k in range(5)]
    flat = np.concatenate(steps)
    assert sorted(flat[:10]) == list(range(10))  # epoch 0 visits every image once
    assert sorted(flat[10:20]) == list(range(10))
    np.testing.assert_array_equal(batch_indices(10, 4, 2, seed=3), steps[2])
    assert not np.array_equal(flat[:10], flat[10:20])
    np.testing.assert_array_equal(batch_indices(5, 2, 1, shuffle=False), [2, 3])


def test_split_holds_out_whole_images():
    ds = Subset(list(range(20)), np.arange(20))
    train, val = split(ds, 0.25, seed=1)
    assert len(train) == 15 and len(val) == 5
    assert not set(train.indices) & set(val.indices)
    train2, val2 = split(ds, 0.25, seed=1)
    np.testing.assert_array_equal(val.indices, val2.indices)


def test_identity_tells_data_sets_apart(tmp_path, rng):
    import shutil

    write_kaggle(tmp_path / "k")
    assert KaggleColorization(tmp_path / "k").identity() == KaggleColorization(tmp_path / "k").identity()
    assert KaggleColorization(tmp_path / "k", limit=4).identity()["hash"] != \
        KaggleColorization(tmp_path / "k").identity()["hash"]
    make_folder(tmp_path / "a", rng)
    first = ImageFolder(tmp_path / "a", size=16).identity()
    shutil.copytree(tmp_path / "a", tmp_path / "copy")
    assert ImageFolder(tmp_path / "copy", size=16).identity() == first  # moved or copied: the same
    Image.new("RGB", (20, 20)).save(tmp_path / "copy" / "more.png")
    changed = ImageFolder(tmp_path / "copy", size=16).identity()
    assert changed["hash"] != first["hash"] and changed["images"] == first["images"] + 1
    train, val = split(ImageFolder(tmp_path / "a", size=16), 0.34, seed=0)
    assert train.identity()["images"] == 2 and train.identity()["hash"] != val.identity()["hash"]
