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
             "source_url": "", "width": 320, "height": 240, "kind": "objects"} for n in ("b", "a")]
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


# --- the added packages, kinds and the validation / new held-out rules -------------------------
def test_the_64_heldout_photos_never_move():
    """examples/heldout.txt is the comparison set of the model card: its 64 names stay as they are."""
    import hashlib
    text = collect_photos.HELDOUT.read_bytes()
    assert len(text.split()) == 64
    assert hashlib.sha256(text).hexdigest() == (
        "0336184555ee38d83bcbf0f151fb54e719c887b1296956b3c6329bceb4ce4485")


def test_kinds_first_matching_pattern_wins():
    rules = collect_photos.read_kinds(
        "# a comment\n\npkg/chair-*  objects   # trailing comment\npkg/*  landscapes\n")
    assert rules == [("pkg/chair-*", "objects"), ("pkg/*", "landscapes")]
    assert collect_photos.kind_of(rules, "pkg/chair-red") == "objects"
    assert collect_photos.kind_of(rules, "pkg/field") == "landscapes"
    assert collect_photos.kind_of(rules, "other/chair-red") == ""
    with pytest.raises(ValueError, match="line 1"):
        collect_photos.read_kinds("pkg/* objects extra\n")


def test_validation_and_new_heldout_rule_is_fixed_per_kind():
    kinds = {f"p/{kind}{i:02d}": kind for kind in ("objects", "animals", "landscapes")
             for i in range(10)}
    kinds.update({f"p/person{i}": "people" for i in range(2)})
    chosen = collect_photos.choose_by_kind(kinds, 0.2, 17)
    assert chosen == collect_photos.choose_by_kind(dict(reversed(list(kinds.items()))), 0.2, 17)
    assert sum(c.startswith("p/objects") for c in chosen) == 2   # 20% of 10, per kind
    assert sum(c.startswith("p/animals") for c in chosen) == 2
    assert not any(c.startswith("p/landscapes") for c in chosen)  # not a kind users colorize
    assert sum(c.startswith("p/person") for c in chosen) == 0      # round(0.4) = 0
    assert chosen != collect_photos.choose_by_kind(kinds, 0.2, 18)


def test_committed_lists_are_disjoint_and_of_user_kinds():
    read = lambda path: set(path.read_text().split())  # noqa: E731
    heldout, new = read(collect_photos.HELDOUT), read(collect_photos.HELDOUT_NEW)
    validation = read(collect_photos.VALIDATION)
    assert len(new) >= 10 and len(validation) >= 30
    assert not (heldout & new) and not (heldout & validation) and not (new & validation)
    rules = collect_photos.read_kinds(collect_photos.KINDS.read_text())
    for key in new | validation:
        assert collect_photos.kind_of(rules, key) in collect_photos.USER_KINDS, key
    old_packages = {h.split("/")[0] for h in heldout} | {"lomiri-wallpapers-20.04", "palapeli-data"}
    assert not any(key.split("/")[0] in old_packages for key in new)  # new held-out: new packages
    assert any(key.split("/")[0] in old_packages for key in validation)  # from the old training part


def test_already_gray_follows_the_one_percent_rule():
    gray = np.full((100, 100, 3), 128, np.uint8)
    assert collect_photos.already_gray(Image.fromarray(gray))
    spot = gray.copy()
    spot[:5, :10] = (200, 40, 40)  # 0.5% of the pixels red: still a gray photo
    assert collect_photos.already_gray(Image.fromarray(spot))
    spot[:20, :20] = (200, 40, 40)  # 4%: a photo with color in it
    assert not collect_photos.already_gray(Image.fromarray(spot))


def test_near_copies_are_found_and_different_photos_are_not(rng):
    photo = Image.fromarray(rng.integers(0, 256, (12, 16, 3), np.uint8)).resize((320, 240), Image.BILINEAR)
    other = Image.fromarray(rng.integers(0, 256, (12, 16, 3), np.uint8)).resize((320, 240), Image.BILINEAR)
    buffer = io.BytesIO()
    photo.resize((160, 120), Image.LANCZOS).save(buffer, "JPEG", quality=70)  # smaller, recompressed
    copy = Image.open(buffer).convert("RGB")
    thumbs = {"a/photo": collect_photos.thumbprint(photo)}
    assert collect_photos.duplicate_of(collect_photos.thumbprint(copy), thumbs) == "a/photo"
    assert collect_photos.duplicate_of(collect_photos.thumbprint(other), thumbs) is None
    assert collect_photos.duplicate_of(collect_photos.thumbprint(photo), {}) is None


def corner_photo(path, size=(60, 40), **save):
    """A white photo with a red block in its top-left corner."""
    rgb = np.full((size[1], size[0], 3), 255, np.uint8)
    rgb[:10, :10] = (255, 0, 0)
    Image.fromarray(rgb).save(path, "JPEG", quality=95, **save)


def red_corner(image):
    """Which corner of ``image`` holds the red block: "tl", "tr", "bl" or "br"."""
    rgb = np.asarray(image.convert("RGB"), np.int32)
    h, w = rgb.shape[:2]
    corners = {"tl": rgb[:5, :5], "tr": rgb[:5, w - 5:], "bl": rgb[h - 5:, :5], "br": rgb[h - 5:, w - 5:]}
    return next(k for k, c in corners.items() if (c[..., 0] - c[..., 1]).mean() > 100)


def test_kphotoalbum_photos_are_turned_as_its_index_says(tmp_path):
    demo = tmp_path / "usr/share/kphotoalbum/demo"
    demo.mkdir(parents=True)
    for name in ("upright", "sideways"):
        corner_photo(demo / f"{name}.jpg")
    (demo / "index.xml").write_text(
        '<?xml version="1.0"?><KPhotoAlbum version="8"><images>'
        '<image file="upright.jpg" md5sum="x"/><image file="sideways.jpg" angle="90"/>'
        '<image file="movie.avi"/></images></KPhotoAlbum>')
    photos = {name: image for name, image, *_ in collect_photos.kphotoalbum(tmp_path, "1")}
    assert photos["upright"].size == (60, 40) and red_corner(photos["upright"]) == "tl"
    assert photos["sideways"].size == (40, 60) and red_corner(photos["sideways"]) == "tr"  # clockwise


def test_open_turns_phone_photos_upright_by_exif(tmp_path):
    exif = Image.Exif()
    exif[274] = 6  # "rotate 90 clockwise to view": how a phone held upright stores its photo
    corner_photo(tmp_path / "phone.jpg", exif=exif.tobytes())
    image = collect_photos._open(tmp_path / "phone.jpg")
    assert image.size == (40, 60) and red_corner(image) == "tr"


def test_scratch_keeps_photos_leaves_drawings_and_credits_mit(tmp_path):
    for rel in ("Indoors/kitchen.jpg", "Indoors/room1.jpg", "Nature/woods-and-bench.jpg"):
        path = tmp_path / "usr/share/scratch/Media/Backgrounds" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        corner_photo(path)
    doc = tmp_path / "usr/share/doc/scratch"
    doc.mkdir(parents=True)
    (doc / "copyright").write_text(
        "Files: *\nCopyright: 2011 MIT\nLicense: GPL-2\n\n"
        "Files: Help/* Media/* Projects\nCopyright: Copyright (c) 2011 Massachusetts Institute of "
        "Technology\nLicense: CC-BY-SA-3.0\n")
    photos = list(collect_photos.scratch(tmp_path, "1"))
    assert [p[0] for p in photos] == ["Indoors-kitchen"]
    assert photos[0][3:5] == ("CC-BY-SA-3.0", "Copyright (c) 2011 Massachusetts Institute of Technology")


def test_krank_refuses_a_copyright_that_no_longer_credits_its_photographer(tmp_path):
    doc = tmp_path / "usr/share/doc/krank"
    doc.mkdir(parents=True)
    (doc / "copyright").write_text("images: All rights reserved.\n")
    with pytest.raises(ValueError, match="Slava Anishenko"):
        list(collect_photos.krank(tmp_path, "1"))
