"""The minicolor command, each subcommand on tiny inputs."""
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from minicolor import cli, colorize
from test_data import write_kaggle


@pytest.fixture
def photo(tmp_path, rng):
    path = tmp_path / "photo.jpg"
    Image.fromarray(rng.integers(0, 256, (30, 44, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def folder(photo, tmp_path):
    """Three photos: the test photo turned by 0, 90 and 180 degrees."""
    path = tmp_path / "photos"
    path.mkdir()
    for i in range(3):
        Image.open(photo).rotate(90 * i, expand=True).save(path / f"p{i}.jpg")
    return path


@pytest.mark.parametrize("command", ["overfit", "train", "colorize"])
def test_help_explains_every_option(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "--device" in text and "default" in text


def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "minicolor.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "overfit" in out.stdout


def test_overfit(photo, tmp_path, capsys):
    assert cli.main(["overfit", str(photo), "--steps", "2", "--size", "16", "--width", "2",
                     "--out", str(tmp_path / "o"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "floor of x4 bilinear upsampling" in out and "2 steps in" in out
    assert (tmp_path / "o" / "loss.png").exists()


def test_train_folder_then_colorize(photo, folder, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", str(folder), "--size", "16", "--steps", "3", "--batch-size", "2",
                     "--width", "2", "--out", str(out), "--quiet", "--device", "cpu",
                     "--val-every", "3", "--sample-every", "3"]) == 0
    assert "done: step 3" in capsys.readouterr().out
    assert cli.main(["colorize", str(photo), "-o", str(tmp_path / "c"), "--weights",
                     str(out / "weights.npz"), "--size", "16"]) == 0
    result = Image.open(tmp_path / "c" / "photo_color.png")
    assert result.size == (44, 30) and result.mode == "RGB"
    # resume to a later step from the checkpoint
    assert cli.main(["train", str(folder), "--size", "16", "--steps", "4", "--batch-size", "2",
                     "--width", "2", "--out", str(out), "--quiet", "--device", "cpu",
                     "--resume", str(out / "checkpoint.npz")]) == 0
    assert "resumed from" in capsys.readouterr().out


def test_train_kaggle(tmp_path, capsys):
    write_kaggle(tmp_path / "kaggle", counts=(2, 2, 1), size=16)
    assert cli.main(["train", str(tmp_path / "kaggle"), "--format", "kaggle", "--steps", "2",
                     "--batch-size", "2", "--width", "2", "--out", str(tmp_path / "run"),
                     "--quiet", "--device", "cpu"]) == 0
    assert "4 training images, 1 held out" in capsys.readouterr().out


def test_errors_are_one_line(tmp_path, photo, capsys, monkeypatch):
    assert cli.main(["train", str(tmp_path / "nothing"), "--quiet"]) == 1
    assert "image folder" in capsys.readouterr().err
    assert cli.main(["colorize", str(photo), "--weights", str(tmp_path / "none.npz")]) == 1
    assert "no checkpoint or weights file" in capsys.readouterr().err
    monkeypatch.setattr(colorize, "WEIGHTS_DIR", tmp_path / "empty")
    with pytest.raises(SystemExit, match="no --weights given"):
        cli.main(["colorize", str(photo)])
    with pytest.raises(SystemExit):
        cli.main(["overfit", str(photo), "--size", "12"])
    assert "multiple of 8" in capsys.readouterr().err


def test_train_classification_then_evaluate(photo, folder, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", str(folder), "--head", "classification", "--size", "16", "--steps", "2",
                     "--batch-size", "2", "--width", "2", "--out", str(out), "--quiet",
                     "--device", "cpu"]) == 0
    capsys.readouterr()
    import json

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r["cross_entropy"] > 0 for r in records if "loss" in r)
    assert cli.main(["evaluate", str(photo), "--weights", str(out / "weights.npz"), "--size", "16",
                     "--json", str(tmp_path / "eval.json")]) == 0
    table = capsys.readouterr().out
    assert "AuC" in table and "photo" in table and "mean" in table
    metrics = json.loads((tmp_path / "eval.json").read_text())["photo"]
    assert 0 <= metrics["auc"] <= 1 and metrics["colorfulness_gray"] < 0.05


def test_summary(capsys):
    assert cli.main(["summary", "--width", "16", "--size", "224"]) == 0
    out = capsys.readouterr().out
    assert "1,955,026" in out and "group5.0" in out and "(1, 128, 28, 28)" in out


def test_activations_figure(photo, tmp_path, capsys):
    from minicolor.models import ColorizationNet
    from minicolor.checkpoint import save_weights

    weights = save_weights(tmp_path / "w.npz", ColorizationNet(2))
    figure = tmp_path / "fig" / "act.png"
    assert cli.main(["activations", str(photo), "--weights", str(weights), "-o", str(figure),
                     "--size", "32", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "group1.0 kernel" in out and "group8.5 kernel" in out
    assert Image.open(figure).size[1] > 500  # eight rows


def test_bench_smoke(tmp_path, capsys):
    """The benchmark on tiny sizes: every section prints, the JSON holds the numbers."""
    import json

    path = tmp_path / "bench.json"
    assert cli.main(["bench", "--size", "16", "--widths", "2", "--batches", "1", "2",
                     "--layer-batch", "1", "--overfit-steps", "2", "--repeat", "1", "--warmup", "0",
                     "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "step  width   2 batch   1" in out and "grad-weight" in out and "overfit 2 steps" in out
    results = json.loads(path.read_text())
    assert [r["batch"] for r in results["steps"]] == [1, 2]
    assert all(r["minicolor_s"] > 0 and r["flops"] > 0 for r in results["steps"])
    assert {r["pass"] for r in results["layers"]} == {"forward", "grad-input", "grad-weight"}
    assert results["overfit"]["steps"] == 2 and results["machine"]["cores"] >= 1
    if "torch" in results["machine"]:
        assert "ratio" in out and all("torch_s" in r for r in results["steps"])
