"""A minimal MATLAB level-5 writer for the tests' fake dataset trees (double, char, cell, struct)."""
import struct
import zlib

import numpy as np


def _el(typ: int, data: bytes) -> bytes:
    return struct.pack("<II", typ, len(data)) + data + b"\0" * (-len(data) % 8)


def _matrix(name: str, value) -> bytes:
    def head(cls, dims):
        return (_el(6, struct.pack("<II", cls, 0)) + _el(5, struct.pack(f"<{len(dims)}i", *dims))
                + _el(1, name.encode()))
    if isinstance(value, str):
        body = head(4, [1, len(value)]) + _el(4, np.array([ord(c) for c in value], "<u2").tobytes())
    elif isinstance(value, list) and value and isinstance(value[0], dict):
        fields = list(value[0])
        flen = max(len(f) for f in fields) + 1
        names = b"".join(f.encode().ljust(flen, b"\0") for f in fields)
        body = head(2, [1, len(value)]) + _el(5, struct.pack("<i", flen)) + _el(1, names)
        body += b"".join(_matrix("", row[f]) for row in value for f in fields)
    elif isinstance(value, list) and isinstance(value[0], str):
        body = head(1, [len(value), 1]) + b"".join(_matrix("", v) for v in value)
    else:
        arr = np.atleast_2d(np.asarray(value, dtype="<f8"))
        body = head(6, list(arr.shape)) + _el(9, arr.tobytes(order="F"))
    return _el(14, body)


def savemat(path: str, variables: dict, compress: bool = False) -> None:
    header = b"MATLAB 5.0 MAT-file, written by the vimd tests".ljust(116) + b"\0" * 8 + struct.pack("<H", 0x0100) + b"IM"
    out = header
    for name, value in variables.items():
        m = _matrix(name, value)
        if compress:
            z = zlib.compress(m)
            out += struct.pack("<II", 15, len(z)) + z
        else:
            out += m
    with open(path, "wb") as f:
        f.write(out)
