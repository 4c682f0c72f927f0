"""Read an X window dump (``xwd -root``) into a BGR array: enough of the format for 24/32-bit TrueColor screens."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np


def read_xwd(path: Path) -> np.ndarray:
    data = Path(path).read_bytes()
    fields = struct.unpack(">25I", data[:100])
    header_size, width, height = fields[0], fields[4], fields[5]
    byte_order, bits_per_pixel, bytes_per_line, ncolors = fields[7], fields[11], fields[12], fields[19]
    if bits_per_pixel not in (24, 32):
        raise ValueError(f"only 24 or 32 bits per pixel dumps are read here, got {bits_per_pixel}")
    step = bits_per_pixel // 8
    start = header_size + 12 * ncolors
    pixels = np.frombuffer(data, np.uint8, count=height * bytes_per_line, offset=start).reshape(height, bytes_per_line)
    pixels = pixels[:, : width * step].reshape(height, width, step)
    if byte_order == 0:  # LSBFirst: B, G, R[, X]
        return np.ascontiguousarray(pixels[:, :, :3])
    return np.ascontiguousarray(pixels[:, :, step - 3 :][:, :, ::-1])
