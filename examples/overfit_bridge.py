"""Reproduce the report's experiment: overfit ColorizationNet to one photo of a bridge.

    python examples/overfit_bridge.py                 # 400 steps on the CPU (the main job)
    python examples/overfit_bridge.py --device cuda   # on an NVIDIA GPU (pip install '.[cuda]')
    MINICOLOR_CPU=reference python examples/overfit_bridge.py  # the NumPy references instead

Prints the loss (MSE per ab value, Lab units) at steps 100, 200 and 400 beside the
report's figures, the floor that x4 bilinear upsampling puts under it on this photo, the
wall time and the device; leaves grids and the loss curve in runs/overfit_bridge/.

The photo: "Roebling Suspension Bridge, in Cincinnati" by Derek Jensen, public domain
(Wikimedia Commons); see examples/ATTRIBUTION.md.
"""
import argparse
from pathlib import Path

from minicolor.overfit import format_table, overfit

BRIDGE = Path(__file__).with_name("roebling-bridge.jpg")


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=400, help="training steps (default 400)")
    parser.add_argument("--device", default="cpu",
                        help="cpu (default: the same run on every machine), cuda, or auto (cuda if usable)")
    parser.add_argument("--out", default="runs/overfit_bridge", help="where pictures go")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial weights")
    args = parser.parse_args()
    summary = overfit(BRIDGE, steps=args.steps, device=args.device, out_dir=args.out, seed=args.seed)
    print(format_table(summary))
    print("pictures:", ", ".join(summary["grids"] + [summary["loss_curve"]]))


if __name__ == "__main__":
    main()
