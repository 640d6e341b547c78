"""How far float32 rounding moves the main job's losses: the fast CPU path and the NumPy
reference, each in float32 and in float64, on the bridge (batch 1, 224 px, Adam 1e-4, as
examples/overfit_bridge.py trains).

    python examples/bridge_precision.py                      # seed 0, 400 steps (about 7 min)
    python examples/bridge_precision.py --seeds 1 2 3 --steps 100
    python examples/bridge_precision.py --skip-reference64   # without the slowest run

Prints each run's loss (Lab units) at steps 100, 200 and 400 and how far it lies from the float64
run of the reference, the exact answer to rounding; then how far each path's first gradients in
float32 lie from float64's. In float64 the two paths agree to 1e-7 of the loss or better at
every step: they compute the same network. In float32 each drifts from that answer by
rounding, the reference too (at step 100, over four seeds, the fast path by 0.01 to 1.3%, the
reference by 0.06 to 0.6%, and rounding only the initial weights to float32 by 0.15 to 0.4%),
so a float32 loss can be compared with another only within that drift (docs/cpu.md, *How close
two float32 runs can be*).

Why it drifts: Adam moves every weight by about the learning rate at its first steps, whatever
the size of its gradient, and a weight's gradient sums thousands of products that nearly
cancel: the first gradients in float32 differ from float64's by 0.9 to 7% in the worst parameter
for the reference, 5 to 18% for the fast path (Winograd rounds about 1e-5 of the largest
value per layer, im2col about 1e-7).
"""
import argparse
import contextlib
import time
from pathlib import Path

import numpy as np

from minicolor import backend, optim
from minicolor.cpu import threads
from minicolor.data import ImageFolder
from minicolor.models import ColorizationNet
from minicolor.tensor import Tensor
from minicolor.train import LOSS_UNIT, network_inputs

BRIDGE = Path(__file__).with_name("roebling-bridge.jpg")
MARKS = (100, 200, 400)
RUNS = {  # name: (path, dtype, the dtype the initial weights are rounded to first)
    "reference float64": ("reference", np.float64, None),  # the exact answer, to rounding
    "fast float64": ("fast", np.float64, None),
    "fast float64, start rounded to float32": ("fast", np.float64, np.float32),
    "fast float32": ("fast", np.float32, None),
    "reference float32": ("reference", np.float32, None),
}


@contextlib.contextmanager
def bridge(path, dtype, seed, size=224):
    """(model, x, y): the main job's network (in training mode) and its one batch, in ``dtype``,
    on ``path`` ("fast" or "reference") until the block ends. The reference runs as
    MINICOLOR_CPU=reference runs it, its matrix products on every core (OpenBLAS's threads; the
    fast path keeps OpenBLAS on one)."""
    previous = backend.use_references_on_cpu(path == "reference")
    blas = threads.openblas_on_every_core() if path == "reference" else contextlib.nullcontext()
    try:
        with blas:
            l, ab = ImageFolder([BRIDGE], size=size, fit="squash", flip=False).batch([0])
            x, y = (Tensor(a.astype(dtype)) for a in network_inputs(l, ab))
            model = ColorizationNet(16, seed=seed, dtype=dtype)
            model.train()
            yield model, x, y
    finally:
        backend.use_references_on_cpu(previous)


def losses(path, dtype, steps, seed, start=None, size=224):
    """Loss (Lab units) before each of ``steps`` Adam steps, with weights, activations and
    Adam's state in ``dtype``; the initial weights rounded to ``start`` first when it is given
    (float32: the float32 runs' start)."""
    with bridge(path, dtype, seed, size) as (model, x, y):
        if start is not None:
            for p in model.parameters():
                p.data[...] = p.data.astype(start)
        optimizer = optim.Adam(model.parameters(), lr=1e-4)
        out = []
        for _ in range(steps):
            optimizer.zero_grad()
            loss, mse = model.loss(x, y)
            out.append(float(mse.data) * LOSS_UNIT)
            loss.backward()
            optimizer.step()
        return np.array(out)


def first_gradients(path, dtype, seed, size=224):
    """{parameter name: gradient (float64)} of the first step, before any update."""
    with bridge(path, dtype, seed, size) as (model, x, y):
        loss, _ = model.loss(x, y)
        loss.backward()
        return {name: np.asarray(p.grad, np.float64) for name, p in model.named_parameters()}


def gradient_error(grads, exact):
    """(error, parameter): the largest of max|g - exact| / max|exact| over the parameters."""
    return max((np.abs(grads[n] - g).max() / np.abs(g).max(), n) for n, g in exact.items())


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=400, help="training steps (default 400)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds of the initial weights")
    parser.add_argument("--size", type=int, default=224, help="image size (default 224, as the main job)")
    parser.add_argument("--skip-reference64", action="store_true",
                        help="take the fast path's float64 run as the exact answer (the two agree "
                             "to 1e-7 or better) and skip the reference's, the slowest run")
    args = parser.parse_args()
    marks = [s for s in MARKS if s <= args.steps] or [args.steps]
    width = max(map(len, RUNS)) + 2
    print(f"{'seed':>4} {'run':<{width}}" + "".join(f"{f'step {s}':>20}" for s in marks) + f"{'time':>8}")
    for seed in args.seeds:
        runs = {}
        for name, (path, dtype, start) in RUNS.items():
            if name == "reference float64" and args.skip_reference64:
                continue
            started = time.perf_counter()
            runs[name] = losses(path, dtype, args.steps, seed, start, args.size), time.perf_counter() - started
        exact = runs["fast float64" if args.skip_reference64 else "reference float64"][0]
        for name, (curve, seconds) in runs.items():
            cells = "".join(f"{curve[s - 1]:>10.3f} ({100 * (curve[s - 1] / exact[s - 1] - 1):+.3f}%)"
                            for s in marks)
            print(f"{seed:>4} {name:<{width}}{cells}{seconds:>7.0f}s", flush=True)
        if "reference float64" in runs:
            fast, reference = runs["fast float64"][0], runs["reference float64"][0]
            print(f"{seed:>4} float64, fast against reference: largest difference over all "
                  f"{args.steps} steps {np.max(np.abs(fast / reference - 1)):.1e} of the loss")
        exact_gradients = first_gradients("reference", np.float64, seed, args.size)
        for path in ("fast", "reference"):
            error, name = gradient_error(first_gradients(path, np.float32, seed, args.size), exact_gradients)
            print(f"{seed:>4} first gradients, {path} float32 against float64: {error:.1e} of the "
                  f"largest value, in the worst parameter ({name})")


if __name__ == "__main__":
    main()
