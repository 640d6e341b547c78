"""examples/collect_photos.py and its Qt resource reader, on files built here."""
import csv
import io
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent.parent / "examples"))
import collect_photos  # noqa: E402
from qt_rcc import RccError, RccFile  # noqa: E402


def build_rcc(tree, version=3):
    """A .rcc file in Qt's documented layout from {"dir/name": (bytes, "none" | "zlib")}.

    Nodes are laid out breadth first, the children of each directory sorted and contiguous,
    as Qt's rcc writes them.
    """
    root = {}
    for path, value in tree.items():
        node = root
        *dirs, name = path.split("/")
        for d in dirs:
            node = node.setdefault(d, {})
        node[name] = value
    names, name_offsets = bytearray(), {}

    def name_offset(name):
        if name not in name_offsets:
            name_offsets[name] = len(names)
            encoded = name.encode("utf-16-be")
            names.extend(struct.pack(">HI", len(name), 0) + encoded)
        return name_offsets[name]

    data = bytearray()
    nodes = [None]  # node 0, the root, filled below
    queue = [(0, "", root)]
    while queue:
        index, name, children = queue.pop(0)
        first = len(nodes)
        nodes.extend([None] * len(children))
        flags_name = (2, name_offset(name) if index else 0)
        nodes[index] = ("dir", flags_name, len(children), first)
        for k, (child, value) in enumerate(sorted(children.items())):
            if isinstance(value, dict):
                queue.append((first + k, child, value))
            else:
                payload, how = value
                flags = 0
                if how == "zlib":
                    payload, flags = struct.pack(">I", len(payload)) + zlib.compress(payload), 1
                nodes[first + k] = ("file", (flags, name_offset(child)), len(data))
                data.extend(struct.pack(">I", len(payload)) + payload)
    tree_bytes = bytearray()
    for node in nodes:
        if node[0] == "dir":
            _, (flags, offset), count, first = node
            tree_bytes += struct.pack(">IHII", offset, flags, count, first)
        else:
            _, (flags, offset), data_offset = node
            tree_bytes += struct.pack(">IHHHI", offset, flags, 0, 0, data_offset)
        if version >= 2:
            tree_bytes += struct.pack(">Q", 0)
    header_size = 24 if version >= 3 else 20
    tree_at = header_size
    data_at = tree_at + len(tree_bytes)
    names_at = data_at + len(data)
    header = b"qres" + struct.pack(">IIII", version, tree_at, data_at, names_at)
    if version >= 3:
        header += struct.pack(">I", 0)
    return header + bytes(tree_bytes) + bytes(data) + bytes(names)


@pytest.mark.parametrize("version", [1, 2, 3])
def test_rcc_reader_lists_and_reads_plain_and_zlib_files(version):
    files = {"a/b/photo.bin": (b"\x00\x01photo bytes" * 10, "zlib"),
             "a/README": (b"Files: photo.bin\nLicense: CC0-1.0\n", "none"),
             "top.txt": ("élan".encode(), "none")}
    rcc = RccFile(build_rcc(files, version))
    assert rcc.paths() == sorted(files)
    for path, (payload, how) in files.items():
        assert rcc.read(path) == payload
        assert rcc.compression(path) == how


def test_rcc_reader_rejects_other_files():
    with pytest.raises(RccError, match="qres"):
        RccFile(b"PK\x03\x04" + bytes(40), "archive.zip")
    with pytest.raises(KeyError, match="no file"):
        RccFile(build_rcc({"x": (b"1", "none")})).read("y")


def test_copyright_paragraphs_credit_files_by_pattern():
    text = ("Copyright: Someone\nLicense: Public Domain\nFiles:\nfish1.webp\nfish2.webp\n\n"
            "Files: nature/Dune.jpg\n       nature/Wood.jpg\nCopyright: 2007, A\n           2008, B\n"
            "License: GPL-2+\nSource: https://example.org/x.jpg\n")
    paragraphs = collect_photos.parse_copyright(text)
    assert collect_photos.licence_for(paragraphs, "fish2.webp") == ("Public Domain", "Someone", "")
    assert collect_photos.licence_for(paragraphs, "/usr/share/x/nature/Wood.jpg") == (
        "GPL-2+", "2007, A 2008, B", "https://example.org/x.jpg")
    assert collect_photos.licence_for(paragraphs, "other.jpg") == ("", "", "")
    # gcompris' details README: file names straight after the licence, the photo in a comment
    text = ("Copyright: 2008 B. C.\nLicense: CC-BY 4.0\nCastle_0.webp\nCastle_background.webp\n"
            "Comment: based on a photo by G. P., license CC-BY 3.0\n")
    assert collect_photos.licence_for(collect_photos.parse_copyright(text), "Castle_background.webp") == (
        "CC-BY 4.0", "2008 B. C. (based on a photo by G. P., license CC-BY 3.0)", "")


def test_manifest_round_trip(tmp_path):
    rows = [{"file": f"train/pkg/{n}.jpg", "split": "train", "package": "pkg", "version": "1.0",
             "original_path": f"/usr/share/{n}.jpg", "licence": "CC0-1.0", "credit": 'A "B", C',
             "source_url": "", "width": 320, "height": 240} for n in ("b", "a")]
    path = collect_photos.write_manifest(rows, tmp_path / "manifest.csv")
    back = collect_photos.read_manifest(path)
    assert [r["file"] for r in back] == ["train/pkg/a.jpg", "train/pkg/b.jpg"]
    assert back[0]["credit"] == 'A "B", C' and back[0]["width"] == "320"
    with open(path, newline="") as f:
        assert next(csv.reader(f)) == list(collect_photos.MANIFEST_FIELDS)


def test_heldout_rule_is_fixed_and_per_package():
    names = {"big": [f"p{i:02d}" for i in range(20)], "small": ["x", "y"],
             "lomiri-wallpapers-16.04": ["Picture_0B_by_freespace", "Bridge_by_Sander_Klootwijk"]}
    chosen = collect_photos.choose_heldout(names)
    assert chosen == collect_photos.choose_heldout({k: v[::-1] for k, v in names.items()})
    assert sum(c.startswith("big/") for c in chosen) == 4  # 20% of 20
    assert not any(c.startswith("small/") for c in chosen)
    assert "lomiri-wallpapers-16.04/Picture_0B_by_freespace" in chosen
    assert "lomiri-wallpapers-16.04/Bridge_by_Sander_Klootwijk" not in chosen


def test_the_committed_heldout_list_spans_the_sources():
    heldout = collect_photos.HELDOUT.read_text().split()
    assert len(heldout) >= 50 and len(set(heldout)) == len(heldout)
    assert len({h.split("/")[0] for h in heldout}) >= 4


def test_panorama_tiles_keep_their_longest_opaque_band():
    rgba = np.zeros((40, 200, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[5:8, :, 3] = 255    # a thin opaque band
    rgba[20:36, :, 3] = 255  # the ground
    rgba[30, 0, 3] = 128     # one stray half-transparent pixel (0.5% of its row)
    out = collect_photos.crop_opaque_rows(Image.fromarray(rgba, "RGBA"))
    assert out.mode == "RGB" and out.size == (200, 16)
    buffer = io.BytesIO()
    out.save(buffer, "PNG")  # a plain RGB image
