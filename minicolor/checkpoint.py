"""The weights and checkpoint format: one .npz file, read as untrusted input.

A file is what ``np.savez`` writes: a zip archive with one .npy file per array.

    config        a JSON string: {"model": {"width", "seed", "head"}, ...}; a checkpoint adds
                  "trainer" (seed, batch size, ...), "history" (the losses) and "data"
    model/NAME    every parameter and buffer of the network, by dotted name
    optim/NAME    a checkpoint's optimizer state: per-parameter arrays KIND.i, shaped like the
                  network's parameter i (Adam's m.i and v.i, SGD's velocity.i), and scalars (t)
    step          a checkpoint's step number

Writing is atomic (``save_npz_atomic``): a crash leaves the old file or the new one.

Reading treats the file as coming from a stranger: people share weights, so a file may be
damaged or hostile. ``np.load`` would read every member before anything could be checked, and a
member may claim any shape or decompress to gigabytes. So ``open_npz`` reads the parts that say
what the file holds, and nothing else, before any array data:

    1. the zip's end record (the last bytes): at most MAX_MEMBERS members in a directory of at
       most MAX_DIRECTORY_BYTES, checked before ``zipfile`` reads the directory into memory;
    2. each member's .npy header (name, shape, dtype), through ``numpy.lib.format``, and the
       member's size in the directory, which must be the header plus exactly the array's bytes;
    3. the config: at most MAX_CONFIG_CHARS characters, JSON, a known head, a width of at most
       MAX_WIDTH, and the types of every entry the trainer reads (``check_config``).

Then every header is compared with the network the config describes (or the one given):
same names, same shapes, floating-point data. Only then are arrays read, each exactly as many
bytes as its checked shape, so memory stays bounded by the network's own size whatever the file
claims or decompresses to. Weights that are not finite (NaN, infinity) are refused.
Nothing is unpickled.
"""
import json
import math
import os
import re
import struct
import warnings
import zipfile
from pathlib import Path

import numpy as np

from .models import HEADS, ColorizationNet

MAX_WIDTH = 128  # 125 million parameters (0.5 GB in float32); the paper's network is width 64
MAX_CONFIG_CHARS = 1 << 22  # the JSON config: 4 Mi characters (a loss history of ~100k steps)
MAX_MEMBERS = 1024  # arrays in one file; a checkpoint of either head holds under 250
MAX_DIRECTORY_BYTES = 1 << 20  # the zip's table of contents (about 100 bytes per member)
FLOAT_ITEMSIZES = (2, 4, 8)  # float16, float32, float64
EXPECTED = "expected a checkpoint.npz or weights.npz written by minicolor"


class CheckpointError(ValueError):
    """A weights or checkpoint file that cannot be used, with the reason in one line."""


# --- writing ---------------------------------------------------------------------------------------
def save_npz_atomic(path, arrays):
    """Write arrays to ``path`` (.npz) through a temporary file and a rename, so a crash
    leaves either the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_weights(path, model, dtype=np.float32, extra=None):
    """Weights only (no optimizer), optionally in float16 to halve the file."""
    arrays = {f"model/{k}": v.astype(dtype) for k, v in model.state_dict().items()}
    arrays["config"] = np.asarray(json.dumps({"model": model.config(), **(extra or {})}))
    save_npz_atomic(path, arrays)
    return path


# --- reading: the directory and the headers ----------------------------------------------------------
def _directory_size(f):
    """(members, bytes) that the zip's end record declares for its directory, read from the
    last 64 KiB of the file the way ``zipfile`` finds it; None for a zip64 archive (over
    65,535 members or 4 GiB: larger than any minicolor file)."""
    f.seek(0, os.SEEK_END)
    size = f.tell()
    f.seek(max(0, size - 22 - 0xFFFF))  # the end record is 22 bytes plus a comment of < 64 KiB
    tail = f.read()
    at = len(tail) - 22
    if not (tail[at:at + 4] == b"PK\x05\x06" and tail[-2:] == b"\0\0"):  # with a comment
        at = tail.rfind(b"PK\x05\x06")
    if at < 0:
        raise zipfile.BadZipFile("File is not a zip file")
    members, directory_bytes = struct.unpack_from("<HI", tail, at + 10)
    if tail[max(0, at - 20):at - 16] == b"PK\x06\x07" or members == 0xFFFF:
        return None
    return members, directory_bytes


def _read_header(f):
    """(shape, dtype) from the .npy header at the start of ``f``; numpy refuses a header of
    over 10,000 bytes. Versions 1.0 and 2.0 (what np.save writes) only."""
    version = np.lib.format.read_magic(f)
    if version not in ((1, 0), (2, 0)):
        raise ValueError(f".npy format version {version[0]}.{version[1]}; expected 1.0 or 2.0")
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _fortran_order, dtype = read(f)
    return tuple(shape), dtype


def _npy_header(zf, info):
    """(shape, dtype) of one member, from its .npy header alone; its size in the directory
    must be the header plus exactly the bytes of that array."""
    with zf.open(info) as f:  # decompresses only what is read
        shape, dtype = _read_header(f)
        header_bytes = f.tell()
    if dtype.hasobject:
        raise ValueError("it holds Python objects, which are never unpickled")
    data_bytes = math.prod(shape) * dtype.itemsize
    if info.file_size != header_bytes + data_bytes:
        raise ValueError(f"its size in the zip directory, {info.file_size:,} bytes, is not the "
                         f"{header_bytes + data_bytes:,} that its header ({shape}, {dtype}) needs")
    return shape, dtype


class Npz:
    """An opened weights or checkpoint file whose directory, headers and config are checked and
    none of whose arrays has been read. ``check`` compares the headers with a network; ``read``
    reads arrays. Use ``open_npz``."""

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no checkpoint or weights file at {self.path}")
        self._file = open(self.path, "rb")
        try:
            self._zip, self.headers = self._open_directory()
            self.config = self._read_config()
        except BaseException:
            self.close()
            raise

    def _fail(self, why):
        return CheckpointError(f"{self.path}: {why}")

    def _open_directory(self):
        """The zip and {member name without .npy: (shape, dtype)}; nothing but headers read."""
        if self._file.read(6) == b"\x93NUMPY":  # a lone .npy file: say what it holds
            self._file.seek(0)
            shape = _read_header(self._file)[0]
            raise CheckpointError(f"{self.path} is not a minicolor checkpoint: it holds one array "
                                  f"of shape {shape} (a .npy file); {EXPECTED}")
        try:
            declared = _directory_size(self._file)
            if declared is None or declared[0] > MAX_MEMBERS or declared[1] > MAX_DIRECTORY_BYTES:
                members, size = ("over 65,535", "over 4 GiB") if declared is None else (
                    f"{declared[0]:,}", f"{declared[1]:,} bytes")
                raise self._fail(f"its zip directory lists {members} members in {size}; a minicolor "
                                 f"file has at most {MAX_MEMBERS:,} in {MAX_DIRECTORY_BYTES:,} bytes "
                                 f"({EXPECTED})")
            self._file.seek(0)
            archive = zipfile.ZipFile(self._file)
        except (OSError, EOFError, zipfile.BadZipFile, struct.error) as exc:
            raise CheckpointError(f"{self.path} is not a minicolor checkpoint: {EXPECTED} "
                                  f"({type(exc).__name__}: {exc}; truncated or damaged?)") from exc
        headers = {}
        for info in archive.infolist():
            name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            if name in headers or name == info.filename:
                raise self._fail(f"member {info.filename!r} is not one .npy array ({EXPECTED})")
            try:
                headers[name] = _npy_header(archive, info)
            except Exception as exc:  # ValueError, BadZipFile, zlib.error, EOFError: forged or damaged
                raise self._fail(f"member {name!r} is forged or damaged: {exc}") from exc
        return archive, headers

    def _read_config(self):
        if "config" not in self.headers:
            raise self._fail(f"has no 'config' entry; it was not written by minicolor ({EXPECTED})")
        shape, dtype = self.headers["config"]
        if shape != () or dtype.kind != "U" or dtype.itemsize > 4 * MAX_CONFIG_CHARS:
            raise self._fail(f"its 'config' entry is {dtype} of shape {shape}; expected one JSON "
                             f"string of at most {MAX_CONFIG_CHARS:,} characters")
        try:
            config = json.loads(str(self.read(["config"])["config"]))
        except ValueError as exc:
            raise self._fail(f"has a damaged 'config' entry ({exc}); {EXPECTED}") from exc
        return check_config(self.path, config)

    # --- comparing headers with a network, and reading -------------------------------------------
    def check(self, model, strict=True):
        """Compare every header with ``model``; return the names of the arrays to read.

        Allowed: ``config``; ``step`` (an integer scalar); ``optim/KIND.i`` shaped like the
        model's parameter i and ``optim/NAME`` scalars; ``model/NAME`` for each parameter and
        buffer of the model, with its shape; floating-point data everywhere but in step.
        ``strict``: a missing, unknown or misshapen ``model/`` member is an error. Otherwise
        (fine-tuning) those that match no parameter are skipped, with a warning naming them.
        """
        own = {f"model/{name}": tuple(shape) for name, shape in _state_shapes(model).items()}
        params = [tuple(p.shape) for p in model.parameters()]
        wanted, skipped = [], []
        for name, (shape, dtype) in self.headers.items():
            if name == "config":
                continue
            if name == "step":
                expected, kinds = (), "iu"
            elif name.startswith("optim/"):
                expected, kinds = _optimizer_shape(name[6:], params), "fiu"
            elif name.startswith("model/"):
                expected, kinds = own.get(name), "f"
            else:
                raise self._fail(f"holds {name!r}, which no minicolor file has ({EXPECTED})")
            if dtype.kind not in kinds or (dtype.kind == "f" and dtype.itemsize not in FLOAT_ITEMSIZES):
                raise self._fail(f"{name} holds {dtype}; expected "
                                 f"{'an integer' if kinds == 'iu' else 'float16, float32 or float64'}")
            if not strict and not name.startswith("model/"):
                continue  # fine-tuning takes no optimizer state: checked, never read
            if not strict and expected != shape:
                skipped.append(f"{name[6:]} {shape}")
                continue
            if expected != shape:
                want = "no such array" if expected is None else f"shape {expected}"
                raise self._fail(f"{name} has shape {shape}; the network it describes has {want}")
            wanted.append(name)
        missing = sorted(set(own) - set(self.headers))
        if strict and missing:
            raise self._fail(f"lacks {len(missing)} arrays of the network it describes: "
                             f"{', '.join(m[6:] for m in missing[:5])}{' ...' if len(missing) > 5 else ''}")
        if skipped:
            warnings.warn(f"{self.path}: skipped {len(skipped)} arrays that match no parameter of "
                          f"this network: {', '.join(skipped)}", stacklevel=3)
        return wanted

    def read(self, names):
        """{name: array} of the given members (checked with ``check`` before); floating-point
        arrays must be finite."""
        arrays = {}
        for name in names:
            shape, dtype = self.headers[name]
            try:
                with self._zip.open(name + ".npy") as f:
                    array = np.lib.format.read_array(f, allow_pickle=False)
            except Exception as exc:  # BadZipFile (CRC), zlib.error, EOF: damaged data
                raise self._fail(f"{name} cannot be read ({type(exc).__name__}: {exc}; truncated "
                                 "or damaged?)") from exc
            if array.shape != shape or array.dtype != dtype:  # the header read twice must agree
                raise self._fail(f"{name} changed between two reads of its header")
            if array.dtype.kind == "f" and not np.isfinite(array).all():
                bad = int(array.size - np.isfinite(array).sum())
                raise self._fail(f"{name} holds {bad:,} values that are not finite (NaN or "
                                 "infinity); a network with them colors nothing")
            arrays[name] = array
        return arrays

    def close(self):
        if getattr(self, "_zip", None) is not None:
            self._zip.close()
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def open_npz(path):
    """A checked ``Npz``: directory, headers and config; no array data read yet."""
    return Npz(path)


def _state_shapes(model):
    return {**{name: p.shape for name, p in model.named_parameters()},
            **{name: b.shape for name, b in model.named_buffers()}}


def _optimizer_shape(name, params):
    """The shape optimizer state ``name`` must have: KIND.i like parameter i, else a scalar."""
    found = re.fullmatch(r"[A-Za-z_]+\.(\d+)", name)
    if found:
        i = int(found.group(1))
        return params[i] if i < len(params) else None
    return () if re.fullmatch(r"[A-Za-z_]+", name) else None


# --- the config ---------------------------------------------------------------------------------
def check_config(path, config):
    """Return ``config`` if every entry that minicolor reads has the right type and bounds,
    else raise CheckpointError naming the entry."""
    def need(ok, what):
        if not ok:
            raise CheckpointError(f"{path}: its config {what} ({EXPECTED})")

    def is_int(x, low=None):
        return isinstance(x, int) and not isinstance(x, bool) and (low is None or x >= low)

    need(isinstance(config, dict) and isinstance(config.get("model"), dict),
         "has no model description")
    model = config["model"]
    need(set(model) <= {"width", "seed", "head"},
         f"describes a network with {sorted(model)}; ColorizationNet takes width, seed and head")
    need(model.get("head", "regression") in HEADS, f"names the head {model.get('head')!r}; "
         f"minicolor knows {' and '.join(HEADS)}")
    need(is_int(model.get("width"), 1) and model["width"] <= MAX_WIDTH,
         f"gives the width {model.get('width')!r}; expected an integer from 1 to {MAX_WIDTH}")
    need(is_int(model.get("seed", 0)), f"gives the seed {model.get('seed')!r}; expected an integer")
    if "trainer" in config:
        trainer = config["trainer"]
        need(isinstance(trainer, dict) and is_int(trainer.get("seed"))
             and is_int(trainer.get("batch_size"), 1), "has a damaged 'trainer' entry")
    if "step" in config:  # a snapshot's step (Trainer snapshot_every)
        need(is_int(config["step"], 0), f"gives the step {config['step']!r}; expected an integer >= 0")
    if "history" in config:
        history = config["history"]
        need(isinstance(history, dict) and all(
            isinstance(history.get(k, []), list) and all(
                isinstance(p, list) and len(p) == 2 and is_int(p[0])
                and isinstance(p[1], (int, float)) for p in history.get(k, []))
            for k in ("train", "val")), "has a damaged 'history' entry")
    if config.get("data") is not None:
        data = config["data"]
        need(isinstance(data, dict) and isinstance(data.get("hash"), str)
             and isinstance(data.get("kind"), str) and is_int(data.get("images"), 0),
             "has a damaged 'data' entry")
    return config


def build_model(config):
    """The ColorizationNet a checked config describes (float32, on the CPU)."""
    return ColorizationNet(**config["model"])


def check_same_network(path, config, model):
    """Refuse, clearly, a file whose network differs from ``model`` in width or head."""
    saved = {"width": config["model"]["width"], "head": config["model"].get("head", "regression")}
    own = {k: model.config()[k] for k in ("width", "head")}
    if saved != own:
        raise CheckpointError(f"{path} holds a network with width {saved['width']} and head "
                              f"{saved['head']}; this one has width {own['width']} and head "
                              f"{own['head']} (give --width {saved['width']} --head {saved['head']})")


def section(arrays, prefix):
    """The arrays whose names start with ``prefix``, without it."""
    return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}


# --- what the rest of minicolor calls ----------------------------------------------------------------
def read_config(path):
    """The checked config of a weights or checkpoint file (no array read but the config)."""
    with open_npz(path) as f:
        return f.config


def read_npz(path, model=None):
    """(arrays, config) of a weights or checkpoint file, every member checked against ``model``
    (default: the network its config describes) before its data is read."""
    with open_npz(path) as f:
        model = model if model is not None else build_model(f.config)
        return f.read(f.check(model)), f.config


def read_state(path, model, optimizer_state=True):
    """(arrays, config) of a file for ``model``: same width and head, every member checked, and
    only the model's arrays (and with ``optimizer_state`` the optimizer's and the step) read."""
    with open_npz(path) as f:
        check_same_network(path, f.config, model)
        names = [n for n in f.check(model) if optimizer_state or n.startswith("model/")]
        return f.read(names), f.config


def load_state(path, model, state):
    """Copy ``state`` ({name: array}) into ``model``; a mismatch names the file."""
    try:
        return model.load_state_dict(state)
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{path} does not fit the network it describes: {exc}") from exc


def load_model(path, device="cpu"):
    """A ColorizationNet with the weights of a checkpoint or weights file."""
    with open_npz(path) as f:
        model = build_model(f.config)
        arrays = f.read([n for n in f.check(model) if n.startswith("model/")])
    return load_state(path, model, section(arrays, "model/")).to(device)


def load_weights(path, model):
    """Copy the weights of a weights or checkpoint file into ``model`` (same width and head;
    every member checked; no optimizer state read)."""
    arrays, _ = read_state(path, model, optimizer_state=False)
    return load_state(path, model, section(arrays, "model/"))


def init_from(model, path):
    """Copy the weights of ``path`` whose names and shapes match ``model`` (fine-tuning).

    Every member's header is checked first; arrays that match no parameter of ``model`` (another
    head, another width) are skipped with a warning that names them, and never read."""
    with open_npz(path) as f:
        arrays = f.read([n for n in f.check(model, strict=False) if n.startswith("model/")])
    state = section(arrays, "model/")
    model.load_state_dict(state, strict=False)
    fresh = sorted(set(_state_shapes(model)) - set(state))
    return f"{len(state)} arrays copied" + (f", fresh: {', '.join(fresh)}" if fresh else "")


def save_checkpoint(path, model, optimizer, step, trainer, history, data):
    """A checkpoint, written atomically: weights and batchnorm statistics (model/), the
    optimizer's state (optim/), the step number, and a config holding the network, the
    trainer's settings (``trainer``: seed, batch size, ...), the loss ``history`` and the
    identity of the training ``data``. The random state of step k is default_rng([seed, k, ...]):
    seed and step are all of it, so a resumed run repeats an uninterrupted one exactly."""
    arrays = {f"model/{k}": v for k, v in model.state_dict().items()}
    arrays.update({f"optim/{k}": np.asarray(v) for k, v in optimizer.state_dict().items()})
    arrays["step"] = np.asarray(step)
    arrays["config"] = np.asarray(json.dumps({"model": model.config(), "trainer": trainer,
                                              "history": history, "data": data}))
    save_npz_atomic(path, arrays)
    return Path(path)


def load_checkpoint(path, model, optimizer, trainer, data):
    """Restore a checkpoint written by ``save_checkpoint`` into ``model`` and ``optimizer``;
    returns (step, history).

    Refused: a weights file (no optimizer state, no step: start from one with
    ``Trainer.load_weights``), another network, or other settings that decide the batches (seed,
    batch size: the run could not repeat). Training on other data than the checkpoint's
    (``data``, see data.data_identity) is allowed, with a warning."""
    arrays, config = read_state(path, model)
    if "trainer" not in config:
        raise ValueError(f"{path} is a weights file (no optimizer state, no step), not a "
                         "checkpoint.npz; it cannot be resumed exactly")
    if "step" not in arrays or int(arrays["step"]) < 0 or "history" not in config:
        raise ValueError(f"{path} is a checkpoint without a step number or loss history; "
                         "it cannot be resumed exactly")
    if config["trainer"]["seed"] != trainer["seed"] or config["trainer"]["batch_size"] != trainer["batch_size"]:
        raise ValueError(f"checkpoint {path} was trained with {config['trainer']}; this trainer "
                         f"has {trainer}: the batches would differ")
    old = config.get("data")
    if old and data and old["hash"] != data["hash"]:
        warnings.warn(f"checkpoint {path} was trained on other data ({old['kind']}, "
                      f"{old['images']} training images) than this run's ({data['kind']}, "
                      f"{data['images']}); training goes on with this run's data", stacklevel=3)
    load_state(path, model, section(arrays, "model/"))
    try:
        optimizer.load_state_dict(section(arrays, "optim/"))
    except (KeyError, ValueError) as exc:
        raise ValueError(f"{path} holds no state for this trainer's {trainer['optimizer']} "
                         f"optimizer ({type(exc).__name__}: {exc})") from exc
    history = {k: [tuple(p) for p in config["history"].get(k, [])] for k in ("train", "val")}
    return int(arrays["step"]), history
