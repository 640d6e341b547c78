"""Average the weights of several checkpoints of one training run into a float16 weights file.

    python examples/average_weights.py OUT.npz runs/ft/snapshots/*.npz

(the weights that ``minicolor train --snapshot-every N`` keeps along the way; checkpoint.npz
files of one run work too).

With a constant learning rate, Adam's weights keep jittering around a good region; the mean of
checkpoints taken along the way (Polyak averaging, as in "stochastic weight averaging") sits
nearer its middle and colors more steadily than any single one. Batchnorm's running
statistics are averaged the same way. The checkpoints must come from the same network (same
config); the output holds the model only, like ``minicolor train``'s weights.npz, stored as
float16 (what ships), with the averaged steps in its config.
"""
import argparse
import json

import numpy as np

from minicolor.checkpoint import read_npz, save_npz_atomic


def average(paths):
    """(mean of the model/ arrays, the shared config, the steps) of checkpoint files."""
    total, model_config, steps = {}, None, []
    for path in paths:
        arrays, config = read_npz(path)
        shape = {k: v for k, v in config["model"].items() if k != "seed"}  # the seed may differ
        if model_config is not None and shape != {k: v for k, v in model_config.items() if k != "seed"}:
            raise ValueError(f"{path} holds {config['model']}, the first checkpoint {model_config}")
        model_config = config["model"]
        step = arrays["step"] if "step" in arrays else config.get("step", -1)  # checkpoint or snapshot
        steps.append(int(step))
        for key, value in arrays.items():
            if key.startswith("model/"):
                total[key] = total.get(key, 0.0) + value.astype(np.float64)
    return {k: v / len(paths) for k, v in total.items()}, model_config, steps


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="the weights file to write (.npz)")
    parser.add_argument("checkpoints", nargs="+", help="checkpoint.npz files of one run")
    parser.add_argument("--float32", action="store_true", help="store float32 instead of float16")
    args = parser.parse_args()
    mean, model_config, steps = average(args.checkpoints)
    dtype = np.float32 if args.float32 else np.float16
    arrays = {k: v.astype(dtype) for k, v in mean.items()}
    arrays["config"] = np.asarray(json.dumps({"model": model_config, "averaged_steps": steps}))
    save_npz_atomic(args.out, arrays)
    print(f"{args.out}: the mean of {len(steps)} checkpoints (steps {', '.join(map(str, steps))})")


if __name__ == "__main__":
    main()
