"""The house of docs/architecture.md: every module in one layer, imports going one way only.

The imports are read from the source (minicolor/tools/imports.py, with ``ast``: lazy imports
inside functions count too). Adding an import from a lower layer to a higher one (say, from
reference/ or tensor.py to train.py, tools/ or cli.py), or a circle of imports, fails here.
"""
import ast
import re
from pathlib import Path

from minicolor.tools import imports as house

ROOT = Path(__file__).resolve().parents[1]
GRAPH = house.imports()
LOWER = ("devices", "engine", "implementations", "layers")  # the core a student reads first
UPPER = ("training", "what users run", "tools", "the command")


def layer_name(place):
    return house.layer_of(place).name


def test_every_module_is_in_one_layer():
    assert house.unplaced(GRAPH) == [], "give each of these a layer in minicolor/tools/imports.py LAYERS"
    assert {"tensor.py", "backend.py", "cli.py", "reference/conv2d.py", "kernels/conv2d_tiled.py",
            "kernels/__init__.py", "tools/bench.py", "__init__.py"} <= set(GRAPH)  # the kernels/ link is followed


def test_imports_go_down_never_up_or_sideways():
    assert house.wrong_way(GRAPH) == []


def test_the_core_never_imports_training_tools_or_the_command():
    found = [f"{place} imports {target}" for place, targets in sorted(GRAPH.items())
             if layer_name(place) in LOWER for target in sorted(targets) if layer_name(target) in UPPER]
    assert found == []


def test_the_engine_and_the_implementations_know_nothing_of_each_other():
    """tensor.py never names an op's code, and the array code never sees a Tensor."""
    for place, targets in GRAPH.items():
        for target in targets:
            assert {layer_name(place), layer_name(target)} != {"engine", "implementations"}, (place, target)


def test_no_import_cycles():
    assert house.cycles(GRAPH) == []


def test_the_page_shows_the_map_of_the_code():
    page = (ROOT / "docs" / "architecture.md").read_text()
    assert f"```text\n{house.text_map(GRAPH)}\n```" in page, (
        "docs/architecture.md no longer shows the code's map: paste in the output of "
        "python -m minicolor.tools.imports (and redraw docs/img/architecture.png with --picture)")


# --- the checks themselves catch what they are for: a small package built to break the rules ----------
def write(folder, files):
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)


def test_an_upward_import_is_caught(tmp_path):
    write(tmp_path, {"__init__.py": "", "backend.py": "", "train.py": "from . import backend\n",
                     "reference/__init__.py": "", "tools/__init__.py": "",
                     "reference/conv2d.py": "def forward(x):\n    from ..train import Trainer\n",
                     "tensor.py": "import minicolor.tools.bench\n", "tools/bench.py": "",
                     "cli.py": "from .reference import conv2d\n"})
    graph = house.imports(tmp_path)
    assert graph["reference/conv2d.py"] == {"train.py"} and graph["cli.py"] == {"reference/conv2d.py"}
    assert house.wrong_way(graph) == [
        "reference/conv2d.py (implementations, level 2) imports train.py (training, level 5)",
        "tensor.py (engine, level 2) imports tools/bench.py (tools, level 6)"]


def test_a_sideways_import_and_a_cycle_are_caught(tmp_path):
    write(tmp_path, {"__init__.py": "", "tensor.py": "from .reference import mse\n",
                     "reference/__init__.py": "", "reference/mse.py": "from . import adam\n",
                     "reference/adam.py": "from .mse import forward\n",
                     "kernels/__init__.py": "", "kernels/mse.py": "import minicolor.kernels as k\n"})
    graph = house.imports(tmp_path)
    assert house.wrong_way(graph) == [
        "tensor.py (engine, level 2) imports reference/mse.py (implementations, level 2)"]
    assert house.cycles(graph) == [["reference/adam.py", "reference/mse.py"]]  # not kernels/: its own package
    assert house.unplaced({**graph, "newthing.py": set()}) == ["newthing.py"]


# --- one place decides from a device name --------------------------------------------------------------
# Comparisons with a device name outside backend.py that are known and left: none.
KNOWN = set()


def device_name_comparisons():
    found = set()
    for place, path in house.modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare) and any(
                    isinstance(c, ast.Constant) and c.value in ("cpu", "cuda", "sim")
                    for c in [node.left, *node.comparators]):
                found.add((place, ast.unparse(node)))
    return found


def test_only_the_table_picks_code_by_device_name():
    found = {(place, code) for place, code in device_name_comparisons() if place != "backend.py"}
    assert found <= KNOWN, f"compare device names in backend.py only (ask it a trait): {sorted(found - KNOWN)}"


def test_device_traits_come_from_the_table():
    from minicolor import backend

    def having(trait):
        return {device for device in backend.DEVICES if trait(device)}

    assert having(backend.on_gpu) == having(backend.captures_graphs) == {"cuda"}
    assert having(backend.runs_kernels) == {"cuda", "sim"}
    assert having(backend.simulated) == {"sim"}
    assert [backend.torch_device(d) for d in ("cpu", "sim", "cuda")] == ["cpu", "cpu", "cuda"]
    backend.synchronize("cpu")  # nothing to wait for off the GPU: returns at once, without CuPy


def test_the_map_page_names_no_file_that_is_gone():
    page = (ROOT / "docs" / "architecture.md").read_text()
    for name in set(re.findall(r"`((?:minicolor|kernels|tests|examples)/[\w/]+\.py)`", page)):
        assert (ROOT / name).is_file(), f"docs/architecture.md names {name}, which is not there"
