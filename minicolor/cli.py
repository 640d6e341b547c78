"""The minicolor command: overfit, train, colorize, and the tools to look inside.

Each subcommand is a thin layer over a library function; minicolor COMMAND --help explains
every option. Every command that runs the network takes --device with the same default,
auto: the GPU when CuPy finds one, else the CPU. An error is one line on stderr (exit code 1).
"""
import argparse
import contextlib
import os
import sys
import warnings
from pathlib import Path

from . import __version__, backend, sim


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


def resolve_device(name):
    """'auto' -> 'cuda' or 'cpu'; any other device is checked now, before data is read."""
    from .backend import resolve_device

    return resolve_device(name)


def shown(path):
    """A path as text that any terminal can print (undecodable bytes of odd names escaped)."""
    return os.fsencode(str(path)).decode("utf-8", "backslashreplace")


def _plural(n, word):
    return f"{n} {word}{'' if n == 1 else 's'}"


def check_sim(device, width, size, passes, what):
    """On the simulator: refuse ``passes`` forward passes' worth of work that would take it
    more than about a minute (sim.py), before anything runs."""
    if backend.simulated(device):
        sim.check(width, size, passes, what)
        sim.prepare()


def progress_on_sim(device, model, passes):
    """A bar through the layers on the simulator (slow enough to need one); else nothing."""
    return sim.layer_progress(model, passes) if backend.simulated(device) else contextlib.nullcontext()


def cmd_overfit(args):
    from .overfit import format_table, overfit

    device = resolve_device(args.device)
    check_sim(device, args.width, args.size, sim.TRAINING_STEP * args.steps,
              _plural(args.steps, "training step"))
    summary = overfit(args.image, steps=args.steps, width=args.width, size=args.size, lr=args.lr,
                      device=device, seed=args.seed, out_dir=args.out,
                      progress=not args.quiet, graph=False if args.no_graph else None)
    print(format_table(summary))
    print("pictures:", ", ".join(summary["grids"] + [summary["loss_curve"]]))
    if args.json:
        write_json(args.json, summary)


def write_json(path, result):
    """Write a command's result (a dict) as JSON, for scripts such as examples/gpu_check.py."""
    import json

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(result, indent=1))


def cmd_train(args):
    from .colorize import check_writable
    from .data import ImageFolder, KaggleColorization, split
    from .models import ColorizationNet
    from .checkpoint import init_from, read_config, save_weights
    from .train import Trainer, fit_class_weights

    device = resolve_device(args.device)  # before minutes of decoding photos
    check_sim(device, args.width, args.size, sim.TRAINING_STEP * args.batch_size * args.steps,
              f"{_plural(args.steps, 'training step')} of batch {args.batch_size}")
    check_writable(args.out)
    resume_config = read_config(args.resume) if args.resume else None
    if args.format == "kaggle":
        dataset = KaggleColorization(args.data, limit=args.limit, flip=True)
    else:
        dataset = ImageFolder(args.data, size=args.size, resize=args.resize, on_error=args.on_error,
                              zoom=(1.0, args.zoom), progress=not args.quiet)
    train_set, val_set = split(dataset, args.val_fraction, seed=args.seed)
    print(f"{_plural(len(train_set), 'training image')}, {len(val_set)} held out for validation")
    model = ColorizationNet(args.width, seed=args.seed, head=args.head)
    if args.init and not args.resume:
        print(f"starting from {args.init}: " + init_from(model, args.init))
    if args.head == "classification" and not args.resume:
        fit_class_weights(model, train_set, seed=args.seed)
    trainer = Trainer(model, train_set, val_set, lr=args.lr,
                      batch_size=args.batch_size, device=device, seed=args.seed,
                      out_dir=args.out, log_every=args.log_every, val_every=args.val_every,
                      checkpoint_every=args.checkpoint_every, sample_every=args.sample_every,
                      snapshot_every=args.snapshot_every,
                      progress=not args.quiet, graph=False if args.no_graph else None)
    if resume_config is not None and "trainer" not in resume_config:
        trainer.load_weights(args.resume)
        print(f"{args.resume} holds weights only (no optimizer state, no step): training starts "
              "from these weights at step 0 with a fresh optimizer")
    elif resume_config is not None:
        trainer.load_checkpoint(args.resume)
        print(f"resumed from {args.resume} at step {trainer.step}")
    if trainer.step >= args.steps:
        print(f"the checkpoint is already at step {trainer.step}, at or past --steps {args.steps}: "
              f"nothing to train (--steps counts from the start of the run; give more to go on)")
    else:
        trainer.fit(args.steps)
    trainer.save_checkpoint()
    weights = save_weights(Path(args.out) / "weights.npz", trainer.model)
    print(f"done: step {trainer.step}; checkpoint {trainer.checkpoint_path}, weights {weights}")


def load_model_or_shipped(weights, device):
    from .checkpoint import load_model
    from .colorize import shipped_weights

    path = weights or shipped_weights()
    if path is None:
        raise SystemExit("no --weights given and no weights ship with this install; "
                         "train some with `minicolor train` first")
    return load_model(path, device)


def cmd_colorize(args):
    from .colorize import check_writable, expand_inputs, output_paths
    from .images import DataError

    device = resolve_device(args.device)
    photos = expand_inputs(args.images)
    if not photos:
        raise DataError(f"no photos found in {', '.join(args.images)}")
    targets = output_paths([stem for _, stem in photos], args.out, overwrite=args.overwrite)
    check_writable(targets[0].parent if targets[0] == Path(args.out) else args.out)
    model = load_model_or_shipped(args.weights, device)
    model.flip = args.flip
    check_sim(device, model.width, args.size, len(photos) * (1 + args.flip),
              f"colorizing {_plural(len(photos), 'photo')}")
    with progress_on_sim(device, model, len(photos)):
        failed = colorize_all(model, photos, targets, args.size)
    if failed:
        print(f"minicolor colorize: {failed} of {_plural(len(photos), 'photo')} failed", file=sys.stderr)
        return 1
    return 0


def colorize_all(model, photos, targets, size):
    """Colorize each photo into its target; a photo that fails is named on stderr. Returns the
    number that failed."""
    from .colorize import OutputError, colorize_rgb, save_rgb
    from .images import DataError, load_rgb

    failed = 0
    for (photo, _), target in zip(photos, targets):
        try:
            result = colorize_rgb(model, load_rgb(photo), size)  # the photo is freed here
            print(f"{shown(photo)} -> {shown(save_rgb(result, target))}")
            del result
        except (DataError, OutputError) as exc:
            failed += 1
            print(f"minicolor colorize: error: {shown(exc)}", file=sys.stderr)
        except MemoryError:
            failed += 1
            print(f"minicolor colorize: error: not enough memory for {shown(photo)}", file=sys.stderr)
    return failed


def cmd_bench(args):
    from .backend import on_gpu
    from .tools import bench

    device = resolve_device(args.device)
    runs = args.warmup + args.repeat  # of each timed step and layer; the overfit once
    check_sim(device, max(args.widths or (16,)), args.size,
              sim.TRAINING_STEP * (runs * (sum(args.batches or (1, 8)) + (args.layer_batch or 0))
                                   + args.overfit_steps), "the benchmark")
    if not args.no_torch and not bench.torch_available():
        print("PyTorch is not installed, so only minicolor is timed: no torch or ratio columns "
              "(pip install torch to compare)")
    gpu = on_gpu(device)
    results = bench.run(
        device=device,
        widths=args.widths or ((16, 64) if gpu else (16,)),
        batches=args.batches or ((1, 8, 32) if gpu else (1, 8)),
        size=args.size, layer_batch=args.layer_batch if args.layer_batch is not None else (32 if gpu else 1),
        layer_width=args.layer_width, overfit_steps=args.overfit_steps, warmup=args.warmup,
        repeat=args.repeat, torch=False if args.no_torch else None)
    if args.json:
        bench.save_json(results, args.json)
        print(f"results written to {args.json}")


def cmd_evaluate(args):
    import json

    from .data import load_rgb
    from .evaluate import (STANDARD, by_source, evaluate, find_photos, format_sources, format_table,
                           notes, standard_images)

    device = resolve_device(args.device)
    model = load_model_or_shipped(args.weights, device)
    model.flip = args.flip
    images = standard_images() if args.standard else {}
    photos = find_photos(args.images, root=args.root, taken=set(images))
    if not images and not photos:
        raise ValueError("give photos to evaluate, or --standard for the eight standard ones")
    count = len(images) + len(photos)
    check_sim(device, model.width, args.size, count * (1 + args.flip), f"evaluating {_plural(count, 'photo')}")
    images.update({name: load_rgb(path) for name, (path, _) in photos.items()})
    with progress_on_sim(device, model, count):
        results = evaluate(model, images, size=args.size)
    if not args.sources_only:
        print(format_table(results))
    sources = {name: source for name, (_, source) in photos.items() if source}
    if sources:
        if args.standard:
            sources.update({name: "standard" for name in STANDARD})
        results["sources"] = by_source(results, sources)
        print()
        print(format_sources(results["sources"]))
    print(notes(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


def cmd_activations(args):
    from .activations import network_size, save_activation_grid
    from .color import rgb_to_lab
    from .data import load_rgb, resize_rgb

    device = resolve_device(args.device)
    model = load_model_or_shipped(args.weights, device)
    check_sim(device, model.width, args.size, 1, "a forward pass")
    rgb = load_rgb(args.image)
    rgb = resize_rgb(rgb, *network_size(rgb.shape[1], rgb.shape[0], args.size))
    l = rgb_to_lab(rgb.astype("float64") / 255.0)[..., 0]
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    with progress_on_sim(device, model, 1):
        chosen = save_activation_grid(args.output, model, l, seed=args.seed)
    print(f"{args.output}: " + ", ".join(f"{name} kernel {k}" for name, k in chosen.items()))


def cmd_summary(args):
    from .models import ColorizationNet
    from .tools.summary import summary

    print(summary(ColorizationNet(args.width, head=args.head), size=args.size, batch=args.batch))


def cmd_kernels(args):
    from .tools.kernel_report import run_subprocess

    argv = ["--dtype", *args.dtype] + (["--out", args.out] if args.out else [])
    returncode = run_subprocess(argv).returncode  # a fresh process: the simulator stays off there
    if returncode:
        raise SystemExit(returncode)


def cmd_profile(args):
    from .tools import profile

    device = resolve_device(args.device)
    check_sim(device, args.width, args.size, sim.TRAINING_STEP * args.batch * (args.warmup + 6),
              f"{args.warmup + 6} training steps of batch {args.batch} (warm-up and 2 x 3 timed)")
    result = profile.profile(width=args.width, batch=args.batch, size=args.size,
                             device=device, warmup=args.warmup,
                             graph=not args.no_graph)
    print(profile.format_table(result))
    if args.json:
        write_json(args.json, result)
    if args.chart:
        Path(args.chart).parent.mkdir(parents=True, exist_ok=True)
        print(f"chart: {profile.save_chart(result, args.chart)}")


def build_parser():
    parser = argparse.ArgumentParser(prog="minicolor", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"minicolor {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def graph_option(p):
        p.add_argument("--no-graph", action="store_true",
                       help="on cuda, run every step eagerly instead of replaying it as a CUDA "
                            "graph (the graph is the default there; see docs/kernels.md)")

    def flip_option(p):
        p.add_argument("--flip", action="store_true",
                       help="average the colors of each photo with those of its mirror image (twice "
                            "the work; see docs/model-card.md for what it does to the scores)")

    def device_option(p):
        p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "sim"],
                       help="where to run: auto (cuda when a GPU is usable, else cpu), cpu, "
                            "cuda, or sim (the CUDA kernels in Numba's simulator, for learning; "
                            f"it gets {sim.limit_text()}; more is refused) (default auto)")

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
    p.add_argument("--json", default=None,
                   help="also write the losses, the seconds and the device to this JSON file")
    device_option(p)
    graph_option(p)
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
    p.add_argument("--head", choices=["regression", "classification"], default="regression",
                   help="regression: predict ab, MSE loss; classification: predict one of ~260 "
                        "ab bins, class-rebalanced cross-entropy (Zhang et al.) (default regression)")
    p.add_argument("--size", type=_size, default=224,
                   help="crop size for folder data (default 224; Kaggle images are 224)")
    p.add_argument("--resize", type=int, default=None,
                   help="folder data: resize each photo's shorter side to this before random "
                        "crops (default: --size, so crops cover most of the photo)")
    p.add_argument("--zoom", type=float, default=1.0,
                   help="folder data: random crops span --size to --size x ZOOM pixels of the "
                        "resized photo and are scaled down to --size (default 1: no zoom)")
    p.add_argument("--limit", type=int, default=None, help="kaggle: use only the first N images")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="fraction of whole images held out for validation (default 0.1)")
    p.add_argument("--on-error", choices=["raise", "skip"], default="raise",
                   help="folder data: stop at an unreadable file, or skip it with a warning "
                        "naming it (default raise)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, split and batch order")
    p.add_argument("--out", default="runs/train", help="output folder (default runs/train)")
    p.add_argument("--resume", default=None,
                   help="a checkpoint.npz to continue from exactly (same --seed, --batch-size; "
                        "--steps counts from the start); a weights.npz starts from its weights "
                        "at step 0 with a fresh optimizer")
    p.add_argument("--init", default=None,
                   help="start from these weights (a weights.npz or checkpoint.npz): every array "
                        "whose name and shape match is copied, the rest start fresh (fine-tuning; "
                        "the regression weights give a classification net all but its head)")
    p.add_argument("--log-every", type=_positive, default=10, help="log every N steps (default 10)")
    p.add_argument("--val-every", type=int, default=200, help="validate every N steps (default 200)")
    p.add_argument("--checkpoint-every", type=int, default=500,
                   help="checkpoint every N steps (default 500)")
    p.add_argument("--sample-every", type=int, default=500,
                   help="save a sample grid every N steps (default 500)")
    p.add_argument("--snapshot-every", type=int, default=0,
                   help="keep the weights every N steps as snapshots/stepN.npz, for "
                        "examples/average_weights.py (default 0: none)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    device_option(p)
    graph_option(p)
    p.set_defaults(run=cmd_train)

    p = sub.add_parser("colorize", help="colorize photos",
                       description="Colorize photos at their own size; writes NAME_color.png "
                                   "for each into the -o folder (a photo in a subfolder of a "
                                   "folder argument: into the same subfolder of -o). No result "
                                   "replaces another of the same run or a file already there: "
                                   "it takes the next free name, NAME_color-2.png, ... unless "
                                   "--overwrite. An unreadable photo is reported on one line and "
                                   "skipped; the exit code is 1 if any failed.")
    p.add_argument("images", nargs="+",
                   help="photos, or folders of photos (color ones are made gray first)")
    p.add_argument("-o", "--out", default="colorized",
                   help="output folder (default colorized), or for one photo a file name "
                        "ending in .png or .jpg (.jpeg); other formats are refused")
    p.add_argument("--overwrite", action="store_true",
                   help="replace results left by an earlier run instead of numbering new ones")
    p.add_argument("--weights", default=None,
                   help="a weights.npz or checkpoint.npz (default: the weights shipped with minicolor)")
    p.add_argument("--size", type=_size, default=224, help="size the network runs at (default 224)")
    flip_option(p)
    device_option(p)
    p.set_defaults(run=cmd_colorize)

    p = sub.add_parser("activations", help="draw one kernel's activation per conv layer",
                       description="Run one photo through a trained network and draw, one row "
                                   "per group, the activation of a seeded random kernel of each "
                                   "conv layer (the report's figure).")
    p.add_argument("image", help="the photo (made gray first)")
    p.add_argument("--weights", default=None,
                   help="a weights.npz or checkpoint.npz (default: the weights shipped with minicolor)")
    p.add_argument("-o", "--output", default="activations.png",
                   help="the PNG to write (default activations.png)")
    p.add_argument("--seed", type=int, default=0, help="seed of the kernel choice (default 0)")
    p.add_argument("--size", type=_size, default=224,
                   help="the photo's longer side is resized to this, the other keeps the aspect "
                        "ratio (to a multiple of 8) (default 224)")
    device_option(p)
    p.set_defaults(run=cmd_activations)

    p = sub.add_parser("summary", help="per-layer output shapes, parameters and FLOPs",
                       description="Print every layer of ColorizationNet with its output shape, "
                                   "parameter count and FLOPs at the given input size, and totals.")
    p.add_argument("--width", type=_positive, default=16, help="width multiplier m (default 16)")
    p.add_argument("--head", choices=["regression", "classification"], default="regression",
                   help="which head (default regression)")
    p.add_argument("--size", type=_size, default=224, help="input size (default 224)")
    p.add_argument("--batch", type=_positive, default=1, help="batch size (default 1)")
    p.set_defaults(run=cmd_summary)

    p = sub.add_parser("evaluate", help="AuC, PSNR and colorfulness on held-out photos",
                       description="Color held-out photos and print, per photo and in total, "
                                   "AuC (Zhang et al.), PSNR and colorfulness beside the gray "
                                   "baseline and the truth.")
    p.add_argument("images", nargs="*",
                   help="photos to evaluate (their own colors are the truth): files, folders (every "
                        "photo below; the first subfolder is its source) or .txt lists of paths")
    p.add_argument("--root", default=None,
                   help="the folder the paths in .txt lists are relative to (default: the list's)")
    p.add_argument("--sources-only", action="store_true",
                   help="print only the per-source means, not every photo")
    p.add_argument("--standard", action="store_true",
                   help="also the eight standard photos of scikit-image, scikit-learn and matplotlib")
    p.add_argument("--weights", default=None,
                   help="a weights.npz or checkpoint.npz (default: the weights shipped with minicolor)")
    p.add_argument("--size", type=_size, default=224, help="size the network runs at (default 224)")
    flip_option(p)
    p.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    device_option(p)
    p.set_defaults(run=cmd_evaluate)

    p = sub.add_parser("bench", help="time training steps and conv layers (beside PyTorch)",
                       description="Time the training step, each conv layer shape and the "
                                   "400-step overfit; beside PyTorch where it is installed.")
    p.add_argument("--widths", type=_positive, nargs="+", default=None,
                   help="network widths (default 16 on the CPU, 16 64 on the GPU)")
    p.add_argument("--batches", type=_positive, nargs="+", default=None,
                   help="batch sizes of the training step (default 1 8 on the CPU, 1 8 32 on the GPU)")
    p.add_argument("--size", type=_size, default=224, help="image size (default 224)")
    p.add_argument("--layer-batch", type=int, default=None,
                   help="batch of the per-layer timings, 0 to skip them "
                        "(default 1 on the CPU, 32 on the GPU)")
    p.add_argument("--layer-width", type=_positive, default=None,
                   help="width whose conv layers are timed (default: the last of --widths)")
    p.add_argument("--overfit-steps", type=int, default=400,
                   help="steps of the one-image overfit timing, 0 to skip it (default 400)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs before timing (default 2)")
    p.add_argument("--repeat", type=_positive, default=5,
                   help="timed runs; the median is reported (default 5)")
    p.add_argument("--no-torch", action="store_true", help="do not time PyTorch even if installed")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    device_option(p)
    p.set_defaults(run=cmd_bench)

    p = sub.add_parser("kernels", help="registers, occupancy and loop instruction mix of each CUDA kernel",
                       description="Compile every CUDA kernel for an H100 (sm_90) without a GPU and print "
                                   "its registers, spills, shared memory, occupancy and the instruction "
                                   "mix of the conv main loops (needs pip install 'minicolor[kernels]'; "
                                   "see docs/kernels.md).")
    p.add_argument("--out", default=None, help="also write each kernel's .ptx, .cubin and .sass here")
    p.add_argument("--dtype", nargs="+", choices=["float32", "float64"], default=["float32", "float64"],
                   help="dtypes to compile for (default both)")
    p.set_defaults(run=cmd_kernels)

    p = sub.add_parser("profile", help="where one training step's time goes, layer by layer",
                       description="Time one training step of ColorizationNet per layer and pass "
                                   "(forward, backward) and the Adam update: GPU time from CUDA "
                                   "events and host time on cuda, wall time on cpu and sim; "
                                   "plus the kernel launches per step.")
    p.add_argument("--width", type=_positive, default=16, help="width multiplier m (default 16)")
    p.add_argument("--batch", type=_positive, default=1, help="batch size (default 1)")
    p.add_argument("--size", type=_size, default=224, help="image size (default 224)")
    p.add_argument("--warmup", type=_positive, default=2,
                   help="untimed steps first: kernels compile, memory pools grow (default 2)")
    p.add_argument("--chart", default=None, help="also draw the table as a bar chart (PNG)")
    p.add_argument("--no-graph", action="store_true",
                   help="on cuda, do not capture the step as a CUDA graph to count and time it")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    device_option(p)
    p.set_defaults(run=cmd_profile)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)

    def one_line(message, category, *rest, **kwargs):
        print(f"minicolor {args.command}: warning: {shown(message)}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = one_line
        try:
            return args.run(args) or 0
        except KeyboardInterrupt:
            return 130
        except (ValueError, OSError, RuntimeError) as exc:
            print(f"minicolor {args.command}: error: {shown(exc)}", file=sys.stderr)
            return 1
        except MemoryError:
            print(f"minicolor {args.command}: error: out of memory", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main())
