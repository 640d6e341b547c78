"""Build the offline photo corpus from Debian packages: download, unpack, extract, resize, credit.

    python examples/collect_photos.py                    # -> data/corpus/ (about 340 photos)
    python examples/collect_photos.py --out data/corpus --short-side 288

Nothing is installed: each package is fetched with ``apt-get download`` (run ``apt-get update``
once first) into ``data/debs/`` and unpacked with ``dpkg-deb -x`` into ``data/unpacked/``.
Then every photo is read (JPEG, PNG, or WebP inside a Qt resource file, see qt_rcc.py),
resized so its shorter side is at most ``--short-side`` (never enlarged; photos whose shorter
side is under ``--min-side`` are left out), and saved as JPEG (quality 92) into

    data/corpus/train/<package>/<name>.jpg      photos that training may use
    data/corpus/heldout/<package>/<name>.jpg    the held-out test photos (examples/heldout.txt)
    data/corpus/manifest.csv                    one row per photo: file, split, package, version,
                                                original path, licence, credit, source URL, size

The photos, their packages and where their licences come from:

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

The held-out photos are chosen by a fixed rule (``choose_heldout``) and listed in
examples/heldout.txt; when that file exists it is used as it is, so the split never moves.
"""
import argparse
import csv
import fnmatch
import io
import json
import posixpath
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

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


def _open(source):
    image = Image.open(source)
    image.load()
    return image.convert("RGB")


# --- writing ----------------------------------------------------------------------------------
MANIFEST_FIELDS = ("file", "split", "package", "version", "original_path", "licence", "credit",
                   "source_url", "width", "height")


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


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="data/corpus", help="corpus folder (default data/corpus)")
    parser.add_argument("--work", default="data", help="where debs/ and unpacked/ go (default data)")
    parser.add_argument("--short-side", type=int, default=288,
                        help="resize so the shorter side is at most this (default 288)")
    parser.add_argument("--min-side", type=int, default=128,
                        help="leave out photos whose shorter side is below this (default 128)")
    args = parser.parse_args()
    debs, unpacked, out = Path(args.work) / "debs", Path(args.work) / "unpacked", Path(args.out)
    counts = {}
    sources = {
        "lomiri-wallpapers-16.04": lomiri_16, "lomiri-wallpapers-20.04": lomiri_20,
        "plasma-workspace-wallpapers": plasma, "palapeli-data": palapeli, "mate-backgrounds": mate,
        "gcompris-qt-data": lambda r, v: gcompris(r, v, counts),
        "stellarium-data": lambda r, v: stellarium(r, v, args.min_side),
    }
    photos = []  # (package, version, name, image, original, licence, credit, url)
    for package, extract in sources.items():
        root, version = unpack(package, debs, unpacked)
        n = 0
        for name, image, original, licence, credit, url in extract(root, version):
            if min(image.size) < args.min_side:
                counts["small"] = counts.get("small", 0) + 1
                print(f"{package}: {name} is {image.size[0]}x{image.size[1]}, under --min-side; "
                      "skipped", file=sys.stderr)
                continue
            photos.append((package, version, name, resized(image, args.short_side), original,
                           licence, credit, url))
            n += 1
        print(f"{package} {version}: {n} photos")
    names = {}
    for photo in photos:
        names.setdefault(photo[0], []).append(photo[2])
    if HELDOUT.is_file():
        heldout = set(HELDOUT.read_text().split())
    else:
        heldout = set(choose_heldout(names))
        HELDOUT.write_text("\n".join(sorted(heldout)) + "\n")
        print(f"wrote {HELDOUT} ({len(heldout)} photos)")
    rows = []
    for package, version, name, image, original, licence, credit, url in photos:
        split = "heldout" if f"{package}/{name}" in heldout else "train"
        file = f"{split}/{package}/{name}.jpg"
        (out / file).parent.mkdir(parents=True, exist_ok=True)
        image.save(out / file, quality=92)
        rows.append({"file": file, "split": split, "package": package, "version": version,
                     "original_path": original, "licence": licence or "not found: see the package",
                     "credit": credit, "source_url": url, "width": image.width,
                     "height": image.height})
    write_manifest(rows, out / "manifest.csv")
    n_held = sum(r["split"] == "heldout" for r in rows)
    print(f"{len(rows)} photos in {out}: {len(rows) - n_held} train, {n_held} held out; "
          f"left out: {counts or 'none'}; manifest {out / 'manifest.csv'}")


if __name__ == "__main__":
    main()
