"""What a new user meets first: the simulator's limit, progress, short runs, messages, outputs."""
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from minicolor import __version__, backend, cli, sim, train
from minicolor.checkpoint import save_weights
from minicolor.models import ColorizationNet
from minicolor.overfit import overfit

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def photo(tmp_path, rng):
    path = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 256, (20, 28, 3), dtype=np.uint8)).save(path)
    return path


def run(argv, capsys):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


# --- the simulator ---------------------------------------------------------------------------------
@pytest.fixture
def sim_without_the_simulator(monkeypatch):
    """--device sim accepted without switching this process to the simulator: what is tested
    here is refused before any kernel runs."""
    monkeypatch.setattr(backend, "check_device", lambda device: device)


def test_sim_limit_says_why_and_what_fits():
    fits = sim.max_size(2)
    assert fits % 8 == 0
    if fits:
        sim.check(2, fits)
    with pytest.raises(ValueError) as refused:
        sim.check(2, fits + 8)
    message = str(refused.value)
    assert "runs every CUDA thread as a Python thread" in message and "--device cpu" in message
    assert (f"At width 2, --size {fits} fits" if fits else "No --size fits at width 2") in message
    too_wide = int(sim.REFERENCE_WIDTH * sim.SIM_MAX_SIZE / 8) + 1  # not even size 8 fits
    with pytest.raises(ValueError, match=f"No --size fits at width {too_wide} "):
        sim.check(too_wide, 8)
    with pytest.raises(ValueError, match="400 training steps of a width-16 network at size 224"):
        sim.check(16, 224, passes=3 * 400, what="400 training steps")


def test_sim_is_refused_above_its_limit_in_one_line(photo, tmp_path, capsys, sim_without_the_simulator):
    weights = save_weights(tmp_path / "w16.npz", ColorizationNet(16))
    code, _, err = run(["colorize", str(photo), "--weights", str(weights), "--device", "sim",
                        "-o", str(tmp_path / "out")], capsys)
    assert code == 1 and len(err.splitlines()) == 1, err
    assert "colorizing 1 photo of a width-16 network at size 224 would take the simulator about" in err
    assert not (tmp_path / "out" / "photo_color.png").exists()
    code, _, err = run(["overfit", str(photo), "--device", "sim", "--out", str(tmp_path / "o")], capsys)
    assert code == 1 and "400 training steps of a width-16 network at size 224" in err
    for command in ("colorize", "overfit", "train", "evaluate", "activations", "profile"):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        help_text = " ".join(capsys.readouterr().out.split())
        assert f"width x size <= {sim.REFERENCE_WIDTH * sim.SIM_MAX_SIZE:g} per forward pass" in help_text


def test_sim_below_its_limit_shows_progress(photo, tmp_path):
    """A real run in the simulator, in a process of its own (the simulator is process-wide)."""
    assert sim.max_size(1) >= 8
    weights = save_weights(tmp_path / "w1.npz", ColorizationNet(1))
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    done = subprocess.run([sys.executable, "-m", "minicolor.cli", "colorize", str(photo), "--weights",
                           str(weights), "--size", "8", "--device", "sim", "-o", str(tmp_path / "out")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "simulating: 100%" in done.stderr and "layer" in done.stderr
    assert Image.open(tmp_path / "out" / "photo_color.png").size == (28, 20)


# --- overfit: the main job, one bar, short runs -------------------------------------------------------
def test_the_main_job_prints_the_busy_cpu_note(monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    monkeypatch.setattr(backend, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (5.0, 5.0, 5.0))
    spec = importlib.util.spec_from_file_location("overfit_bridge", ROOT / "examples" / "overfit_bridge.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    monkeypatch.setattr(sys, "argv", ["overfit_bridge.py", "--steps", "1", "--out", str(tmp_path)])
    example.main()
    out, err = capsys.readouterr()
    assert "note: the CPU is busy (load 5.0 on 2 cores)" in err and "cores left free" in err
    assert "1 steps in" in out


def test_busy_cpu_note(monkeypatch):
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    monkeypatch.setattr(backend, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (5.0, 5.0, 5.0))
    assert train.busy_cpu_note("sim") is None  # the CUDA kernels, simulated: no BLAS threads
    fast = train.busy_cpu_note("cpu")  # the fast path: it picks its threads itself
    assert "load 5.0 on 2 cores" in fast and "cores left free" in fast and "OPENBLAS" not in fast
    backend.use_references_on_cpu(True)
    try:  # the references: advice
        assert "OPENBLAS_NUM_THREADS=1" in train.busy_cpu_note("cpu")
        monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
        assert train.busy_cpu_note("cpu") is None
        monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
        monkeypatch.setattr(os, "getloadavg", lambda: (0.5, 0.5, 0.5))
        assert train.busy_cpu_note("cpu") is None
    finally:
        backend.use_references_on_cpu(False)


def test_overfit_shows_one_bar_with_its_report_steps_marked(photo, tmp_path, monkeypatch):
    bars, written = [], []

    class Bar:
        def __init__(self, total=None, initial=0, **_):
            self.total, self.n = total, initial
            bars.append(self)

        def update(self, n):
            self.n += n

        def set_postfix(self, **_):
            pass

        @staticmethod
        def write(line, file=None):
            written.append(line)

        def close(self):
            pass

    monkeypatch.setattr(train, "tqdm", Bar)
    summary = overfit(photo, steps=25, width=2, size=16, out_dir=tmp_path, report_steps=(10, 20, 40))
    assert [(bar.total, bar.n) for bar in bars] == [(25, 25)]
    assert [line.split(":")[0] for line in written] == ["step 10", "step 20", "step 25"]
    assert list(summary["losses"]) == [10, 20, 25] and all("grid" in line for line in written)


def test_a_short_overfit_reports_its_last_step_and_saves_a_grid(photo, tmp_path, capsys):
    code, out, _ = run(["overfit", str(photo), "--steps", "20", "--width", "2", "--size", "16",
                        "--out", str(tmp_path), "--quiet"], capsys)
    assert code == 0
    rows = [line.split() for line in out.splitlines() if line.startswith(" ") and line.split()[0].isdigit()]
    assert [row[0] for row in rows] == ["20"] and float(rows[0][1]) > 0
    assert (tmp_path / "bridge_step20.png").exists() and f"{tmp_path / 'bridge_step20.png'}" in out


# --- train, colorize, the command itself ----------------------------------------------------------
def test_train_prints_the_validation_loss(tmp_path, rng, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (24, 28, 3), dtype=np.uint8)).save(folder / f"p{i}.png")
    code, out, _ = run(["train", str(folder), "--size", "16", "--steps", "4", "--batch-size", "2",
                        "--width", "2", "--out", str(tmp_path / "run"), "--quiet", "--device", "cpu",
                        "--val-every", "2", "--val-fraction", "0.25"], capsys)
    assert code == 0
    assert "step 2: validation loss" in out and "step 4: validation loss" in out


def test_colorize_writes_png_or_jpeg_and_refuses_other_formats(photo, tmp_path, capsys):
    weights = save_weights(tmp_path / "w.npz", ColorizationNet(2))
    common = ["--weights", str(weights), "--size", "16"]
    code, _, err = run(["colorize", str(photo), "-o", str(tmp_path / "cat.gif"), *common], capsys)
    assert code == 1 and "results are written as .png or .jpg (or .jpeg), not .gif" in err
    assert not (tmp_path / "cat.gif").exists()
    for name in ("cat.png", "cat.jpg", "cat.jpeg"):
        assert run(["colorize", str(photo), "-o", str(tmp_path / name), *common], capsys)[0] == 0
        assert Image.open(tmp_path / name).format in ("PNG", "JPEG")


def test_help_is_plain_text_and_there_is_a_version(capsys):
    commands = [[]] + [[name] for name in cli.build_parser()._subparsers._group_actions[0].choices]
    for command in commands:
        with pytest.raises(SystemExit):
            cli.main(command + ["--help"])
        text = capsys.readouterr().out
        assert "``" not in text, command
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"minicolor {__version__}"


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(),
                    reason="needs git and a checkout")
def test_gitignore_covers_what_the_commands_write_by_default():
    parser = cli.build_parser()
    outputs = []
    for name, sub in parser._subparsers._group_actions[0].choices.items():
        for action in sub._actions:
            if action.dest in ("out", "output") and action.default:
                outputs.append(action.default)
    assert {"colorized", "activations.png", "runs/overfit", "runs/train"} <= set(outputs)
    for default in outputs:
        path = default if default.endswith(".png") else f"{default}/result.png"
        done = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=ROOT)
        assert done.returncode == 0, f"{path} (the default output of a command) is not in .gitignore"


def test_flip_averages_a_photo_with_its_mirror_image():
    from minicolor.models import ColorizationNet

    model = ColorizationNet(2, seed=3)
    l = np.random.default_rng(0).uniform(0, 100, (2, 16, 24)).astype(np.float32)
    plain, mirrored = model.predict_ab(l), model.predict_ab(l[..., ::-1])[..., ::-1]
    np.testing.assert_allclose(model.predict_ab(l, flip=True), (plain + mirrored) / 2, rtol=1e-5, atol=1e-4)
    model.flip = True  # what `--flip` sets: the default of predict_ab
    np.testing.assert_allclose(model.predict_ab(l), (plain + mirrored) / 2, rtol=1e-5, atol=1e-4)
    assert not np.allclose(plain, mirrored, atol=1e-3)  # the photo and its mirror image differ
