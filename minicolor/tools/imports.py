"""What imports what in minicolor: the layers of the house, read from the code.

    python -m minicolor.tools.imports                 the map as text (docs/architecture.md shows it)
    python -m minicolor.tools.imports --modules       every module and what it imports
    python -m minicolor.tools.imports --picture docs/img/architecture.png

Every module of the package belongs to one layer of ``LAYERS``, listed from the bottom up. The
imports are read from the source with ``ast`` (every ``import`` and ``from ... import``, those
inside functions too), not by running it. The rule (tests/test_architecture.py checks it):

    a module imports modules of its own layer or of a lower level: never a higher level, never
    another layer of its own level; and no modules import each other in a circle.

One arrow of the running program is not an import, and so is not drawn here: the layers ask
``backend.implementation(op, device)``, which imports reference/<op>.py, cpu/<op>.py or
kernels/<op>.py by its file name when an op first runs. That is the point of the table: no
layer names the code that computes it, so a new op needs no import line anywhere.
"""
import argparse
import ast
import os
import sys
from pathlib import Path
from typing import NamedTuple

PACKAGE = "minicolor"


class Layer(NamedTuple):
    name: str
    level: int    # imports go down: to lower levels (or within the layer), never up or sideways
    places: tuple  # its files and folders, relative to the package folder ("kernels/" is the
    #                top-level kernels/ folder, installed as minicolor/kernels/)
    what: str


LAYERS = [
    Layer("devices", 1, ("backend.py",),
          "the devices, and THE table: which implementation runs each op on each device"),
    Layer("engine", 2, ("tensor.py",), "Tensor, Function, backward: the autograd engine"),
    Layer("implementations", 2, ("reference/", "cpu/", "kernels/"),
          "array code, one file per op: NumPy references, the fast CPU path, CUDA kernels"),
    Layer("layers", 3, ("__init__.py", "functional.py", "nn.py", "optim.py", "gradcheck.py"),
          "differentiable ops, modules, optimizers, the gradient check"),
    Layer("network and data", 4, ("models.py", "color.py", "quantize.py", "data.py", "images.py",
                                  "metrics.py", "viz.py"),
          "the colorization network, Lab color, data sets, photos, metrics, figures"),
    Layer("training", 5, ("train.py", "graph.py", "checkpoint.py"),
          "the Trainer, the step as a CUDA graph, the weights format"),
    Layer("what users run", 6, ("colorize.py", "evaluate.py", "overfit.py", "activations.py", "sim.py"),
          "colorizing, evaluating, the report's experiment, activation pictures"),
    Layer("tools", 6, ("tools/",), "what measures the library: bench, profile, kernel report, summary"),
    Layer("the command", 7, ("cli.py",), "`minicolor ...`: what users run and the tools, one front door"),
]


def package_dir():
    """The folder of the minicolor package (found without importing anything of it)."""
    return Path(__file__).resolve().parents[1]


def modules(folder=None):
    """{place: file}: every module of the package, by its path relative to the package folder
    ("nn.py", "reference/conv2d.py", "kernels/__init__.py"), following the kernels/ link."""
    folder = Path(folder or package_dir())
    found = {}
    for where, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if name.endswith(".py"):
                path = Path(where, name)
                found[path.relative_to(folder).as_posix()] = path
    return found


def _module(dotted, known):
    """The file of the package's module ``dotted`` ('minicolor.kernels' -> 'kernels/__init__.py'),
    or None if no module has that name."""
    parts = dotted.split(".")
    if parts[0] != PACKAGE:
        return None
    rest = "/".join(parts[1:])
    for place in (f"{rest}/__init__.py" if rest else "__init__.py", f"{rest}.py"):
        if place in known:
            return place
    return None


def _nearest(dotted, known):
    """The file of ``dotted``, or of the nearest module above it (a name inside a module)."""
    while dotted:
        place = _module(dotted, known)
        if place:
            return place
        dotted = dotted.rpartition(".")[0]
    return None


def _targets(node, dotted, is_package, known):
    """The files of the package that one import statement of module ``dotted`` imports."""
    if isinstance(node, ast.Import):
        return {_nearest(alias.name, known) for alias in node.names}
    source = node.module or ""
    if node.level:  # relative: from the module's own package, one package up per extra dot
        package = dotted.split(".") if is_package else dotted.split(".")[:-1]
        package = package[: len(package) - (node.level - 1)]
        source = ".".join(package + ([node.module] if node.module else []))
    # 'from a import b' imports module a.b where there is one, else a name of module a
    return {_module(f"{source}.{alias.name}", known) or _nearest(source, known) for alias in node.names}


def imports(folder=None):
    """{place: set of places it imports}, for every module of the package (see ``modules``)."""
    known = modules(folder)
    graph = {}
    for place, path in known.items():
        is_package = place.endswith("__init__.py")
        dotted = ".".join([PACKAGE, *Path(place).with_suffix("").parts]).removesuffix(".__init__")
        found = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found |= _targets(node, dotted, is_package, known)
        graph[place] = found - {None, place}
    return graph


def layer_of(place, layers=LAYERS):
    """The Layer that holds ``place`` (its longest matching file or folder), or None."""
    matches = [(len(p), layer) for layer in layers for p in layer.places
               if place == p or (p.endswith("/") and place.startswith(p))]
    return max(matches, key=lambda m: m[0])[1] if matches else None


def wrong_way(graph, layers=LAYERS):
    """['a.py (layer, level) imports b.py (layer, level)'] for every import that goes up a level
    or sideways to another layer of the same level."""
    found = []
    for place, targets in sorted(graph.items()):
        here = layer_of(place, layers)
        for target in sorted(targets):
            there = layer_of(target, layers)
            if here and there and here != there and there.level >= here.level:
                found.append(f"{place} ({here.name}, level {here.level}) imports {target} "
                             f"({there.name}, level {there.level})")
    return found


def unplaced(graph, layers=LAYERS):
    """Modules that no layer holds: each must be given one in LAYERS."""
    return sorted(place for place in graph if layer_of(place, layers) is None)


def cycles(graph):
    """Groups of modules that import each other in a circle (strongly connected components of
    more than one module), each as a sorted list. A module importing its own package (its
    __init__.py) is left out: Python imports a package before any module in it anyway."""
    def own_package(place, target):
        return target.endswith("__init__.py") and place.startswith(target[: -len("__init__.py")])

    edges = {p: {t for t in ts if not own_package(p, t)} for p, ts in graph.items()}
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return sorted(found)


def layer_arrows(graph, layers=LAYERS):
    """{(layer name, imported layer name): number of module imports} between different layers."""
    arrows = {}
    for place, targets in graph.items():
        here = layer_of(place, layers)
        for target in targets:
            there = layer_of(target, layers)
            if here and there and here != there:
                arrows[(here.name, there.name)] = arrows.get((here.name, there.name), 0) + 1
    return arrows


def text_map(graph=None, layers=LAYERS):
    """The layers from the top down, each with its files and the layers it imports (the map that
    docs/architecture.md shows; the test checks that the page shows this)."""
    graph = imports() if graph is None else graph
    arrows = layer_arrows(graph, layers)
    order = sorted(layers, key=lambda layer: -layer.level)
    lines = []
    for layer in order:
        below = [other.name for other in order if (layer.name, other.name) in arrows]
        lines.append(f"{layer.level}  {layer.name:<17} {' '.join(layer.places)}")
        lines.append(f"   {'':<17} imports: {', '.join(below) if below else 'nothing of minicolor'}")
    return "\n".join(lines)


def module_table(graph=None, layers=LAYERS):
    """One line per module: its layer and what it imports."""
    graph = imports() if graph is None else graph
    return "\n".join(f"{place:<28} {getattr(layer_of(place, layers), 'name', '?'):<17} "
                     f"{' '.join(sorted(graph[place])) or '-'}" for place in sorted(graph))


def picture(path, graph=None, layers=LAYERS):
    """Draw the house and its imports into a PNG file. Left: the layers as boxes, one row per
    level, the lowest at the bottom. Right: who imports whom, as a table of the number of
    module imports from each layer (row) to each layer (column), both in the same order from
    the top of the house down. Imports that go down fill the lower-left triangle; the upper-right
    one stays empty (a cell there would be red: an import going up or sideways)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    graph = imports() if graph is None else graph
    arrows = layer_arrows(graph, layers)
    within = {layer.name: sum(1 for place, targets in graph.items() if layer_of(place, layers) == layer
                              for target in targets if layer_of(target, layers) == layer)
              for layer in layers}
    order = sorted(layers, key=lambda layer: -layer.level)  # from the top of the house down
    fig, (house, table) = plt.subplots(1, 2, figsize=(13, 5.6), gridspec_kw={"width_ratios": [1.05, 1]})

    levels = sorted({layer.level for layer in layers})
    for level in levels:
        row = [layer for layer in layers if layer.level == level]
        for i, layer in enumerate(row):
            left, width = i / len(row) + 0.01, 1 / len(row) - 0.02
            bottom = level - 1
            house.add_patch(plt.Rectangle((left, bottom + 0.06), width, 0.88, facecolor="#eef3fb",
                                          edgecolor="#3b5b92", linewidth=1.2))
            house.text(left + width / 2, bottom + 0.68, layer.name, ha="center", va="center",
                       fontsize=10, weight="bold")
            places = [layer.places] if len(row) == 1 else [layer.places[:3], layer.places[3:]]  # half width
            house.text(left + width / 2, bottom + 0.32, "\n".join(" ".join(p) for p in places if p),
                       ha="center", va="center", fontsize=7.5, family="monospace")
        house.text(-0.02, level - 0.5, str(level), ha="right", va="center", fontsize=9, color="#555")
    house.set_xlim(-0.06, 1.0)
    house.set_ylim(0, len(levels))
    house.axis("off")
    house.set_title("the layers (level at the left); each imports only from levels below it", fontsize=9)

    names = [layer.name for layer in order]
    counts = np.zeros((len(order), len(order)))
    for i, importer in enumerate(order):
        for j, imported in enumerate(order):
            counts[i, j] = within[importer.name] if i == j else arrows.get((importer.name, imported.name), 0)
    table.imshow(np.log1p(counts), cmap="Blues", vmin=0, vmax=np.log1p(counts.max() or 1) * 1.6)
    for i, importer in enumerate(order):
        for j, imported in enumerate(order):
            if counts[i, j]:
                wrong = i != j and imported.level >= importer.level
                table.text(j, i, f"{counts[i, j]:.0f}", ha="center", va="center", fontsize=9,
                           color="red" if wrong else "black", weight="bold" if wrong else "normal")
    table.set_xticks(range(len(names)), names, rotation=40, ha="right", fontsize=8)
    table.set_yticks(range(len(names)), [f"{name} imports" for name in names], fontsize=8)
    table.set_title(f"module imports between layers ({len(graph)} modules; the diagonal: within one)",
                    fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m minicolor.tools.imports", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modules", action="store_true", help="every module, its layer and its imports")
    parser.add_argument("--picture", help="draw the layers into this PNG file")
    args = parser.parse_args(argv)
    graph = imports()
    print(module_table(graph) if args.modules else text_map(graph))
    if args.picture:
        print(f"picture: {picture(args.picture, graph)}")
    problems = ([f"no layer holds {place}: give it one in LAYERS" for place in unplaced(graph)]
                + [f"wrong way: {line}" for line in wrong_way(graph)]
                + [f"import cycle: {' <-> '.join(group)}" for group in cycles(graph)])
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
