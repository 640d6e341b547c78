"""Build the offline photo corpus from Debian packages: download, unpack, extract, resize, credit.

    python examples/collect_photos.py                    # -> data/corpus/ (529 photos)
    python examples/collect_photos.py --original         # the 335 the shipped weights saw
    python examples/collect_photos.py --out data/corpus --short-side 288

Nothing is installed: each package is fetched with ``apt-get download`` (run ``apt-get update``
once first) into ``data/debs/`` and unpacked with ``dpkg-deb -x`` into ``data/unpacked/``.
Then every photo is read (JPEG, PNG, or WebP inside a Qt resource file, see qt_rcc.py), turned
upright (EXIF orientation; KPhotoAlbum's index.xml), resized so its shorter side is at most
``--short-side`` (never enlarged; photos whose shorter side is under ``--min-side``, or under
NEW_MIN_SIDE for the added packages, are left out), and saved as JPEG (quality 92) into

    data/corpus/train/<package>/<name>.jpg        photos that training may use
    data/corpus/validation/<package>/<name>.jpg   for choosing a model (examples/validation.txt)
    data/corpus/heldout/<package>/<name>.jpg      the 64 held-out test photos (examples/heldout.txt)
    data/corpus/heldout-new/<package>/<name>.jpg  held-out photos of the added packages
                                                  (examples/heldout-new.txt)
    data/corpus/manifest.csv                      one row per photo: file, split, package,
                                                  version, original path, licence, credit,
                                                  source URL, size, kind

The photos, their packages and where their licences come from (the first seven made the corpus
the shipped weights were trained on; ``--original`` builds only those, as they were):

    lomiri-wallpapers-16.04      13  /usr/share/backgrounds/*_by_*.jpg without analogpattern*,
                                     umang* (abstract); debian/copyright (CC-BY-4.0, CC-BY-SA-4.0,
                                     CC0-1.0)
    lomiri-wallpapers-20.04       1  Kleiber_by_Lukas_Baubkus.jpg; debian/copyright (CC-BY-SA-3.0)
    plasma-workspace-wallpapers   9  the photo wallpapers (the rest are renders); metadata.json
    palapeli-data                 4  /usr/share/palapeli/collection/*.jpg without the bridge
                                     photo (examples/roebling-bridge.jpg); each .desktop file
    mate-backgrounds             12  /usr/share/backgrounds/mate/nature/*.jpg; debian/copyright
                                     (GPL-2+)
    gcompris-qt-data            275  WebP files inside /usr/share/gcompris-qt/rcc/*.rcc, listed
                                     in examples/gcompris-photos.txt; the README beside each
                                     (public domain, CC0, CC-BY 2.0/3.0, CC-BY-SA; one GPL-2+)
    stellarium-data              25  landscape panorama tiles (see STELLARIUM); the sky is
                                     transparent, so each tile is cropped to its fully opaque
                                     rows; GPL-2+, authors in each landscape.ini
  added (photos of objects, animals, food, people and rooms; the licences from debian/copyright):
    scratch                      53  Scratch 1.4's photo backgrounds (rooms, streets, fields,
                                     sports grounds) without its drawings; CC-BY-SA-3.0,
                                     Massachusetts Institute of Technology
    kphotoalbum                  24  the demo album (people, pets, trips); GPL-2+, its author
    gnome-control-center-data    15  the 512-pixel user pictures (objects, a cat, tomatoes);
                                     "Files: *" (GPL-2+ and ... and CC0-1.0), no photographer named
    kalzium-data                 19  laboratory equipment (of 39; the rest are too narrow);
                                     GPL-2.0-or-later, the program's authors
    tuxpaint-data                19  the photo templates (bark, sea, sheep); GPL-2+, Bill Kendrick
    puzzle-jigsaw                 2  a cat and a tiger; CC0-1.0 (Pexels)
    krank                        40  underwater photos (reefs, fish, a turtle); public domain,
                                     Slava Anishenko (one of the 41 is a copy of another)
    forensics-samples-files       6  a forensics test set's photos (dogs, a table, a city);
                                     CC-BY-SA-4.0, its author
    libelementary-data           12  EFL's test photos (dogs, a man, skies, stone); BSD-2-clause
    libjxl-testdata               4  tulips, blossom, a flower, a shore; CC0 (3), BSD-3-clause (1)

Each photo's kind (objects, animals, food, people, rooms, plants, buildings, landscapes,
textures) comes from the first matching line of examples/photo-kinds.txt. The added packages'
photos that are already gray, or near-copies of a photo collected before them, are left out.

The splits never move. examples/heldout.txt (the fixed rule ``choose_heldout``) is the
comparison set of the model card. examples/heldout-new.txt and examples/validation.txt come from
``choose_by_kind``: 20% of each kind users mostly colorize (objects, animals, food, people,
rooms), first of the added packages' photos (new held-out), then of every photo not held out
(validation, so mostly from the old training part). Each list is written once when it is missing
and then used as it is; a photo that no list names is a training photo.
"""
import argparse
import csv
import fnmatch
import io
import json
import posixpath
import subprocess
import sys
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).parent))
from qt_rcc import RccFile, ZstdUnavailable  # noqa: E402

HERE = Path(__file__).parent
HELDOUT = HERE / "heldout.txt"
GCOMPRIS_LIST = HERE / "gcompris-photos.txt"
PLASMA = ("BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "EveningGlow", "FallenLeaf",
          "Kite", "Path", "summer_1am")
STELLARIUM = ["landscapes/garching/garching-gl1.png", "landscapes/garching/garching-gl2.png",
              "landscapes/garching/garching-gl3.png", "landscapes/garching/garching-gl4.png",
              "landscapes/garching/garching-ground3.png",
              "landscapes/grossmugl/grossmugl_leeberg_crop11.25_2048.png"]
STELLARIUM += [f"landscapes/guereins/guereins{i}.png" for i in (1, 2, 3, 4, 5, 6, 7, 8, "b")]
STELLARIUM += [f"landscapes/hurricane/hurricane{i}.png" for i in (1, 2, 3, 4, 5, 6, 7, 8, "b")]
STELLARIUM += ["landscapes/trees/trees_512.png", "scenery3d/Sterngarten/Sterngarten_20100320.png"]
HELDOUT_FRACTION, HELDOUT_SEED = 0.2, 13
KINDS = HERE / "photo-kinds.txt"
VALIDATION = HERE / "validation.txt"
HELDOUT_NEW = HERE / "heldout-new.txt"
USER_KINDS = ("objects", "animals", "food", "people", "rooms")  # what users mostly colorize
VALIDATION_FRACTION, VALIDATION_SEED = 0.2, 17
HELDOUT_NEW_FRACTION, HELDOUT_NEW_SEED = 0.2, 29
NEW_MIN_SIDE = 200  # the added packages' photos must have at least this shorter side


# --- packages ---------------------------------------------------------------------------------
def unpack(package, debs, unpacked):
    """Download ``package`` (unless its .deb is already in ``debs``) and unpack it; its root."""
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob(f"{package}_*.deb"))
    if not found:
        subprocess.run(["apt-get", "download", package], cwd=debs, check=True)
        found = sorted(debs.glob(f"{package}_*.deb"))
    root = unpacked / package
    if not root.is_dir():  # unpacked beside, then renamed: an interrupted unpack is redone
        partial = unpacked / (package + ".partial")
        partial.mkdir(parents=True, exist_ok=True)
        subprocess.run(["dpkg-deb", "-x", str(found[-1]), str(partial)], check=True)
        partial.rename(root)
    version = found[-1].name.split("_")[1].replace("%3a", ":")
    return root, version


# --- licences ---------------------------------------------------------------------------------
def parse_copyright(text):
    """Debian-style copyright paragraphs (also gcompris' READMEs) -> [(patterns, fields)]."""
    paragraphs, fields, key = [], {}, None
    for line in text.splitlines() + [""]:
        if not line.strip():
            if fields:
                patterns = fields.get("files", "").split()
                paragraphs.append((patterns, fields))
            fields, key = {}, None
        elif key and line[0] in " \t":
            fields[key] += "\n" + line.strip()  # a continuation line
        elif ":" not in line:  # gcompris lists file names unindented, some without "Files:"
            fields["files"] = (fields.get("files", "") + "\n" + line.strip()).strip()
        elif ":" in line:
            key, value = line.split(":", 1)
            key = key.strip().lower()
            fields[key] = value.strip()
    return paragraphs


def licence_for(paragraphs, path):
    """(licence, credit, source) of the last paragraph whose Files patterns match ``path``."""
    for patterns, fields in reversed(paragraphs):
        for pattern in patterns:
            if fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(path, "*/" + pattern):
                credit = " ".join(fields.get("copyright", "").split())
                comment = " ".join(fields.get("comment", "").split())
                credit += f" ({comment})" if comment.lower().startswith("based on") else ""
                return fields.get("license", "").split("\n")[0], credit, fields.get("source", "")
    return "", "", ""


def desktop_fields(path):
    """key=value lines of a .desktop or .ini file (untranslated keys only)."""
    out = {}
    for line in Path(path).read_text(errors="replace").splitlines():
        if "=" in line and "[" not in line.split("=", 1)[0]:
            key, value = line.split("=", 1)
            out.setdefault(key.strip().lower(), value.strip())
    return out


# --- the photos of each package -----------------------------------------------------------------
def lomiri_16(root, version):
    share = root / "usr/share/backgrounds"
    paragraphs = parse_copyright((root / "usr/share/doc/lomiri-wallpapers-16.04/copyright").read_text())
    for path in sorted(share.glob("*_by_*.jpg")):
        if path.name.startswith(("analogpattern", "umang")):
            continue
        licence, credit, _ = licence_for(paragraphs, "16.04/" + path.name)
        yield path.stem, _open(path), f"/usr/share/backgrounds/{path.name}", licence, credit, ""


def lomiri_20(root, version):
    path = root / "usr/share/backgrounds/Kleiber_by_Lukas_Baubkus.jpg"
    paragraphs = parse_copyright((root / "usr/share/doc/lomiri-wallpapers-20.04/copyright").read_text())
    licence, credit, _ = licence_for(paragraphs, "20.04/" + path.name)
    yield path.stem, _open(path), f"/usr/share/backgrounds/{path.name}", licence, credit, ""


def plasma(root, version):
    for name in PLASMA:
        folder = root / "usr/share/wallpapers" / name
        meta = json.loads((folder / "metadata.json").read_text())["KPlugin"]
        credit = ", ".join(a.get("Name", "") for a in meta.get("Authors", []))
        original = f"/usr/share/wallpapers/{name}/contents/images/2560x1600.jpg"
        yield name, _open(root / original.lstrip("/")), original, meta.get("License", ""), credit, ""


def palapeli(root, version):
    for path in sorted((root / "usr/share/palapeli/collection").glob("*.jpg")):
        if path.stem == "cincinnati-bridge":  # examples/roebling-bridge.jpg, the overfit photo
            continue
        meta = desktop_fields(path.with_suffix(".desktop"))
        yield (path.stem, _open(path), f"/usr/share/palapeli/collection/{path.name}",
               meta.get("x-kde-plugininfo-license", ""), meta.get("x-kde-plugininfo-author", ""),
               meta.get("x-kde-plugininfo-website", ""))


def mate(root, version):
    paragraphs = parse_copyright((root / "usr/share/doc/mate-backgrounds/copyright").read_text())
    for path in sorted((root / "usr/share/backgrounds/mate/nature").glob("*.jpg")):
        licence, credit, _ = licence_for(paragraphs, "nature/" + path.name)
        yield path.stem, _open(path), f"/usr/share/backgrounds/mate/nature/{path.name}", licence, credit, ""


def gcompris(root, version, counts):
    """The listed WebP photos inside the .rcc files, credited by the README in their folder."""
    wanted = [line.strip() for line in GCOMPRIS_LIST.read_text().splitlines() if line.strip()]
    where, readmes = {}, {}
    for rcc_path in sorted((root / "usr/share/gcompris-qt/rcc").glob("*.rcc")):
        rcc = RccFile.open(rcc_path)
        for inner in rcc.paths():
            where[inner] = (rcc, rcc_path.name)
            if posixpath.basename(inner) == "README":
                readmes[posixpath.dirname(inner)] = rcc
    for inner in wanted:
        if inner not in where:
            counts["missing"] = counts.get("missing", 0) + 1
            print(f"gcompris: {inner} is in no .rcc file; skipped", file=sys.stderr)
            continue
        rcc, rcc_name = where[inner]
        try:
            data = rcc.read(inner)
        except ZstdUnavailable as exc:
            counts["zstd"] = counts.get("zstd", 0) + 1
            print(f"gcompris: {exc}; skipped", file=sys.stderr)
            continue
        licence, credit, source = "", "", ""
        folder = posixpath.dirname(inner)
        while folder and not licence:  # the nearest README up the tree that names the file
            if folder in readmes:
                text = readmes[folder].read(folder + "/README").decode("utf-8", "replace")
                licence, credit, source = licence_for(parse_copyright(text),
                                                      posixpath.relpath(inner, folder))
            folder = posixpath.dirname(folder)
        activity = inner.split("/activities/")[1].split("/")[0]
        stem = f"{activity}-{posixpath.basename(posixpath.dirname(inner))}-{posixpath.basename(inner)}"
        yield (stem.rsplit(".", 1)[0], _open(io.BytesIO(data)),
               f"/usr/share/gcompris-qt/rcc/{rcc_name}:{inner}", licence, credit, source)


def stellarium(root, version, min_side):
    share = root / "usr/share/stellarium"
    for rel in STELLARIUM:
        image = Image.open(share / rel)
        image.load()
        rgb = crop_opaque_rows(image)
        if min(rgb.size) < min_side:
            print(f"stellarium: {rel} has only {min(rgb.size)} opaque rows or columns; skipped",
                  file=sys.stderr)
            continue
        ini = share / rel.rsplit("/", 1)[0] / ("landscape.ini" if rel.startswith("landscapes")
                                               else "scenery3d.ini")
        credit = desktop_fields(ini).get("author", "") if ini.is_file() else ""
        yield (f"{rel.split('/')[1]}-{Path(rel).stem}", rgb, f"/usr/share/stellarium/{rel}",
               "GPL-2+", credit, "")


def crop_opaque_rows(image):
    """The longest band of fully opaque rows (panorama tiles have a transparent sky), as RGB."""
    if image.mode not in ("RGBA", "LA", "PA", "P"):
        return image.convert("RGB")
    alpha = np.asarray(image.convert("RGBA"))[..., 3]
    opaque = np.concatenate([[0], (alpha >= 250).mean(axis=1) >= 0.99, [0]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(opaque))  # starts and ends of the runs of opaque rows
    starts, ends = edges[::2], edges[1::2]
    if not len(starts):
        return image.convert("RGB").crop((0, 0, image.width, 0))
    longest = int(np.argmax(ends - starts))  # the longest run
    top, bottom = int(starts[longest]), int(ends[longest])
    rgba = image.convert("RGBA").crop((0, top, image.width, bottom))
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))  # the odd stray pixel
    return Image.alpha_composite(white, rgba).convert("RGB")


# --- the photos added for objects, animals, food, people and rooms (not in the shipped weights) ---
SCRATCH_DRAWINGS = {"Indoors/party-room", "Indoors/room1", "Indoors/room2", "Indoors/room3",
                    "Indoors/spotlight-stage", "Nature/woods-and-bench", "Outdoors/school2"}
GNOME_FACES = ("bicycle", "book", "calculator", "cat", "coffee2", "flower2", "gamepad", "guitar2",
               "headphones", "hummingbird", "mountain", "plane", "surfer", "tomatoes", "tree")
ELEMENTARY = ("mystrale", "mystrale_2", "twofish", "plant_01", "panel_01", "rock_01", "rock_02",
              "sky_01", "sky_02", "sky_03", "sky_04", "wood_01")
JXL = ("external/wesaturate/500px/cvo9xd_keong_macan_srgb8.png",
       "external/wesaturate/500px/tmshre_riaphotographs_srgb8.png",
       "external/wesaturate/500px/u76c0g_bliznaca_srgb8.png", "jxl/flower/flower.png")


def debian_copyright(root, package):
    return parse_copyright((root / f"usr/share/doc/{package}/copyright").read_text())


def scratch(root, version):
    """Scratch 1.4's photo backgrounds (rooms, streets, fields), without its drawn ones."""
    paragraphs = debian_copyright(root, "scratch")
    for path in sorted((root / "usr/share/scratch/Media/Backgrounds").glob("*/*.jpg")):
        folder = path.parent.name
        if f"{folder}/{path.stem}" in SCRATCH_DRAWINGS:
            continue
        licence, credit, _ = licence_for(paragraphs, f"Media/Backgrounds/{folder}/{path.name}")
        yield (f"{folder}-{path.stem}", _open(path),
               f"/usr/share/scratch/Media/Backgrounds/{folder}/{path.name}", licence, credit, "")


def kphotoalbum(root, version):
    """The demo album: its author's friends, pets and trips, turned upright as its index.xml says."""
    demo = root / "usr/share/kphotoalbum/demo"
    angles = kphotoalbum_angles((demo / "index.xml").read_text())
    for path in sorted(demo.glob("*.jpg")):
        image = _open(path).rotate(-angles.get(path.name, 0), expand=True)  # angle is clockwise
        yield (path.stem, image, f"/usr/share/kphotoalbum/demo/{path.name}", "GPL-2+",
               "Jesper K. Pedersen (KPhotoAlbum's author; debian/copyright)", "")


def kphotoalbum_angles(index_xml):
    """{file: clockwise degrees} from a KPhotoAlbum index.xml (photos stored sideways there)."""
    return {node.get("file"): int(node.get("angle", "0")) % 360
            for node in ET.fromstring(index_xml).iter("image") if node.get("file")}


def gnome_faces(root, version):
    """The 512-pixel user pictures of GNOME Settings (the 96-pixel legacy ones are too small)."""
    paragraphs = debian_copyright(root, "gnome-control-center-data")
    for name in GNOME_FACES:
        original = f"/usr/share/pixmaps/faces/{name}.jpg"
        licence, _, _ = licence_for(paragraphs, f"panels/user-accounts/data/faces/{name}.jpg")
        yield (name, _open(root / original.lstrip("/")), original, licence,
               "GNOME Settings authors (debian/copyright names no photographer)", "")


def kalzium(root, version):
    """Photos of laboratory equipment, most on a bench or a plain background."""
    paragraphs = debian_copyright(root, "kalzium-data")
    for path in sorted((root / "usr/share/kalzium/data/toolpics").glob("*.jpg")):
        licence, credit, _ = licence_for(paragraphs, f"data/toolpics/{path.name}")
        yield path.stem, _open(path), f"/usr/share/kalzium/data/toolpics/{path.name}", licence, credit, ""


def tuxpaint_templates(root, version):
    """Tux Paint's photo templates (bark, sea, sheep, a lighthouse), by Bill Kendrick (AUTHORS.txt)."""
    paragraphs = debian_copyright(root, "tuxpaint-data")
    for path in sorted((root / "usr/share/tuxpaint/templates").glob("*.jpg")):
        licence, credit, _ = licence_for(paragraphs, f"templates/{path.name}")
        yield path.stem, _open(path), f"/usr/share/tuxpaint/templates/{path.name}", licence, credit, ""


def puzzle_jigsaw(root, version):
    """The two CC0 photos (a cat, a tiger) that Debian kept of the game's samples."""
    paragraphs = debian_copyright(root, "puzzle-jigsaw")
    for path in sorted((root / "usr/share/puzzle-jigsaw/samples").glob("*.jp*g")):
        licence, credit, _ = licence_for(paragraphs, f"samples/{path.name}")
        yield path.stem, _open(path), f"/usr/share/puzzle-jigsaw/samples/{path.name}", licence, credit, ""


def krank(root, version):
    """Underwater photos (reefs, fish, a turtle) behind the game's levels."""
    text = (root / "usr/share/doc/krank/copyright").read_text()
    if "Slava Anishenko" not in text or "Public Domain" not in text:  # not a DEP-5 file: check it
        raise ValueError("krank's copyright no longer credits its images to Slava Anishenko "
                         "(public domain): read it again before using them")
    folder = "usr/share/games/krank/levels/unera-backgrounds"
    for path in sorted((root / folder).glob("*.jpg")):
        yield path.stem, _open(path), f"/{folder}/{path.name}", "Public Domain", "Slava Anishenko", ""


def forensics(root, version):
    """The photos of a forensics test set (dogs, a table, a circuit board, a city), by its author."""
    paragraphs = debian_copyright(root, "forensics-samples-files")
    folder = root / "usr/share/forensics-samples/original-files"
    for path in sorted(folder.glob("pic*/IMG*")):
        rel = f"original-files/{path.parent.name}/{path.name}"
        licence, credit, _ = licence_for(paragraphs, rel)
        yield (f"{path.parent.name}-{path.stem}", _open(path),
               f"/usr/share/forensics-samples/{rel}", licence, credit, "")


def elementary(root, version):
    """The test photos of EFL's widget library (dogs, a man, skies, stone, wood)."""
    paragraphs = debian_copyright(root, "libelementary-data")
    for name in ELEMENTARY:
        original = f"/usr/share/elementary/images/{name}.jpg"
        licence, credit, _ = licence_for(paragraphs, f"data/elementary/images/{name}.jpg")
        yield name, _open(root / original.lstrip("/")), original, licence, credit, ""


def jxl_testdata(root, version):
    """Four photos of the JPEG XL test set (tulips, blossom, a flower, a rocky shore)."""
    paragraphs = debian_copyright(root, "libjxl-testdata")
    for rel in JXL:
        licence, credit, _ = licence_for(paragraphs, rel)
        yield (Path(rel).stem, _open(root / "usr/share/libjxl-testdata" / rel),
               f"/usr/share/libjxl-testdata/{rel}", licence, credit or "none stated", "")


def _open(source):
    """A photo as RGB, turned upright as its EXIF orientation says (phone photos are stored sideways)."""
    image = Image.open(source)
    image.load()
    return ImageOps.exif_transpose(image).convert("RGB")


# --- writing ----------------------------------------------------------------------------------
MANIFEST_FIELDS = ("file", "split", "package", "version", "original_path", "licence", "credit",
                   "source_url", "width", "height", "kind")


def resized(image, short_side):
    scale = short_side / min(image.size)
    if scale >= 1:
        return image
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                        Image.LANCZOS)


def write_manifest(rows, path):
    """rows (dicts with MANIFEST_FIELDS) -> CSV, sorted by file, written through a rename."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=MANIFEST_FIELDS)
        writer.writeheader()
        for row in sorted(rows, key=lambda r: r["file"]):
            writer.writerow({k: row[k] for k in MANIFEST_FIELDS})
    tmp.replace(path)
    return path


def read_manifest(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def choose_heldout(names_by_package, fraction=HELDOUT_FRACTION, seed=HELDOUT_SEED):
    """The fixed rule: "package/name" of the held-out photos.

    For the packages the old shipped model trained on, its own validation photos (the only
    ones it never saw). For every other package with at least 5 photos, round(fraction * n)
    of its sorted names, drawn by default_rng([seed, crc32(package)]).
    """
    old = {"lomiri-wallpapers-16.04": {"Picture_0B_by_freespace", "greentock_by_Peter_Nerlich"},
           "plasma-workspace-wallpapers": {"DarkestHour"}, "palapeli-data": set()}
    chosen = []
    for package, names in sorted(names_by_package.items()):
        names = sorted(names)
        if package in old:
            chosen += [f"{package}/{n}" for n in names if n in old[package]]
        elif len(names) >= 5:
            rng = np.random.default_rng([seed, zlib.crc32(package.encode())])
            pick = rng.permutation(len(names))[: round(fraction * len(names))]
            chosen += [f"{package}/{names[i]}" for i in sorted(pick)]
    return sorted(chosen)


def read_kinds(text):
    """photo-kinds.txt -> [(pattern, kind)]: one "package/name-pattern kind" per line, # comments."""
    rules = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) != 2:
            raise ValueError(f"photo-kinds line {number}: expected 'package/name kind', got {line!r}")
        rules.append((fields[0], fields[1]))
    return rules


def kind_of(rules, key):
    """The kind of the first rule whose pattern matches "package/name", or "" if none does."""
    return next((kind for pattern, kind in rules if fnmatch.fnmatchcase(key, pattern)), "")


def choose_by_kind(kinds, fraction, seed):
    """The fixed rule for the validation and new held-out photos: for each of USER_KINDS,
    round(fraction * n) of the n sorted "package/name" keys of that kind in ``kinds``
    ({key: kind}), drawn by default_rng([seed, crc32(kind)]). Other kinds are never chosen."""
    chosen = []
    for kind in USER_KINDS:
        keys = sorted(k for k, v in kinds.items() if v == kind)
        rng = np.random.default_rng([seed, zlib.crc32(kind.encode())])
        chosen += [keys[i] for i in rng.permutation(len(keys))[: round(fraction * len(keys))]]
    return sorted(chosen)


def read_or_choose(path, choose):
    """The committed list at ``path`` as a set; if there is none yet, ``choose()`` it and write it."""
    if path.is_file():
        return set(path.read_text().split())
    chosen = choose()
    path.write_text("".join(f"{key}\n" for key in sorted(chosen)))
    print(f"wrote {path} ({len(chosen)} photos)")
    return set(chosen)


def already_gray(image, threshold=5.0, share=0.01):
    """True when fewer than ``share`` of the pixels reach chroma |ab| >= ``threshold`` in Lab: the
    rule by which ``minicolor evaluate`` calls a photo black-and-white (measured on a thumbnail)."""
    from minicolor.color import rgb_to_lab  # here, so that --original needs only numpy and Pillow
    small = image.copy()
    small.thumbnail((256, 256))
    lab = rgb_to_lab(np.asarray(small, np.float64) / 255)
    return bool((np.hypot(lab[..., 1], lab[..., 2]) >= threshold).mean() < share)


def thumbprint(image):
    """16x16 lightness, zero mean and unit norm: two copies of one photo (rescaled, recompressed,
    slightly cropped) give a dot product near 1, two different photos far less."""
    small = np.asarray(image.convert("L").resize((16, 16), Image.BILINEAR), np.float64).ravel()
    small = small - small.mean()
    return small / (np.linalg.norm(small) + 1e-9)


def duplicate_of(thumb, thumbs, threshold=0.97):
    """The key in ``thumbs`` ({key: thumbprint}) of a near-copy of the photo of ``thumb``, or None."""
    if not thumbs:
        return None
    keys = list(thumbs)
    scores = np.stack([thumbs[k] for k in keys]) @ thumb
    best = int(np.argmax(scores))
    return keys[best] if scores[best] >= threshold else None


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="data/corpus", help="corpus folder (default data/corpus)")
    parser.add_argument("--work", default="data", help="where debs/ and unpacked/ go (default data)")
    parser.add_argument("--short-side", type=int, default=288,
                        help="resize so the shorter side is at most this (default 288)")
    parser.add_argument("--min-side", type=int, default=128,
                        help="leave out photos whose shorter side is below this (default 128; "
                             f"at least {NEW_MIN_SIDE} for the added packages)")
    parser.add_argument("--original", action="store_true",
                        help="only the 335-photo corpus the shipped weights were trained on: the "
                             "seven original packages, train/ and heldout/ as they were")
    args = parser.parse_args()
    debs, unpacked, out = Path(args.work) / "debs", Path(args.work) / "unpacked", Path(args.out)
    counts = {}
    original = {
        "lomiri-wallpapers-16.04": lomiri_16, "lomiri-wallpapers-20.04": lomiri_20,
        "plasma-workspace-wallpapers": plasma, "palapeli-data": palapeli, "mate-backgrounds": mate,
        "gcompris-qt-data": lambda r, v: gcompris(r, v, counts),
        "stellarium-data": lambda r, v: stellarium(r, v, args.min_side),
    }
    added = {
        "scratch": scratch, "kphotoalbum": kphotoalbum, "gnome-control-center-data": gnome_faces,
        "kalzium-data": kalzium, "tuxpaint-data": tuxpaint_templates, "puzzle-jigsaw": puzzle_jigsaw,
        "krank": krank, "forensics-samples-files": forensics, "libelementary-data": elementary,
        "libjxl-testdata": jxl_testdata,
    }
    sources = original if args.original else {**original, **added}
    rules = read_kinds(KINDS.read_text())

    def skip(package, name, why, what):
        counts[why] = counts.get(why, 0) + 1
        print(f"{package}: {name} {what}; skipped", file=sys.stderr)

    photos, thumbs = [], {}  # (package, version, name, image, original, licence, credit, url)
    for package, extract in sources.items():
        root, version = unpack(package, debs, unpacked)
        min_side = args.min_side if package in original else max(args.min_side, NEW_MIN_SIDE)
        n = 0
        for name, image, original_path, licence, credit, url in extract(root, version):
            key = f"{package}/{name}"
            if min(image.size) < min_side:
                skip(package, name, "small", f"is {image.size[0]}x{image.size[1]}, under {min_side}")
                continue
            thumb = thumbprint(image)
            if package in added:  # the original corpus stays as it was
                if already_gray(image):
                    skip(package, name, "gray", "is already gray")
                    continue
                twin = duplicate_of(thumb, thumbs)
                if twin:
                    skip(package, name, "duplicate", f"is a copy of {twin}")
                    continue
            thumbs[key] = thumb
            photos.append((package, version, name, resized(image, args.short_side), original_path,
                           licence, credit, url))
            n += 1
        print(f"{package} {version}: {n} photos")
    names, kinds = {}, {}
    for package, _, name, *_ in photos:
        names.setdefault(package, []).append(name)
        kinds[f"{package}/{name}"] = kind_of(rules, f"{package}/{name}")
    unsorted = sorted(k for k, v in kinds.items() if not v)
    if unsorted:
        print(f"no kind in {KINDS.name} for {len(unsorted)} photos (never validation or held out): "
              + ", ".join(unsorted), file=sys.stderr)
    heldout = read_or_choose(HELDOUT, lambda: choose_heldout(names))
    heldout_new, validation = set(), set()
    if not args.original:
        heldout_new = read_or_choose(HELDOUT_NEW, lambda: choose_by_kind(
            {k: v for k, v in kinds.items() if k.split("/")[0] in added},
            HELDOUT_NEW_FRACTION, HELDOUT_NEW_SEED))
        validation = read_or_choose(VALIDATION, lambda: choose_by_kind(
            {k: v for k, v in kinds.items() if k not in heldout | heldout_new},
            VALIDATION_FRACTION, VALIDATION_SEED))
    for key, listed in (("heldout-new", heldout_new), ("validation", validation)):
        if listed & heldout:
            raise ValueError(f"{key} shares photos with {HELDOUT.name}: {sorted(listed & heldout)}")
    rows = []
    for package, version, name, image, original_path, licence, credit, url in photos:
        key = f"{package}/{name}"
        split = ("heldout" if key in heldout else "heldout-new" if key in heldout_new
                 else "validation" if key in validation else "train")
        file = f"{split}/{package}/{name}.jpg"
        (out / file).parent.mkdir(parents=True, exist_ok=True)
        image.save(out / file, quality=92)
        rows.append({"file": file, "split": split, "package": package, "version": version,
                     "original_path": original_path,
                     "licence": licence or "not found: see the package", "credit": credit,
                     "source_url": url, "width": image.width, "height": image.height,
                     "kind": kinds[key]})
    write_manifest(rows, out / "manifest.csv")
    by_split = {s: sum(r["split"] == s for r in rows)
                for s in ("train", "validation", "heldout", "heldout-new")}
    print(f"{len(rows)} photos in {out}: " + ", ".join(f"{n} {s}" for s, n in by_split.items() if n)
          + f"; left out: {counts or 'none'}; manifest {out / 'manifest.csv'}")


if __name__ == "__main__":
    main()
