"""Weights and checkpoints from someone else: every file here is written by the test itself.

A forged .npy header, a zip bomb (a few MB that would decompress to GBs), a hostile config,
too many members, values that are not finite; each is refused with one line before any array
is read, and memory stays small. Fine-tuning (--init) skips what matches no parameter, by name.
"""
import io
import json
import struct
import subprocess
import sys
import textwrap
import zipfile
import zlib

import numpy as np
import pytest

from minicolor import checkpoint, cli
from minicolor.checkpoint import CheckpointError, load_model, read_npz, save_weights
from minicolor.models import ColorizationNet


def npy(array):
    """The bytes np.save writes for ``array``."""
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def npy_header(shape, dtype="<f4"):
    """A .npy version 1.0 header claiming ``shape`` and ``dtype``, padded as np.save pads it."""
    text = f"{{'descr': '{dtype}', 'fortran_order': False, 'shape': {tuple(shape)}, }}"
    text += " " * (63 - (10 + len(text)) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode()


def config_entry(model=None, **extra):
    return npy(np.asarray(json.dumps({"model": model or {"width": 2, "seed": 0, "head": "regression"},
                                      **extra})))


def write_zip(path, members):
    """A zip written by hand: members are (name, data, declared size); data is bytes (stored)
    or ("deflate", compressed bytes) whose size is what the directory declares."""
    body, directory = b"", b""
    for name, data, declared in members:
        method, stored = (8, data[1]) if isinstance(data, tuple) else (0, data)
        crc = 0 if method else zlib.crc32(stored)  # a bomb is never read far enough to check it
        name = name.encode()
        fields = struct.pack("<HHHHHIIIHH", 20, 0, method, 0, 0x21, crc, len(stored), declared,
                             len(name), 0)
        directory += (b"PK\x01\x02" + struct.pack("<H", 20) + fields
                      + struct.pack("<HHHII", 0, 0, 0, 0, len(body)) + name)
        body += b"PK\x03\x04" + fields + name + stored
    end = struct.pack("<HHHHIIH", 0, 0, len(members), len(members), len(directory), len(body), 0)
    path.write_bytes(body + directory + b"PK\x05\x06" + end)
    return path


def deflated_zeros(header, gib):
    """A raw deflate stream of ``header`` then ``gib`` GiB of zeros, built from one compressed
    MiB repeated (a full flush resets the compressor, so every MiB compresses to the same bytes):
    about 1 MB per GiB, made in well under a second."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = c.compress(header) + c.flush(zlib.Z_FULL_FLUSH)
    mib = c.compress(bytes(1 << 20)) + c.flush(zlib.Z_FULL_FLUSH)
    again = c.compress(bytes(1 << 20)) + c.flush(zlib.Z_FULL_FLUSH)
    assert again == mib
    return ("deflate", head + mib * (gib << 10) + c.flush())


def weights_members(model):
    return [(f"model/{k}.npy", npy(v), len(npy(v))) for k, v in model.state_dict().items()]


def one_line_error(argv, capsys, *expected):
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 1, err
    assert len(err.strip().splitlines()) == 1, err
    for text in expected:
        assert text in err, err
    return err


# --- the bounds, checked before any array is read ------------------------------------------------
def test_a_forged_header_is_refused_before_its_data(tmp_path):
    model = ColorizationNet(2)
    members = weights_members(model) + [("config.npy", config_entry(), len(config_entry()))]
    # a header claiming 4 TiB, followed by 16 bytes: its size in the directory gives it away
    forged = npy_header((1 << 40,)) + bytes(16)
    bad = [m if m[0] != "model/head.weight.npy" else (m[0], forged, len(forged)) for m in members]
    with pytest.raises(CheckpointError, match="is not the 4,398,046,511,232 that its header"):
        load_model(write_zip(tmp_path / "forged.npz", bad))
    # a consistent header of the wrong shape: compared with the network the config describes
    wrong = npy(np.zeros((2, 9, 1, 1), np.float32))
    bad = [m if m[0] != "model/head.weight.npy" else (m[0], wrong, len(wrong)) for m in members]
    with pytest.raises(CheckpointError, match=r"head.weight has shape \(2, 9, 1, 1\); the network "
                                              r"it describes has shape \(2, 8, 1, 1\)"):
        load_model(write_zip(tmp_path / "shape.npz", bad))
    # the same file, intact, loads
    assert load_model(write_zip(tmp_path / "good.npz", members)).width == 2


@pytest.mark.parametrize("model, what", [
    ({"width": 1_000_000}, "expected an integer from 1 to 128"),
    ({"width": 2, "head": "mystery"}, "names the head 'mystery'"),
    ({"width": 2, "dtype": "float64"}, "ColorizationNet takes width, seed and head"),
    ({"width": "2"}, "gives the width '2'"),
])
def test_the_config_is_bounded_before_a_network_is_built(tmp_path, capsys, model, what):
    path = write_zip(tmp_path / "w.npz", [("config.npy", config_entry(model), len(config_entry(model)))])
    one_line_error(["colorize", str(tmp_path / "p.jpg"), "--weights", str(path), "-o", str(tmp_path / "out")],
                   capsys, what, "w.npz")


def test_a_huge_config_is_refused_from_its_header(tmp_path):
    claim = npy_header((), f"<U{1 << 28}")  # a 1 GiB string, of which nothing is written
    path = write_zip(tmp_path / "w.npz", [("config.npy", claim, len(claim) + (1 << 30))])
    with pytest.raises(CheckpointError, match="expected one JSON string of at most 4,194,304"):
        load_model(path)


def test_damaged_trainer_entries_are_refused(tmp_path):
    for extra, entry in (({"trainer": {"seed": 0}}, "'trainer'"), ({"history": {"train": [[1]]}}, "'history'"),
                         ({"data": {"hash": 3}}, "'data'")):
        path = write_zip(tmp_path / "c.npz", [("config.npy", config_entry(**extra), len(config_entry(**extra)))])
        with pytest.raises(CheckpointError, match=f"has a damaged {entry} entry"):
            checkpoint.read_config(path)


def test_too_many_members_are_refused_before_the_directory_is_read(tmp_path):
    path = tmp_path / "many.npz"
    with zipfile.ZipFile(path, "w") as z:
        for i in range(checkpoint.MAX_MEMBERS + 1):
            z.writestr(f"model/x{i}.npy", b"")
    with pytest.raises(CheckpointError, match="lists 1,025 members in [0-9,]+ bytes; a minicolor file has at most 1,024"):
        read_npz(path)


def test_unknown_members_and_dtypes_are_refused(tmp_path):
    model = ColorizationNet(2)
    base = weights_members(model) + [("config.npy", config_entry(), len(config_entry()))]
    extra = npy(np.zeros(3, np.float32))
    with pytest.raises(CheckpointError, match="holds 'payload', which no minicolor file has"):
        load_model(write_zip(tmp_path / "a.npz", base + [("payload.npy", extra, len(extra))]))
    ints = npy(np.zeros((2, 8, 1, 1), np.int64))
    bad = [m if m[0] != "model/head.weight.npy" else (m[0], ints, len(ints)) for m in base]
    with pytest.raises(CheckpointError, match="head.weight holds int64; expected float16, float32"):
        load_model(write_zip(tmp_path / "b.npz", bad))
    with pytest.raises(CheckpointError, match="lacks 1 arrays of the network it describes: head.bias"):
        load_model(write_zip(tmp_path / "c.npz", [m for m in base if m[0] != "model/head.bias.npy"]))


BOMB = textwrap.dedent("""
    import sys, time
    from minicolor.checkpoint import CheckpointError, load_model
    started = time.perf_counter()
    try:
        load_model(sys.argv[1])
        print("loaded")
    except CheckpointError as exc:
        print(exc)
    # the peak resident memory of this process; not ru_maxrss, which on Linux can keep the
    # parent's peak across fork and exec (pytest's own hundreds of MB)
    with open("/proc/self/status") as status:
        print(next(int(l.split()[1]) for l in status if l.startswith("VmHWM")) // 1024, "MB")
    print(f"{time.perf_counter() - started:.2f} s")
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
@pytest.mark.parametrize("claim", ["shape", "size"])
def test_a_zip_bomb_fails_fast_in_little_memory(tmp_path, claim):
    """3 MB that decompress to 3 GiB. "shape": the member's header claims a 3 GiB array, which
    np.load allocates and fills (the old reader did; 3 GB of memory); "size": its header has the
    right shape, the directory declares 3 GiB. The first is refused by its shape, the second by
    its size, before any array data is read: about 40 MB of memory, a few milliseconds."""
    model = ColorizationNet(2)
    members = weights_members(model) + [("config.npy", config_entry(), len(config_entry()))]
    name = "model/group4.0.weight.npy"
    shape = (3 << 28,) if claim == "shape" else model.group4[0].weight.shape
    header = npy_header(shape)
    bomb = (name, deflated_zeros(header, 3), len(header) + (3 << 30))
    path = write_zip(tmp_path / "bomb.npz", [m if m[0] != name else bomb for m in members])
    assert path.stat().st_size < 4 << 20
    out = subprocess.run([sys.executable, "-c", BOMB, str(path)], capture_output=True, text=True,
                         timeout=120)
    message, rss, _seconds = out.stdout.strip().splitlines()
    assert out.returncode == 0, out.stderr
    assert ("group4.0.weight has shape (805306368,)" if claim == "shape"
            else "is not the 4,736 that its header") in message
    assert int(rss.split()[0]) < 400  # megabytes: the Python process with numpy, nothing more


# --- values ---------------------------------------------------------------------------------------
def test_weights_that_are_not_finite_are_one_line_errors(tmp_path, capsys):
    model = ColorizationNet(2)
    model.group3[0].weight.data[0, 0, 0, 0] = np.nan
    model.head.bias.data[1] = np.inf
    path = save_weights(tmp_path / "nan.npz", model)
    photo = tmp_path / "p.png"
    from PIL import Image

    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(photo)
    one_line_error(["colorize", str(photo), "--weights", str(path), "-o", str(tmp_path / "out")], capsys,
                   "nan.npz", "values that are not finite")
    assert not (tmp_path / "out" / "p_color.png").exists()


def photos(folder, rng):
    from PIL import Image

    folder.mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (24, 28, 3), dtype=np.uint8)).save(folder / f"p{i}.png")
    return folder


def train(folder, out, *extra):
    return cli.main(["train", str(folder), "--size", "16", "--batch-size", "2", "--width", "2",
                     "--quiet", "--out", str(out), "--device", "cpu", "--val-every", "0",
                     "--sample-every", "0", *extra])


def test_resume_and_init_get_the_same_checks(tmp_path, rng, capsys):
    folder = photos(tmp_path / "photos", rng)
    assert train(folder, tmp_path / "run", "--steps", "2") == 0
    capsys.readouterr()
    arrays, config = read_npz(tmp_path / "run" / "checkpoint.npz")
    assert {"step", "optim/t", "optim/m.0", "model/head.weight"} <= set(arrays)
    arrays["optim/v.3"] = np.full_like(arrays["optim/v.3"], np.inf)
    arrays["config"] = np.asarray(json.dumps(config))
    bad = tmp_path / "bad.npz"
    checkpoint.save_npz_atomic(bad, arrays)
    for option in ("--resume", "--init"):
        if option == "--init":  # fine-tuning reads no optimizer state: spoil a weight instead
            arrays["model/group2.0.bias"] = np.full_like(arrays["model/group2.0.bias"], np.nan)
            checkpoint.save_npz_atomic(bad, arrays)
        code = train(folder, tmp_path / option[2:], "--steps", "3", option, str(bad))
        err = capsys.readouterr().err
        assert code == 1 and "bad.npz" in err and "values that are not finite" in err, err
        assert len(err.strip().splitlines()) == 1
    # a forged header in a resumed checkpoint is refused like in a weights file
    members = [(f"{k}.npy", npy(v), len(npy(v))) for k, v in read_npz(tmp_path / "run" / "checkpoint.npz")[0].items()]
    members.append(("config.npy", npy(arrays["config"]), len(npy(arrays["config"]))))
    forged = npy_header((1 << 30,))
    members = [m if m[0] != "optim/m.0.npy" else (m[0], forged, len(forged)) for m in members]
    code = train(folder, tmp_path / "forged", "--steps", "3", "--resume",
                 str(write_zip(tmp_path / "forged.npz", members)))
    assert code == 1 and "member 'optim/m.0' is forged or damaged" in capsys.readouterr().err


def test_init_skips_what_matches_no_parameter_by_name(tmp_path, rng, capsys):
    folder = photos(tmp_path / "photos", rng)
    classifier = save_weights(tmp_path / "cls.npz", ColorizationNet(2, head="classification"))
    assert train(folder, tmp_path / "ft", "--steps", "1", "--init", str(classifier)) == 0
    out, err = capsys.readouterr()
    assert "warning:" in err and "skipped 4 arrays that match no parameter" in err
    for name in ("head.weight (", "head.bias (", "bin_centers (", "class_weights ("):
        assert name in err
    assert "arrays copied" in out
    # an array that matches nothing is skipped only once its header has been checked
    members = weights_members(ColorizationNet(2)) + [("config.npy", config_entry(), len(config_entry()))]
    forged = npy_header((1 << 30,))
    path = write_zip(tmp_path / "extra.npz", members + [("model/extra.npy", forged, len(forged))])
    assert train(folder, tmp_path / "ft2", "--steps", "1", "--init", str(path)) == 1
    assert "member 'model/extra' is forged or damaged" in capsys.readouterr().err
    extra = npy(np.zeros((3, 3), np.float32))
    path = write_zip(tmp_path / "extra.npz", members + [("model/extra.npy", extra, len(extra))])
    assert train(folder, tmp_path / "ft3", "--steps", "1", "--init", str(path)) == 0
    assert "skipped 1 arrays that match no parameter of this network: extra (3, 3)" in capsys.readouterr().err


def test_colorize_loads_its_model_without_the_trainer(tmp_path):
    path = save_weights(tmp_path / "w.npz", ColorizationNet(2))
    code = ("import sys; from minicolor.cli import load_model_or_shipped; "
            f"load_model_or_shipped({str(path)!r}, 'cpu'); print('minicolor.train' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr
