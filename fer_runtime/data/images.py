"""Reading one image file: the one reader that training, the bench, fer-run and the API share."""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np

from fer_runtime.contract import to_model_layout
from fer_runtime.errors import DataError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}
# image formats OpenCV does not decode as images (or only as video): named and counted where they are left out
UNSUPPORTED_IMAGE_EXTENSIONS = {".gif", ".heic", ".heif", ".avif"}
# Larger than any camera's photo; a 20000 x 20000 PNG would take 1.2 GB decoded. JPEGs over it are decoded
# reduced (libjpeg scales while decoding), other formats are refused from their header, before any decode.
MAX_IMAGE_PIXELS = 50_000_000
HEAD_BYTES = 262144  # where a file's header is looked for first
TIFF_MAGIC = (b"II*\x00", b"MM\x00*")


class ImageTooLarge(DataError):
    """An image whose header says it is over MAX_IMAGE_PIXELS (and that cannot be decoded reduced)."""


def read_image(path: str | Path) -> np.ndarray | None:
    """The one image reader: gray, BGR (alpha composited on black) or None when unreadable; 16-bit scaled to 8; turned
    upright as a JPEG's EXIF orientation says (as viewers show a phone's photo).

    An image over MAX_IMAGE_PIXELS is decoded reduced (JPEG; ``read_photo`` says by how much) or refused with
    ``ImageTooLarge``."""
    return read_photo(path)[0]


def read_photo(path: str | Path) -> tuple[np.ndarray | None, int]:
    """``read_image`` and the factor a JPEG over MAX_IMAGE_PIXELS was decoded reduced by (1, 2, 4 or 8): a box found
    in the image times it is a box in the file's own pixels."""
    try:
        buf = np.fromfile(str(path), dtype=np.uint8)
    except OSError:
        return None, 1
    return decode_photo(buf, Path(path).name)


def decode_photo(buf: np.ndarray | bytes, name: str) -> tuple[np.ndarray | None, int]:
    """``read_photo`` of a file's bytes already in memory (fer-serve's request bodies). GIF is unreadable, whatever
    this OpenCV can do (OpenCV 4 cannot, 5 can): the same files read everywhere."""
    buf = np.frombuffer(buf, dtype=np.uint8) if isinstance(buf, bytes | bytearray) else buf
    if not buf.size or buf[:4].tobytes() == b"GIF8":
        return None, 1
    head = buf[:HEAD_BYTES].tobytes()
    flags, factor = _decode_flags(buf, head, name)
    img = cv2.imdecode(buf, flags)
    if img is None:
        return None, 1
    if head[:2] == b"\xff\xd8":
        img = _upright(img, _exif_orientation(head))
    if img.dtype != np.uint8:
        top = 65535.0 if img.dtype == np.uint16 else max(float(img.max()), 1.0)
        img = np.clip(img.astype(np.float64) * (255.0 / top), 0, 255).astype(np.uint8)
    if img.ndim == 3 and img.shape[2] == 4:
        img = composite_alpha(img)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    return img, factor


def composite_alpha(bgra: np.ndarray) -> np.ndarray:
    """A BGRA uint8 image composited on black: what a transparent pixel shows."""
    alpha = bgra[:, :, 3:4].astype(np.float32) / 255.0
    return np.rint(bgra[:, :, :3].astype(np.float32) * alpha).astype(np.uint8)


def _decode_flags(buf: np.ndarray, head: bytes, name: str) -> tuple[int, int]:
    """imdecode's flags, and the factor they reduce by. The size comes from the header (``head``: the file's first
    HEAD_BYTES), else from the whole file: a JPEG's metadata (a phone's depth map) can come before its frame header,
    and a TIFF's directory after the pixels."""
    size = image_header_size(head)
    if size is None and buf.size > len(head) and (head[:2] == b"\xff\xd8" or head[:4] in TIFF_MAGIC):
        size = image_header_size(buf.tobytes())
    if size is None or size[0] * size[1] <= MAX_IMAGE_PIXELS:
        return cv2.IMREAD_UNCHANGED, 1
    if head[:2] == b"\xff\xd8":
        for factor, flag in ((2, cv2.IMREAD_REDUCED_COLOR_2), (4, cv2.IMREAD_REDUCED_COLOR_4), (8, cv2.IMREAD_REDUCED_COLOR_8)):
            if size[0] * size[1] / factor**2 <= MAX_IMAGE_PIXELS:
                return flag | cv2.IMREAD_IGNORE_ORIENTATION, factor  # turned upright by _upright, as every JPEG
    raise ImageTooLarge(f"{name} is {size[0]}x{size[1]} pixels, over the {MAX_IMAGE_PIXELS // 1_000_000} "
                        "megapixels read: scale it down first")


# EXIF orientation -> what turns the stored pixels upright (TIFF/EXIF tag 0x0112; 1 is upright already)
_ORIENT = {
    2: lambda im: cv2.flip(im, 1),
    3: lambda im: cv2.rotate(im, cv2.ROTATE_180),
    4: lambda im: cv2.flip(im, 0),
    5: lambda im: cv2.transpose(im),
    6: lambda im: cv2.rotate(im, cv2.ROTATE_90_CLOCKWISE),
    7: lambda im: cv2.rotate(cv2.transpose(im), cv2.ROTATE_180),
    8: lambda im: cv2.rotate(im, cv2.ROTATE_90_COUNTERCLOCKWISE),
}


def _upright(img: np.ndarray, orientation: int) -> np.ndarray:
    turn = _ORIENT.get(orientation)
    return img if turn is None else np.ascontiguousarray(turn(img))


def _exif_orientation(head: bytes) -> int:
    """The orientation tag of a JPEG's EXIF segment (APP1 "Exif", a TIFF directory), 1 when there is none or it cannot
    be read."""
    i = 2
    try:
        while i + 4 <= len(head) and head[i] == 0xFF:
            marker, length = head[i + 1], int.from_bytes(head[i + 2 : i + 4], "big")
            if marker == 0xE1 and head[i + 4 : i + 10] == b"Exif\x00\x00":
                return _tiff_tags(head[i + 10 : i + 2 + length], (0x0112,)).get(0x0112, 1)
            if marker in (0xD9, 0xDA):  # the end, or the pixels: no EXIF before them
                return 1
            i += 2 + length
    except (KeyError, struct.error, IndexError):
        pass
    return 1


def image_header_size(head: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG, JPEG, BMP, WebP, GIF, PNM or TIFF header; None for other formats or a damaged one."""
    try:
        if head[:8] == b"\x89PNG\r\n\x1a\n":
            return struct.unpack(">II", head[16:24])
        if head[:2] == b"BM":
            w, h = struct.unpack("<ii", head[18:26])
            return abs(w), abs(h)
        if head[:6] in (b"GIF87a", b"GIF89a"):
            return struct.unpack("<HH", head[6:10])
        if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
            return _webp_size(head)
        if head[:1] == b"P" and head[1:2] in b"123456":
            lines = (line.split(b"#")[0] for line in head[2:200].split(b"\n"))
            values = [int(v) for v in b" ".join(lines).split()[:2]]
            return values[0], values[1]
        if head[:2] == b"\xff\xd8":
            return _jpeg_size(head)
        if head[:4] in TIFF_MAGIC:
            return _tiff_size(head)
    except (struct.error, ValueError, IndexError, KeyError):
        return None
    return None


def _webp_size(head: bytes) -> tuple[int, int] | None:
    chunk = head[12:16]
    if chunk == b"VP8X":
        return 1 + int.from_bytes(head[24:27], "little"), 1 + int.from_bytes(head[27:30], "little")
    if chunk == b"VP8L":
        bits = int.from_bytes(head[21:25], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if chunk == b"VP8 ":
        return int.from_bytes(head[26:28], "little") & 0x3FFF, int.from_bytes(head[28:30], "little") & 0x3FFF
    return None


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    """ImageWidth and ImageLength of a TIFF's first directory (wherever in the file it is)."""
    found = _tiff_tags(data, (256, 257))
    return (found[256], found[257]) if len(found) == 2 else None


def _tiff_tags(tiff: bytes, tags: tuple[int, ...]) -> dict[int, int]:
    """The SHORT or LONG values of ``tags`` in the first directory of a TIFF structure (a file, or a JPEG's EXIF);
    KeyError, struct.error or IndexError where it is damaged."""
    order = {b"II": "<", b"MM": ">"}[tiff[:2]]
    (ifd,) = struct.unpack(order + "I", tiff[4:8])
    (count,) = struct.unpack(order + "H", tiff[ifd : ifd + 2])
    found = {}
    for k in range(count):
        tag, kind, _, value = struct.unpack(order + "HHI4s", tiff[ifd + 2 + 12 * k : ifd + 14 + 12 * k])
        if tag in tags and kind in (3, 4):
            found[tag] = struct.unpack(order + ("H" if kind == 3 else "I"), value[: 2 if kind == 3 else 4])[0]
    return found


def _jpeg_size(head: bytes) -> tuple[int, int] | None:
    """The frame header (SOFn) of a JPEG, found by walking its marker segments."""
    i = 2
    while i + 9 < len(head):
        if head[i] != 0xFF:
            return None
        marker = head[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        length = int.from_bytes(head[i + 2 : i + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return int.from_bytes(head[i + 7 : i + 9], "big"), int.from_bytes(head[i + 5 : i + 7], "big")
        i += 2 + length
    return None


def decode_image(path: str | Path, channels: int, height: int, width: int) -> np.ndarray:
    """One image file -> uint8 C x H x W in the model's colour mode and size, as training and the bench see it."""
    img = read_image(path)
    if img is None:
        raise DataError(f"unreadable image {path}")
    return to_model_layout(img, channels, height, width)


def image_format(img: np.ndarray) -> str:
    """'WxH gray' / 'WxH colour': what the data report counts."""
    return f"{img.shape[1]}x{img.shape[0]} {'gray' if img.ndim == 2 else 'colour'}"
