"""The ``minicolor`` command: overfit, train, colorize, and the tools to look inside.

Each subcommand is a thin layer over a library function; ``minicolor CMD --help`` explains
every option.
"""
import argparse
import sys
from pathlib import Path


def _size(text):
    value = int(text)
    if value < 8 or value % 8:
        raise argparse.ArgumentTypeError(f"size must be a positive multiple of 8, got {text}")
    return value


def _positive(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def cmd_overfit(args):
    from .overfit import format_table, overfit

    summary = overfit(args.image, steps=args.steps, width=args.width, size=args.size, lr=args.lr,
                      device=args.device, seed=args.seed, out_dir=args.out,
                      progress=not args.quiet)
    print(format_table(summary))
    print("pictures:", ", ".join(summary["grids"] + [summary["loss_curve"]]))


def cmd_train(args):
    from .data import ImageFolder, KaggleColorization, split
    from .models import ColorizationNet
    from .train import Trainer, save_weights

    if args.format == "kaggle":
        dataset = KaggleColorization(args.data, limit=args.limit, flip=True)
    else:
        dataset = ImageFolder(args.data, size=args.size, resize=args.resize, on_error=args.on_error)
    train_set, val_set = split(dataset, args.val_fraction, seed=args.seed)
    print(f"{len(train_set)} training images, {len(val_set)} held out for validation")
    trainer = Trainer(ColorizationNet(args.width, seed=args.seed), train_set, val_set, lr=args.lr,
                      batch_size=args.batch_size, device=args.device, seed=args.seed,
                      out_dir=args.out, log_every=args.log_every, val_every=args.val_every,
                      checkpoint_every=args.checkpoint_every, sample_every=args.sample_every,
                      progress=not args.quiet)
    if args.resume:
        trainer.load_checkpoint(args.resume)
        print(f"resumed from {args.resume} at step {trainer.step}")
    trainer.fit(args.steps)
    trainer.save_checkpoint()
    weights = save_weights(Path(args.out) / "weights.npz", trainer.model)
    print(f"done: step {trainer.step}; checkpoint {trainer.checkpoint_path}, weights {weights}")


def load_model_or_shipped(weights, device):
    from .colorize import shipped_weights
    from .train import load_model

    path = weights or shipped_weights()
    if path is None:
        raise SystemExit("no --weights given and no weights ship with this install; "
                         "train some with `minicolor train` first")
    return load_model(path, device)


def cmd_colorize(args):
    from .colorize import colorize_file

    model = load_model_or_shipped(args.weights, args.device)
    for image in args.images:
        print(colorize_file(model, image, args.out, size=args.size))


def build_parser():
    parser = argparse.ArgumentParser(prog="minicolor", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def device_option(p, default="auto"):
        p.add_argument("--device", default=default, choices=["auto", "cpu", "cuda", "sim"],
                       help=f"where to run: auto (cuda when a GPU is usable, else cpu), cpu, "
                            f"cuda, or sim (CUDA kernels in Numba's simulator; tiny inputs "
                            f"only) (default {default})")

    p = sub.add_parser("overfit", help="the report's experiment: overfit one photo",
                       description="Train ColorizationNet on one photo (the report's experiment) "
                                   "and print the loss at steps 100, 200, 400 beside the report's.")
    p.add_argument("image", help="the photo (JPEG or PNG)")
    p.add_argument("--steps", type=_positive, default=400, help="training steps (default 400)")
    p.add_argument("--width", type=_positive, default=16, help="width multiplier m (default 16)")
    p.add_argument("--size", type=_size, default=224, help="training size in pixels (default 224)")
    p.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (default 1e-4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial weights (default 0)")
    p.add_argument("--out", default="runs/overfit", help="folder for pictures (default runs/overfit)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    device_option(p, "cpu")
    p.set_defaults(run=cmd_overfit)

    p = sub.add_parser("train", help="train on a data set",
                       description="Train ColorizationNet on a data set; writes metrics.jsonl, "
                                   "loss.png, sample grids, checkpoint.npz and weights.npz to --out.")
    p.add_argument("data", help="the data: a folder of photos, or the Kaggle folder")
    p.add_argument("--format", choices=["folder", "kaggle"], default="folder",
                   help="folder: JPEG/PNG files of any size; kaggle: the 'image-colorization' "
                        ".npy files (gray_scale.npy, ab1-3.npy) (default folder)")
    p.add_argument("--steps", type=_positive, default=1000, help="total training steps (default 1000)")
    p.add_argument("--batch-size", type=_positive, default=16, help="images per step (default 16)")
    p.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (default 1e-4)")
    p.add_argument("--width", type=_positive, default=16, help="width multiplier m (default 16)")
    p.add_argument("--size", type=_size, default=224,
                   help="crop size for folder data (default 224; Kaggle images are 224)")
    p.add_argument("--resize", type=int, default=None,
                   help="folder data: resize each photo's shorter side to this before random "
                        "crops (default: --size, so crops cover most of the photo)")
    p.add_argument("--limit", type=int, default=None, help="kaggle: use only the first N images")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="fraction of whole images held out for validation (default 0.1)")
    p.add_argument("--on-error", choices=["raise", "skip"], default="raise",
                   help="folder data: stop at an unreadable file, or skip it with a warning "
                        "naming it (default raise)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, split and batch order")
    p.add_argument("--out", default="runs/train", help="output folder (default runs/train)")
    p.add_argument("--resume", default=None, help="a checkpoint.npz to continue from")
    p.add_argument("--log-every", type=_positive, default=10, help="log every N steps (default 10)")
    p.add_argument("--val-every", type=int, default=200, help="validate every N steps (default 200)")
    p.add_argument("--checkpoint-every", type=int, default=500,
                   help="checkpoint every N steps (default 500)")
    p.add_argument("--sample-every", type=int, default=500,
                   help="save a sample grid every N steps (default 500)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    device_option(p)
    p.set_defaults(run=cmd_train)

    p = sub.add_parser("colorize", help="colorize photos",
                       description="Colorize photos at their own size; writes NAME_color.png "
                                   "for each into -o.")
    p.add_argument("images", nargs="+", help="photos to colorize (color ones are made gray first)")
    p.add_argument("-o", "--out", default="colorized", help="output folder (default colorized)")
    p.add_argument("--weights", default=None,
                   help="a weights.npz or checkpoint.npz (default: the weights shipped with minicolor)")
    p.add_argument("--size", type=_size, default=224, help="size the network runs at (default 224)")
    device_option(p, "cpu")
    p.set_defaults(run=cmd_colorize)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except KeyboardInterrupt:
        return 130
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"minicolor {args.command}: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
