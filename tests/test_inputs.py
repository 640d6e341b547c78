"""Every input a user can give (issue 12): image modes, damaged and odd files, outputs, checkpoints.

Each case gives the right result or a one-line error naming the file; nothing written is lost.
"""
import io
import os
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from minicolor import backend, cli, colorize, images
from minicolor.activations import network_size
from minicolor.data import ImageFolder
from minicolor.evaluate import format_table
from minicolor.models import ColorizationNet
from minicolor.checkpoint import save_weights


def write_png(path, array, bit_depth, color_type, width=None, height=None):
    """A PNG written by hand (PIL cannot write 16-bit RGB); with width and height and no
    array, a header-only file that claims that size."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    if array is not None:
        height, width = array.shape[:2]
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    body = b""
    if array is not None:
        raw = array.astype(">u2" if bit_depth == 16 else np.uint8).reshape(height, -1)
        body = chunk(b"IDAT", zlib.compress(b"".join(b"\0" + row.tobytes() for row in raw)))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + body + chunk(b"IEND", b""))
    return path


@pytest.fixture
def weights(tmp_path):
    return save_weights(tmp_path / "w.npz", ColorizationNet(2, seed=3))


@pytest.fixture
def gray16(rng):
    return rng.integers(0, 65536, (20, 28)).astype(np.uint16)


# --- every mode ------------------------------------------------------------------------------
def expected8(values16):
    return np.round(values16.astype(np.float64) * 255 / 65535).astype(np.uint8)


def test_16_bit_gray_is_scaled_not_clipped(tmp_path, gray16):
    path = tmp_path / "g16.png"
    Image.fromarray(gray16).save(path)
    assert Image.open(path).mode == "I;16"
    rgb = images.load_rgb(path)
    assert rgb.shape == (20, 28, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[..., 1], expected8(gray16))


def test_integer_and_float_gray(tmp_path, gray16):
    Image.fromarray(gray16.astype(np.int32)).save(tmp_path / "i.tif")  # mode I, 16-bit data
    np.testing.assert_array_equal(images.load_rgb(tmp_path / "i.tif")[..., 0], expected8(gray16))
    small = (gray16 // 257).astype(np.int32)  # mode I holding 8-bit values
    Image.fromarray(small).save(tmp_path / "i8.tif")
    np.testing.assert_array_equal(images.load_rgb(tmp_path / "i8.tif")[..., 0], small)
    unit = gray16.astype(np.float32) / 65535  # mode F in 0..1
    Image.fromarray(unit).save(tmp_path / "f.tif")
    assert Image.open(tmp_path / "f.tif").mode == "F"
    got = images.load_rgb(tmp_path / "f.tif")[..., 2].astype(int)
    assert np.abs(got - expected8(gray16)).max() <= 1


def test_16_bit_rgb_png(tmp_path, rng):
    rgb16 = rng.integers(0, 65536, (9, 7, 3)).astype(np.uint16)
    path = write_png(tmp_path / "rgb16.png", rgb16, 16, 2)
    got = images.load_rgb(path).astype(int)
    assert got.shape == (9, 7, 3) and np.abs(got - expected8(rgb16)).max() <= 1


def test_alpha_palette_cmyk_bilevel(tmp_path, rng):
    la = np.zeros((6, 8, 2), np.uint8)
    la[..., 0], la[:3, :, 1] = 40, 255  # top half opaque dark gray, bottom half transparent
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    got = images.load_rgb(tmp_path / "la.png")
    assert (got[:3] == 40).all() and (got[3:] == 255).all()

    pal = Image.new("P", (4, 4))
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.putpixel((0, 0), 1)
    pal.save(tmp_path / "p.png", transparency=0)  # index 0 (red) is transparent
    got = images.load_rgb(tmp_path / "p.png")
    assert tuple(got[0, 0]) == (0, 0, 255) and tuple(got[1, 1]) == (255, 255, 255)

    cmyk = Image.fromarray(rng.integers(0, 256, (5, 6, 4), dtype=np.uint8), "CMYK")
    cmyk.save(tmp_path / "c.tif")
    np.testing.assert_array_equal(images.load_rgb(tmp_path / "c.tif"), np.asarray(cmyk.convert("RGB")))

    bits = Image.fromarray(rng.integers(0, 2, (5, 9), dtype=np.uint8) * 255, "L").convert("1")
    bits.save(tmp_path / "b.png")
    np.testing.assert_array_equal(images.load_rgb(tmp_path / "b.png")[..., 0], np.asarray(bits.convert("L")))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(tmp_path, rng, orientation):
    exif = Image.Exif()
    exif[images.ORIENTATION] = orientation
    path = tmp_path / "phone.jpg"
    Image.fromarray(rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)).save(path, exif=exif, quality=95)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    got = images.load_rgb(path)
    assert got.shape == ((12, 20, 3) if orientation < 5 else (20, 12, 3))
    np.testing.assert_array_equal(got, expected)


def test_strip_conversion_equals_whole(tmp_path, rng):
    rgba = Image.fromarray(rng.integers(0, 256, (37, 11, 4), dtype=np.uint8), "RGBA")
    whole = images._to_rgb(rgba, strip_pixels=10**9)
    np.testing.assert_array_equal(images._to_rgb(rgba, strip_pixels=30), whole)


# --- damaged, huge, tiny, odd ----------------------------------------------------------------
def test_damaged_files_are_named(tmp_path, rng):
    good = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(good, "JPEG")
    (tmp_path / "partial.jpg").write_bytes(good.getvalue()[:len(good.getvalue()) // 2])
    good = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(good, "PNG")
    (tmp_path / "partial.png").write_bytes(good.getvalue()[:300])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not a photo")
    for name in ("partial.jpg", "partial.png", "empty.png", "text.jpg"):
        with pytest.raises(images.DataError, match=f"cannot read image .*{name}: ") as error:
            images.load_rgb(tmp_path / name)
        assert "\n" not in str(error.value)


def test_decompression_bombs_are_refused_before_decoding(tmp_path, monkeypatch):
    claims = write_png(tmp_path / "claims.png", None, 8, 0, width=13000, height=12000)  # 156 MP
    with pytest.raises(images.DataError, match="13000x12000 = 156 megapixels; minicolor reads at "
                                               "most 150 .*resize it first"):
        images.load_rgb(claims)
    bomb = write_png(tmp_path / "bomb.png", None, 8, 0, width=30000, height=30000)
    with pytest.raises(images.DataError, match="bomb.png.*decompression bomb"):
        images.load_rgb(bomb)
    monkeypatch.setattr(images, "MAX_PIXELS", 100)
    Image.new("L", (11, 10)).save(tmp_path / "small.png")
    with pytest.raises(images.DataError, match="11x10"):
        images.load_rgb(tmp_path / "small.png")


def test_jpeg_decoded_at_reduced_scale_keeps_enough_pixels(tmp_path, rng):
    path = tmp_path / "camera.jpg"
    Image.fromarray(rng.integers(0, 256, (400, 640, 3), dtype=np.uint8)).save(path)
    assert images.load_rgb(path, min_side=90).shape == (100, 160, 3)  # 1/4 scale
    assert images.load_rgb(path, min_side=300).shape == (400, 640, 3)


def test_image_folder_modes_names_and_hidden_files(tmp_path, rng, gray16):
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    Image.fromarray(gray16).save(root / "scan16.png")
    Image.fromarray(rng.integers(0, 256, (30, 20, 3), dtype=np.uint8)).save(root / "sub" / "UPPER.JPG")
    Image.fromarray(rng.integers(0, 256, (1, 1, 3), dtype=np.uint8)).save(root / "tiny 1x1 é.webp")
    (root / "._UPPER.JPG").write_bytes(b"\0\5\26\7 macOS metadata")  # hidden: passed over
    ds = ImageFolder(root, size=16)
    assert len(ds) == 3 and not ds.skipped
    l, _ = ds.batch([0, 1, 2])
    scan = [p.endswith("scan16.png") for p in ds.paths].index(True)
    assert 5 < l[scan].mean() < 95  # the 16-bit scan is not all white (issue 12, bug 2)


def test_thousands_of_files(tmp_path):
    root = tmp_path / "many"
    root.mkdir()
    for i in range(2000):
        Image.new("L", (8, 8), i % 256).save(root / f"{i:05d}.png")
    ds = ImageFolder(root, size=8)
    assert len(ds) == 2000 and ds.identity()["images"] == 2000


# --- colorize --------------------------------------------------------------------------------
def test_strips_give_the_whole_photo_result(rng):
    model = ColorizationNet(2, seed=1)
    rgb = rng.integers(0, 256, (45, 31, 3), dtype=np.uint8)
    whole = colorize.colorize_rgb(model, rgb, size=16, strip_pixels=10**9)
    for strip in (1, 31 * 7, 31 * 8 + 5):
        np.testing.assert_array_equal(colorize.colorize_rgb(model, rgb, size=16, strip_pixels=strip), whole)
    lab = colorize.predict_lab(model, rgb, size=16)
    assert lab.shape == (45, 31, 3)


def test_ab_upsampling_matches_pil_bilinear(rng):
    small = rng.standard_normal((2, 16, 12)).astype(np.float32)
    ours = colorize.upsample_ab_rows(small, 70, 50, 0, 70)
    for k in range(2):
        pil = np.asarray(Image.fromarray(small[k], "F").resize((50, 70), Image.BILINEAR))
        np.testing.assert_allclose(ours[..., k], pil, atol=1e-4)


def test_colorize_16_bit_like_its_8_bit_copy(tmp_path, weights, gray16, capsys):
    Image.fromarray(gray16).save(tmp_path / "deep.png")
    Image.fromarray(expected8(gray16)).save(tmp_path / "flat.png")
    assert cli.main(["colorize", str(tmp_path / "deep.png"), str(tmp_path / "flat.png"),
                     "-o", str(tmp_path / "out"), "--weights", str(weights), "--size", "16"]) == 0
    deep = np.asarray(Image.open(tmp_path / "out" / "deep_color.png"))
    np.testing.assert_array_equal(deep, np.asarray(Image.open(tmp_path / "out" / "flat_color.png")))


def run(argv, capsys):
    code = cli.main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def photo_file(path, rng, size=(10, 14)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, size + (3,), dtype=np.uint8)).save(path)
    return path


def test_outputs_never_overwrite(tmp_path, rng, weights, capsys):
    a, b = photo_file(tmp_path / "a" / "x.jpg", rng), photo_file(tmp_path / "b" / "x.png", rng)
    out = tmp_path / "out"
    common = ["-o", str(out), "--weights", str(weights), "--size", "16"]
    code, text, _ = run(["colorize", str(a), str(b), str(a)] + common, capsys)  # a given twice: once
    assert code == 0 and sorted(p.name for p in out.iterdir()) == ["x_color-2.png", "x_color.png"]
    assert text.count("->") == 2
    first = (out / "x_color.png").read_bytes()
    code, text, _ = run(["colorize", str(b)] + common, capsys)  # an earlier run's file is kept
    assert code == 0 and "x_color-3.png" in text and (out / "x_color.png").read_bytes() == first
    code, _, _ = run(["colorize", str(b), "--overwrite"] + common, capsys)
    assert code == 0 and (out / "x_color.png").read_bytes() != first
    assert len(list(out.iterdir())) == 3 and not list(out.glob(".*"))  # no temporary left


def test_output_file(tmp_path, rng, weights, capsys):
    photo = photo_file(tmp_path / "p.jpg", rng)
    target = tmp_path / "result.jpg"
    common = ["--weights", str(weights), "--size", "16"]
    assert run(["colorize", str(photo), "-o", str(target)] + common, capsys)[0] == 0
    assert Image.open(target).format == "JPEG" and Image.open(target).size == (14, 10)
    code, _, err = run(["colorize", str(photo), "-o", str(target)] + common, capsys)
    assert code == 1 and "result.jpg exists; --overwrite replaces it" in err
    assert run(["colorize", str(photo), "-o", str(target), "--overwrite"] + common, capsys)[0] == 0
    code, _, err = run(["colorize", str(photo), str(photo_file(tmp_path / "q.jpg", rng)), "-o",
                        str(tmp_path / "two.png")] + common, capsys)
    assert code == 1 and "names one file, but 2 photos were given" in err
    notes = tmp_path / "notes"
    notes.write_text("keep me")
    code, _, err = run(["colorize", str(photo), "-o", str(notes)] + common, capsys)
    assert code == 1 and "not a file without a suffix" in err and notes.read_text() == "keep me"


def test_unreadable_photos_are_reported_and_the_rest_colorized(tmp_path, rng, weights, capsys):
    good = [photo_file(tmp_path / f"g{i}.png", rng) for i in range(2)]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff truncated")
    code, text, err = run(["colorize", str(good[0]), str(bad), str(tmp_path / "gone.png"), str(good[1]),
                           "-o", str(tmp_path / "out"), "--weights", str(weights), "--size", "16"], capsys)
    assert code == 1 and text.count("->") == 2 and (tmp_path / "out" / "g1_color.png").exists()
    lines = err.splitlines()
    assert len(lines) == 3 and lines[2] == "minicolor colorize: 2 of 4 photos failed"
    assert "cannot read image" in lines[0] and "bad.jpg" in lines[0]
    assert "gone.png" in lines[1] and "No such file" in lines[1]


def test_folder_input_mirrors_subfolders_and_odd_names(tmp_path, rng, weights, capsys):
    root = tmp_path / "album"
    photo_file(root / "2019" / "img 001.jpg", rng)
    photo_file(root / "2020" / "img 001.jpg", rng)
    odd = os.fsdecode(b"caf\xe9 \xe2\x98\x83.png")  # Latin-1 byte in a UTF-8 name, and a snowman
    photo_file(root / odd, rng, size=(1, 1))
    code, text, err = run(["colorize", str(root), "-o", str(tmp_path / "out"), "--weights", str(weights),
                           "--size", "16"], capsys)
    assert code == 0, err
    assert (tmp_path / "out" / "2019" / "img 001_color.png").exists()
    assert (tmp_path / "out" / "2020" / "img 001_color.png").exists()
    assert Image.open(tmp_path / "out" / (odd[:-4] + "_color.png")).size == (1, 1)
    assert "caf\\xe9" in text


def test_read_only_output_folder(tmp_path, rng, weights, capsys, monkeypatch):
    photo = photo_file(tmp_path / "p.jpg", rng)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if os.geteuid() == 0:  # root writes anywhere: let the folder refuse as it would for a user
        def refuse(*args, dir=None, **kwargs):
            raise PermissionError(13, "Permission denied", str(dir))
        monkeypatch.setattr(colorize.tempfile, "TemporaryFile", refuse)
    try:
        code, text, err = run(["colorize", str(photo), "-o", str(locked / "out"), "--weights",
                               str(weights), "--size", "16"], capsys)
        assert code == 1 and "->" not in text
        assert err.strip().endswith("Permission denied") and "cannot write into the output folder" in err
        code, _, err = run(["train", str(tmp_path), "--out", str(locked / "run"), "--device", "cpu"], capsys)
        assert code == 1 and "cannot write into the output folder" in err
    finally:
        locked.chmod(0o755)


def test_full_disk_keeps_earlier_results(tmp_path, rng, weights, capsys, monkeypatch):
    photos = [photo_file(tmp_path / f"p{i}.png", rng) for i in range(2)]
    out = tmp_path / "out"
    common = ["-o", str(out), "--weights", str(weights), "--size", "16", "--overwrite"]
    assert run(["colorize", str(photos[0])] + common, capsys)[0] == 0
    before = (out / "p0_color.png").read_bytes()

    def full(self, fp, *args, **kwargs):
        open(fp, "wb").write(b"half a pic")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full)
    code, _, err = run(["colorize", *map(str, photos)] + common, capsys)
    assert code == 1 and err.count("No space left on device") == 2 and "2 of 2 photos failed" in err
    assert (out / "p0_color.png").read_bytes() == before
    assert [p.name for p in out.iterdir()] == ["p0_color.png"]


def test_device_auto_everywhere(tmp_path, rng, weights, capsys):
    photo = photo_file(tmp_path / "p.jpg", rng, size=(16, 24))
    for argv in (["colorize", str(photo), "-o", str(tmp_path / "c")],
                 ["evaluate", str(photo)],
                 ["activations", str(photo), "-o", str(tmp_path / "a.png")]):
        code, _, err = run(argv + ["--weights", str(weights), "--size", "16", "--device", "auto"], capsys)
        assert code == 0, err
    for command in ("overfit", "train", "colorize", "evaluate", "activations", "bench"):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        assert "(default auto)" in " ".join(capsys.readouterr().out.split())


@pytest.mark.skipif(backend.cuda_available(), reason="needs a machine without a GPU")
def test_train_on_missing_gpu_fails_before_reading_data(tmp_path, capsys):
    code, _, err = run(["train", str(tmp_path / "no such folder"), "--device", "cuda"], capsys)
    assert code == 1 and "device 'cuda' needs CuPy" in err and "image folder" not in err


# --- checkpoints and weights -----------------------------------------------------------------
def small_folder(root, rng, n=3):
    for i in range(n):
        photo_file(root / f"p{i}.png", rng, size=(24, 28))
    return root


def train(folder, out, capsys, *extra):
    return run(["train", str(folder), "--size", "16", "--batch-size", "2", "--width", "2", "--quiet",
                "--out", str(out), "--device", "cpu", "--val-every", "0", "--sample-every", "0", *extra],
               capsys)


def test_damaged_weights_and_checkpoints_are_one_line_errors(tmp_path, rng, capsys):
    folder = small_folder(tmp_path / "photos", rng)
    code, _, _ = train(folder, tmp_path / "run", capsys, "--steps", "2")
    assert code == 0
    whole = (tmp_path / "run" / "checkpoint.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(whole[: len(whole) // 2])
    np.save(tmp_path / "gray_scale.npy", np.zeros((2, 4, 4), np.uint8))
    np.savez(tmp_path / "foreign.npz", x=np.zeros(3))
    photo = photo_file(tmp_path / "p.jpg", rng)
    for bad, what in (("cut.npz", "truncated or damaged"), ("gray_scale.npy", "one array of shape (2, 4, 4)"),
                      ("foreign.npz", "not written by minicolor")):
        for argv in (["colorize", str(photo), "--weights", str(tmp_path / bad)],
                     ["train", str(folder), "--resume", str(tmp_path / bad), "--device", "cpu"]):
            code, _, err = run(argv, capsys)
            assert code == 1 and bad in err and what in err and "expected a checkpoint.npz" in err
            assert len(err.strip().splitlines()) == 1


def test_resume_from_weights_past_steps_and_on_other_data(tmp_path, rng, capsys):
    folder = small_folder(tmp_path / "photos", rng)
    out = tmp_path / "run"
    code, text, _ = train(folder, out, capsys, "--steps", "4", "--val-fraction", "0.5")
    assert code == 0 and "1 training image, 2 held out" in text  # not "1 training images"
    code, text, _ = train(folder, tmp_path / "from_weights", capsys, "--steps", "2",
                          "--resume", str(out / "weights.npz"))
    assert code == 0 and "holds weights only" in text and "at step 0 with a fresh optimizer" in text
    assert "done: step 2" in text
    code, text, _ = train(folder, out, capsys, "--steps", "3", "--resume", str(out / "checkpoint.npz"),
                          "--val-fraction", "0.5")
    assert code == 0 and "already at step 4, at or past --steps 3: nothing to train" in text
    assert "done: step 4" in text
    code, _, err = train(folder, out, capsys, "--steps", "5", "--resume", str(out / "checkpoint.npz"),
                         "--val-fraction", "0.5", "--width", "4")
    assert code == 1 and "give --width 2 --head regression" in err
    photo_file(folder / "p9.png", rng, size=(24, 28))  # a photo more: another data set
    code, text, err = train(folder, out, capsys, "--steps", "5", "--resume", str(out / "checkpoint.npz"),
                            "--val-fraction", "0.5")
    assert code == 0 and "done: step 5" in text
    assert "warning: checkpoint" in err and "was trained on other data (folder, 1 training images)" in err


# --- smaller items -------------------------------------------------------------------------------
def test_evaluate_table_keeps_long_names_aligned():
    row = dict(auc=0.9, auc_gray=0.8, psnr=25.0, psnr_gray=22.0, colorfulness=10.0,
               colorfulness_gray=0.0, colorfulness_truth=30.0)
    table = format_table({"a": row, "a_very_long_photo_name_from_a_camera": row, "mean": row})
    rows = [line for line in table.splitlines() if not line.startswith("-")]
    assert len({len(line) for line in rows}) == 1
    assert len({line.index("0.900") for line in rows[1:]}) == 1


def test_activations_keep_the_aspect_ratio(tmp_path, rng, weights, capsys, monkeypatch):
    assert network_size(300, 200, 224) == (224, 152) and network_size(10, 1000, 64) == (8, 64)
    seen = []
    monkeypatch.setattr("minicolor.activations.save_activation_grid",
                        lambda path, model, l, seed: seen.append(l.shape) or {})
    photo = photo_file(tmp_path / "wide.jpg", rng, size=(30, 90))
    assert cli.main(["activations", str(photo), "--weights", str(weights), "--size", "48",
                     "-o", str(tmp_path / "a.png")]) == 0
    assert seen == [(16, 48)]


ROOT = Path(__file__).resolve().parents[1]


def test_eval_extra_installs_what_evaluate_standard_needs():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    root = ROOT
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert {req.split(">")[0] for req in extras["eval"]} >= {"scikit-image", "scikit-learn"}
    assert 'pip install ".[eval]"' in (root / "README.md").read_text()


def test_docs_speak_to_readers_not_to_the_issue_tracker():
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        assert not re.search(r"\b(the )?(targets|goals?) of issue \d", page.read_text()), page.name


def test_bench_without_torch_says_why(monkeypatch, capsys):
    from minicolor.tools import bench

    monkeypatch.setattr(bench, "torch_available", lambda: False)
    assert cli.main(["bench", "--size", "16", "--widths", "2", "--batches", "1", "--layer-batch", "1",
                     "--overfit-steps", "0", "--repeat", "1", "--warmup", "0", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "PyTorch is not installed" in out and "ratio" not in out.split("compare)")[1]
