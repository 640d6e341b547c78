"""Widen trained ColorizationNet weights 2x without changing what the network computes
(Chen, Goodfellow & Shlens 2016, "Net2Net": Net2WiderNet), so that a wider network starts
from what the narrower one learned instead of from random weights.

    python examples/widen_weights.py minicolor/weights/colorizer-w16-regression.npz w32.npz
    minicolor train data/corpus/train --init w32.npz --width 32 ...

Every hidden channel c of a layer with C channels becomes two, c and c + C, with the same
incoming weights, bias and batchnorm parameters: the two compute the same values. The next
layer reads each pair with its old weight split in two parts that add up to it (a share s and
1 - s, s drawn per weight between 0.25 and 0.75), so its output is what it was. The first
layer's input (L) and the head's output (ab) keep their sizes.

Why the uneven split: with halves, both copies of a channel would get the same gradient at
every step and stay copies for ever, and the wider network would be the narrow one at twice the
cost. With uneven shares their outgoing weights differ, so do their gradients, and they drift
apart while training.
"""
import argparse

import numpy as np

from minicolor.checkpoint import load_model, save_weights
from minicolor.models import ColorizationNet

SHARE = (0.25, 0.75)  # the range of the share s of a split weight


def widen(model, seed=0, dtype=np.float32):
    """A ColorizationNet twice as wide as ``model``, computing the same function (its weights in
    ``dtype``; in float64 its colors match the narrow network's in float64 to 1e-13)."""
    config = model.config()
    wide = ColorizationNet(2 * config["width"], seed=config["seed"], head=config["head"], dtype=dtype)
    rng = np.random.default_rng(seed)
    old, new = model.state_dict(), wide.state_dict()
    state = {}
    for name, target in new.items():
        value = np.asarray(old[name], np.float64)
        if value.shape == target.shape:  # the head's bias: nothing to widen
            state[name] = value
            continue
        if value.ndim == 1:  # a bias or batchnorm's parameters and statistics: per channel
            state[name] = np.concatenate([value, value])
            continue
        out_old, in_old = value.shape[:2]
        out_new, in_new = target.shape[:2]
        rows = np.concatenate([value, value]) if out_new == 2 * out_old else value
        if in_new == 2 * in_old:  # the input channels were doubled: split each weight in two
            share = rng.uniform(*SHARE, rows.shape)
            rows = np.concatenate([rows * share, rows * (1 - share)], axis=1)
        state[name] = rows
    wide.load_state_dict({k: v.astype(new[k].dtype) for k, v in state.items()})
    return wide


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights", help="weights or checkpoint of a ColorizationNet")
    parser.add_argument("out", help="where the widened weights go (float32)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split shares")
    args = parser.parse_args()
    model = load_model(args.weights)
    wide = widen(model, args.seed)
    save_weights(args.out, wide, extra={"widened_from": str(args.weights)})
    print(f"width {model.config()['width']} -> {wide.config()['width']}: {args.out}")


if __name__ == "__main__":
    main()
