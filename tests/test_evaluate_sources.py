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
    keys = ("auc", "auc_gray", "psnr", "psnr_gray", "colorfulness", "colorfulness_gray", "colorfulness_truth")
    results = {"x": dict.fromkeys(keys, 1.0), "y": dict.fromkeys(keys, 3.0), "z": dict.fromkeys(keys, 5.0)}
    results["mean"] = dict.fromkeys(keys, 3.0)
    groups = by_source(results, {"x": "one", "y": "a-much-longer-source-name", "z": "one"})
    assert groups["one"]["n"] == 2 and groups["one"]["auc"] == 3.0
    assert groups["all"]["n"] == 3 and groups["all"]["psnr"] == 3.0
    assert list(groups) == ["a-much-longer-source-name", "one", "all"]
    lines = [line for line in format_sources(groups).splitlines() if not line.startswith("-")]
    ends = {len(line) for line in lines}
    assert len(ends) == 1  # every row as long as the header: the long name did not push columns
    assert all(line.split()[-1] == "1.00" for line in lines[1:])  # colorfulness / truth


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
