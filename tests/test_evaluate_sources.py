"""minicolor evaluate on folders and lists: photos found, grouped by source, tabled."""
import json

import numpy as np
import pytest
from PIL import Image

from minicolor import cli
from minicolor.evaluate import by_source, find_photos, format_sources
from minicolor.models import ColorizationNet
from minicolor.checkpoint import save_weights


@pytest.fixture
def corpus(tmp_path, rng):
    """corpus/<source>/<name>.jpg: two sources, three photos."""
    root = tmp_path / "corpus"
    for source, name in [("a-very-long-package-name-indeed", "p1"), ("short", "p2"), ("short", "p3")]:
        (root / source).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(root / source / f"{name}.jpg")
    return root


def test_find_photos_in_folders_lists_and_files(corpus, tmp_path):
    found = find_photos([corpus])
    assert sorted(found) == ["a-very-long-package-name-indeed/p1", "short/p2", "short/p3"]
    assert found["short/p3"] == (corpus / "short" / "p3.jpg", "short")
    listing = tmp_path / "list.txt"
    listing.write_text("# held out\nshort/p2.jpg\n\na-very-long-package-name-indeed/p1\n")
    found = find_photos([listing], root=corpus)
    long_name = "a-very-long-package-name-indeed"
    assert {k: v[1] for k, v in found.items()} == {"short/p2": "short", f"{long_name}/p1": long_name}
    assert find_photos([corpus / "short" / "p2.jpg"]) == {"p2": (corpus / "short" / "p2.jpg", "")}
    listing.write_text("short/missing.jpg\n")
    with pytest.raises(FileNotFoundError, match="missing"):
        find_photos([listing], root=corpus)


def test_by_source_means_and_table_alignment():
    keys = ("auc", "auc_gray", "psnr", "psnr_gray", "colorfulness", "colorfulness_gray", "colorfulness_truth",
            "wash", "wash_gray")
    results = {"x": dict.fromkeys(keys, 1.0), "y": dict.fromkeys(keys, 3.0), "z": dict.fromkeys(keys, 5.0)}
    results["mean"] = dict.fromkeys(keys, 3.0)
    groups = by_source(results, {"x": "one", "y": "a-much-longer-source-name", "z": "one"})
    assert groups["one"]["n"] == 2 and groups["one"]["auc"] == 3.0
    assert groups["all"]["n"] == 3 and groups["all"]["psnr"] == 3.0
    assert list(groups) == ["a-much-longer-source-name", "one", "all"]
    lines = [line for line in format_sources(groups).splitlines() if not line.startswith("-")]
    ends = {len(line) for line in lines}
    assert len(ends) == 1  # every row as long as the header: the long name did not push columns
    assert all(line.split()[-2] == "1.00" for line in lines[1:])  # colorfulness / truth
    assert [line.split()[-1] for line in lines[1:]] == ["3.0", "3.0", "3.0"]  # the wash


def test_cli_evaluates_a_folder_by_source(corpus, tmp_path, capsys):
    weights = save_weights(tmp_path / "w.npz", ColorizationNet(2))
    out = tmp_path / "eval.json"
    assert cli.main(["evaluate", str(corpus), "--weights", str(weights), "--size", "16",
                     "--sources-only", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "a-very-long-package-name-indeed" in table and "all" in table and "short/p2" not in table
    numbers = json.loads(out.read_text())
    assert numbers["sources"]["short"]["n"] == 2 and numbers["sources"]["all"]["n"] == 3
    assert 0 <= numbers["short/p2"]["auc"] <= 1


# --- the wash, and photos that are already gray ----------------------------------------------------
class ConstantAb:
    """A stand-in model that predicts the same ab everywhere (in Lab units)."""

    def __init__(self, a, b):
        self.ab = (a, b)

    def predict_ab(self, l):
        out = np.empty((len(l), 2, *l.shape[1:]), np.float32)
        out[:, 0], out[:, 1] = self.ab
        return out


def half_gray_half_red(height=16, width=32):
    rgb = np.full((height, width, 3), 128, np.uint8)
    rgb[:, width // 2:] = (220, 30, 30)
    return rgb


def test_wash_is_the_predicted_chroma_where_the_truth_is_neutral():
    from minicolor.metrics import already_gray, wash

    ab_true = np.zeros((2, 4, 6))
    ab_true[0, :, 3:] = 60.0  # right half red, left half gray
    ab_pred = np.zeros((2, 4, 6))
    ab_pred[0], ab_pred[1] = 3.0, 4.0  # chroma 5 everywhere
    ab_pred[:, :, 3:] = 50.0  # whatever is predicted where the truth has color does not count
    assert wash(ab_pred, ab_true) == 5.0
    assert wash(np.zeros_like(ab_true), ab_true) == 0.0  # gray: the baseline
    assert wash(ab_pred, np.full_like(ab_true, 40.0)) is None  # no neutral pixel
    ab_true[1, 0, 0] = 4.9  # chroma under 5: still neutral
    assert wash(ab_pred, ab_true) == 5.0
    assert already_gray(np.zeros((2, 10, 10))) and not already_gray(ab_true)
    ab_true[:] = 0
    ab_true[0, 0, 0] = 80  # one pixel in 24 (4%): a photo with colors
    assert not already_gray(ab_true)


def test_evaluate_reports_the_wash_on_a_synthetic_photo():
    from minicolor.evaluate import evaluate_rgb

    r = evaluate_rgb(ConstantAb(3.0, 4.0), half_gray_half_red(), size=16)
    assert r["wash"] == pytest.approx(5.0, abs=1e-4) and r["wash_gray"] == 0.0
    assert not r["already_gray"]
    r = evaluate_rgb(ConstantAb(0.0, 0.0), half_gray_half_red(), size=16)
    assert r["wash"] == pytest.approx(0.0, abs=1e-4)


def test_photos_already_gray_are_left_out_of_the_means():
    from minicolor.evaluate import evaluate, format_table, notes

    gray = np.repeat(np.linspace(0, 255, 16 * 32).reshape(16, 32, 1), 3, axis=2).astype(np.uint8)
    results = evaluate(ConstantAb(3.0, 4.0), {"old_photo": gray, "red": half_gray_half_red()}, size=16)
    assert results["old_photo"]["already_gray"] and results["old_photo"]["psnr_gray"] > 90
    assert results["mean"] == {k: v for k, v in results["red"].items() if k != "already_gray"}
    table, said = format_table(results), notes(results)
    assert "old_photo (gray)" in table
    assert "left out of the means, already gray" in said and "old_photo" in said
    groups = by_source(results, {"old_photo": "scans", "red": "camera"})
    assert "scans" not in groups and groups["all"]["n"] == 1
    only_gray = evaluate(ConstantAb(3.0, 4.0), {"old_photo": gray}, size=16)
    assert only_gray["mean"] is None and "every photo is already gray" in format_table(only_gray)


def test_cli_says_which_photos_were_already_gray(corpus, tmp_path, capsys):
    gray = np.repeat(np.arange(24 * 32).reshape(24, 32, 1) % 256, 3, axis=2).astype(np.uint8)
    Image.fromarray(gray).save(corpus / "short" / "scan.png")
    weights = save_weights(tmp_path / "w.npz", ColorizationNet(2))
    out = tmp_path / "eval.json"
    assert cli.main(["evaluate", str(corpus), "--weights", str(weights), "--size", "16",
                     "--sources-only", "--json", str(out)]) == 0
    said = capsys.readouterr().out
    assert "already gray (under 1% of pixels with |ab| >= 5): short/scan" in said
    numbers = json.loads(out.read_text())
    assert numbers["sources"]["short"]["n"] == 2 and numbers["sources"]["all"]["n"] == 3
    assert numbers["short/scan"]["already_gray"] and not numbers["short/p2"]["already_gray"]
