"""A small reader for MATLAB level-5 .mat files (what Flowers-102, Stanford Cars and Stanford Dogs
ship), so no scipy is needed. Supports numeric arrays, char arrays, cell arrays and struct arrays,
zlib-compressed or not; returns numpy arrays (numeric), str (char), lists (cell: flat, column-major)
and lists of dicts (struct: flat, column-major). Anything else raises ValueError."""
from __future__ import annotations

import struct
import zlib

import numpy as np

_NUM = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 9: "f8", 12: "i8", 13: "u8"}
_MATRIX, _COMPRESSED = 14, 15
_CELL, _STRUCT, _CHAR = 1, 2, 4
_NUMERIC_CLASSES = set(range(6, 16))


class _Reader:
    def __init__(self, buf: bytes, endian: str):
        self.buf, self.e, self.pos = buf, endian, 0

    def tag(self) -> tuple[int, int, bool]:
        if self.pos + 8 > len(self.buf):
            raise ValueError("truncated data element")
        w0, w1 = struct.unpack_from(self.e + "II", self.buf, self.pos)
        if w0 >> 16:  # small data element: size in the upper half, 4 bytes of data inline
            self.pos += 4
            return w0 & 0xFFFF, w0 >> 16, True
        self.pos += 8
        return w0, w1, False

    def element(self):
        """(type, payload bytes) of the next element, leaving pos at the next 8-byte boundary."""
        typ, n, small = self.tag()
        data = self.buf[self.pos:self.pos + n]
        if len(data) < n:
            raise ValueError("truncated data element")
        # elements are padded to 8 bytes, except compressed ones (MATLAB writes them back to back)
        self.pos += 4 if small else n + (0 if typ == _COMPRESSED else -n % 8)
        return typ, data

    def numeric(self):
        typ, data = self.element()
        if typ not in _NUM:
            raise ValueError(f"unsupported numeric data type {typ}")
        return np.frombuffer(data, dtype=np.dtype(_NUM[typ]).newbyteorder(self.e))


def _matrix(payload: bytes, endian: str):
    r = _Reader(payload, endian)
    flags = r.numeric()
    cls, complex_ = int(flags[0]) & 0xFF, bool(int(flags[0]) & 0x800)
    dims = [int(d) for d in r.numeric()]
    name = r.element()[1].decode("latin-1")
    count = int(np.prod(dims)) if dims else 0
    if cls in _NUMERIC_CLASSES:
        if count == 0:
            return name, np.zeros(dims)
        real = r.numeric().reshape(dims, order="F")
        if complex_:
            real = real + 1j * r.numeric().reshape(dims, order="F")
        return name, real
    if cls == _CHAR:
        typ, data = r.element()
        if typ in (4, 17):
            chars = np.frombuffer(data, dtype=np.dtype("u2").newbyteorder(endian))
            text = "".join(map(chr, chars))
        elif typ == 16 or typ in (1, 2):
            text = data.decode("utf-8")
        else:
            raise ValueError(f"unsupported char data type {typ}")
        if len(dims) == 2 and dims[0] > 1:  # char matrix: rows are strings, stored column-major
            arr = np.array(list(text)).reshape(dims, order="F")
            return name, ["".join(row).rstrip() for row in arr]
        return name, text
    if cls == _CELL:
        return name, [_element(r)[1] for _ in range(count)]
    if cls == _STRUCT:
        flen = int(r.numeric()[0])
        raw = r.element()[1]
        fields = [raw[i:i + flen].split(b"\0", 1)[0].decode("latin-1") for i in range(0, len(raw), flen)]
        return name, [{f: _element(r)[1] for f in fields} for _ in range(count)]
    raise ValueError(f"unsupported MATLAB array class {cls}")


def _element(r: _Reader):
    typ, data = r.element()
    if typ == _COMPRESSED:
        inner = zlib.decompress(data)
        return _element(_Reader(inner, r.e))
    if typ != _MATRIX:
        raise ValueError(f"expected a matrix element, got type {typ}")
    if not data:
        return "", []
    return _matrix(data, r.e)


def loadmat(path: str) -> dict:
    """Variables of a level-5 .mat file by name."""
    with open(path, "rb") as f:
        buf = f.read()
    if len(buf) < 128:
        raise ValueError(f"{path} is too short to be a .mat file")
    if buf[:6] == b"\x89HDF\r\n" or buf[128:132] == b"\x89HDF":
        raise ValueError(f"{path} is a MATLAB v7.3 (HDF5) file; save it with -v7 or -v6")
    mark = buf[126:128]
    if mark == b"IM":
        endian = "<"
    elif mark == b"MI":
        endian = ">"
    else:
        raise ValueError(f"{path} is not a MATLAB level-5 .mat file")
    r = _Reader(buf[128:], endian)
    out = {}
    while r.pos < len(r.buf):
        name, value = _element(r)
        out[name] = value
    return out
