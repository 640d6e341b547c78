"""Read the files inside a Qt resource file (.rcc), with nothing but the standard library.

A .rcc file (Qt's "qres" format, versions 1 to 3) is laid out as:

    header   b"qres", then big-endian uint32s: version, tree offset, data offset, names
             offset, and (version 3 only) a flags word
    tree     one fixed-size node per file or directory, node 0 is the root "/":
               uint32 name offset  (into the names block)
               uint16 flags        1 = zlib-compressed, 2 = directory, 4 = zstd-compressed
               directory: uint32 child count, uint32 index of the first child node
               file:      uint16 country, uint16 language, uint32 data offset (into data)
               version >= 2: uint64 last-modified time (so a node is 22 bytes, else 14)
    names    uint16 length (in UTF-16 code units), uint32 hash, then the name in UTF-16-BE
    data     uint32 length, then the bytes: as stored, or
               zlib: uint32 uncompressed length + a zlib stream (what qCompress writes)
               zstd: one zstd frame

Python's standard library has no zstd decoder before 3.14; ``read`` then calls the ``zstd``
command-line tool if there is one, and otherwise raises ``ZstdUnavailable`` (callers count and
skip those files).
"""
import shutil
import struct
import subprocess
import zlib

COMPRESSED_ZLIB, DIRECTORY, COMPRESSED_ZSTD = 0x01, 0x02, 0x04


class RccError(ValueError):
    """The file is not a Qt resource file, or is damaged."""


class ZstdUnavailable(RuntimeError):
    """A file is zstd-compressed and no zstd decoder is available."""


def _u16(buf, pos):
    return struct.unpack_from(">H", buf, pos)[0]


def _u32(buf, pos):
    return struct.unpack_from(">I", buf, pos)[0]


class RccFile:
    """The entries of one .rcc file: ``paths()`` lists the files, ``read(path)`` returns bytes."""

    def __init__(self, data, name="<bytes>"):
        self.data, self.name = bytes(data), name
        if self.data[:4] != b"qres":
            raise RccError(f"{name}: expected a Qt resource file starting with b'qres', "
                           f"got {self.data[:4]!r}")
        self.version = _u32(self.data, 4)
        if self.version not in (1, 2, 3):
            raise RccError(f"{name}: qres version {self.version}; this reader knows 1 to 3")
        self.tree, self.blobs, self.names = (_u32(self.data, p) for p in (8, 12, 16))
        self.node_size = 14 if self.version == 1 else 22
        self.files = {}  # path -> (flags, data offset)
        self._walk(0, "")

    @classmethod
    def open(cls, path):
        with open(path, "rb") as f:
            return cls(f.read(), str(path))

    def _node(self, index):
        pos = self.tree + index * self.node_size
        if pos + 14 > len(self.data):
            raise RccError(f"{self.name}: tree node {index} lies outside the file")
        return pos, _u32(self.data, pos), _u16(self.data, pos + 4)

    def _name(self, offset):
        pos = self.names + offset
        length = _u16(self.data, pos)
        return self.data[pos + 6 : pos + 6 + 2 * length].decode("utf-16-be")

    def _walk(self, index, prefix, depth=0):
        if depth > 64:
            raise RccError(f"{self.name}: directory tree deeper than 64 (a loop?)")
        pos, name_offset, flags = self._node(index)
        name = "" if index == 0 else self._name(name_offset)
        path = f"{prefix}/{name}" if index else ""
        if flags & DIRECTORY:
            count, first = _u32(self.data, pos + 6), _u32(self.data, pos + 10)
            for child in range(first, first + count):
                self._walk(child, path, depth + 1)
        else:
            self.files[path.lstrip("/")] = (flags, _u32(self.data, pos + 10))

    def paths(self):
        """Every file path inside, without a leading slash, sorted."""
        return sorted(self.files)

    def compression(self, path):
        flags = self.files[path][0]
        return "zstd" if flags & COMPRESSED_ZSTD else "zlib" if flags & COMPRESSED_ZLIB else "none"

    def read(self, path):
        """The bytes of one file, decompressed."""
        if path not in self.files:
            raise KeyError(f"{self.name} holds no file {path!r}")
        flags, offset = self.files[path]
        pos = self.blobs + offset
        length = _u32(self.data, pos)
        blob = self.data[pos + 4 : pos + 4 + length]
        if len(blob) != length:
            raise RccError(f"{self.name}: {path} claims {length} bytes, only {len(blob)} remain")
        if flags & COMPRESSED_ZSTD:
            return _zstd_decompress(blob, f"{self.name}:{path}")
        if flags & COMPRESSED_ZLIB:
            expected = _u32(blob, 0)
            out = zlib.decompress(blob[4:])
            if len(out) != expected:
                raise RccError(f"{self.name}: {path} unpacked to {len(out)} bytes, "
                               f"its header says {expected}")
            return out
        return blob


def _zstd_decompress(blob, what):
    tool = shutil.which("zstd")
    if tool is None:
        raise ZstdUnavailable(f"{what} is zstd-compressed and there is no zstd decoder "
                              "(install the zstd command, or use Python 3.14+)")
    done = subprocess.run([tool, "-d", "-q", "-c"], input=blob, capture_output=True, check=False)
    if done.returncode:
        raise RccError(f"{what}: zstd failed: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout
