"""``minicolor.kernels`` imports, and ``minicolor kernels`` runs, every way the code is run.

The kernels live in the top-level ``kernels/`` folder; ``minicolor/kernels`` is a symlink to
it (committed to git), so the package is whole in a bare checkout, in an editable install, and
in a wheel (setuptools copies the files through the link when it builds one). Each case runs
from the root of a copy of the repository, where the checkout's own ``minicolor/`` is the first
thing Python finds: that is where a ``package-dir`` mapping used to fail after a plain
``pip install .``.

Each case gets a fresh virtual environment without minicolor, which borrows this
environment's packages (NumPy, Numba, pip, setuptools) through a .pth file, so nothing is
compiled, and nothing downloaded where this environment's setuptools can build a wheel.
"""
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIP = {".git", ".venv", "venv", "data", "runs", "out", "build", "dist", ".pytest_cache",
        ".hypothesis", "wheels", "__pycache__"}

# One conv forward on Numba's CUDA simulator against the NumPy reference.
SIM_CHECK = """
import numpy as np
from minicolor import backend
backend.check_device("sim")
from minicolor.kernels import conv2d as kernel
from minicolor.reference import conv2d as reference
rng = np.random.default_rng(0)
x = rng.standard_normal((1, 2, 5, 6))
w = rng.standard_normal((3, 2, 3, 3))
geometry = ((1, 1), (1, 1), (1, 1))
got = kernel.forward(x, w, None, *geometry)[0]
want = reference.forward(x, w, None, *geometry)[0]
assert np.allclose(got, want, rtol=1e-10, atol=1e-12), abs(got - want).max()
print("sim ok", kernel.__file__)
"""


def _copy_of_the_checkout(dest):
    shutil.copytree(ROOT, dest, symlinks=True,
                    ignore=lambda folder, names: [n for n in names if n in SKIP or n.endswith(".egg-info")])
    return dest


def _bare_venv(path):
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    python = path / "bin" / "python"
    own = subprocess.run([str(python), "-c", "import site; print(site.getsitepackages()[0])"],
                         capture_output=True, text=True, check=True).stdout.strip()
    # a plain path line: this environment's packages become importable, its .pth files (and so
    # its own install of minicolor) are not processed
    Path(own, "borrowed.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return python


def _build_isolation():
    """pip's flag for building minicolor: this environment's setuptools where it can build a
    wheel (70.1 and newer carry bdist_wheel; older ones need the wheel package), else pip's own
    isolated build environment (it fetches setuptools: the README's fresh venv has an old one)."""
    from importlib import metadata, util

    try:
        major, minor = (int(p) for p in metadata.version("setuptools").split(".")[:2])
    except (metadata.PackageNotFoundError, ValueError):
        return []
    return ["--no-build-isolation"] if (major, minor) >= (70, 1) or util.find_spec("wheel") else []


def _run(args, cwd, env=None):
    run = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=env, timeout=240)
    assert run.returncode == 0, f"{' '.join(map(str, args))} failed:\n{run.stdout}\n{run.stderr}"
    return run.stdout


@pytest.mark.parametrize("install", ["bare checkout", "pip install .", "pip install -e ."])
def test_kernels_import_and_run_from_the_repository_root(install, tmp_path):
    if not (ROOT / "minicolor" / "kernels").is_symlink():
        pytest.fail("minicolor/kernels should be a symlink to ../kernels")
    repo = _copy_of_the_checkout(tmp_path / "repo")
    python = _bare_venv(tmp_path / "venv")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # only what each case installs
    if install == "bare checkout":
        env["PYTHONPATH"] = str(repo)
    else:
        flags = ["-e"] if install.endswith("-e .") else []
        _run([python, "-m", "pip", "install", "-q", "--no-deps", *_build_isolation(), *flags, "."], repo)
    where = _run([python, "-c", "import minicolor.kernels as k; print(k.__file__)"], repo, env)
    if install == "pip install .":  # the checkout's minicolor/ comes first, and it is whole
        assert str(repo) in where
        installed = _run([python, "-c", "import minicolor.kernels as k; print(k.__file__)"], tmp_path, env)
        assert "site-packages" in installed and (Path(installed.strip()).parent / "conv2d.py").is_file()
        # the tools ship too: `minicolor kernels` runs this module in a process of its own
        report = _run([python, "-m", "minicolor.tools.kernel_report", "--help"], tmp_path, env)
        assert "usage:" in report and "--dtype" in report
        # every package of the checkout ships: a missing one would not fail an import, the device
        # table would quietly run the reference instead of the fast CPU path (found by this test)
        packages = sorted("minicolor." + p.parent.name for p in (ROOT / "minicolor").glob("*/__init__.py"))
        table = _run([python, "-c", f"import importlib\nfor p in {packages!r}: importlib.import_module(p)\n"
                      "from minicolor import backend\nprint(backend.implementation('conv2d', 'cpu').__name__)"],
                     tmp_path, env)
        assert table.strip() == "minicolor.cpu.conv2d"
    assert "usage: minicolor kernels" in _run([python, "-m", "minicolor.cli", "kernels", "--help"], repo, env)
    assert "sim ok" in _run([python, "-c", SIM_CHECK], repo, env)
