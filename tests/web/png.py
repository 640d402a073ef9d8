"""A PNG reader for the dashboard's screenshots (stdlib only: zlib, so no image library in
the dev dependencies): size and pixels of the 8-bit RGB/RGBA, non-interlaced images
Chromium writes."""

from __future__ import annotations

import struct
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHANNELS = {2: 3, 6: 4}  # colour type -> bytes per pixel (RGB, RGBA)


@dataclass
class Image:
    width: int
    height: int
    rows: list[bytes]  # unfiltered scanlines
    channels: int
    _colours: Counter[tuple[int, int, int]] | None = None

    def pixel(self, x: int, y: int) -> tuple[int, int, int]:
        i = x * self.channels
        r, g, b = self.rows[y][i : i + 3]
        return r, g, b

    def count(self, colour: tuple[int, int, int], tolerance: int = 24) -> int:
        """Pixels within `tolerance` of `colour` on every channel."""
        return sum(
            n
            for found, n in self.colours().items()
            if all(abs(a - b) <= tolerance for a, b in zip(found, colour, strict=True))
        )

    def colours(self) -> Counter[tuple[int, int, int]]:
        """How many pixels have each colour (counted once, in C loops: few colours)."""
        if self._colours is None:
            ch, found = self.channels, Counter[tuple[int, int, int]]()
            for row in self.rows:
                found.update(zip(row[0::ch], row[1::ch], row[2::ch], strict=True))
            self._colours = found
        return self._colours


def size(path: Path) -> tuple[int, int]:
    """Width and height from the IHDR chunk (cheap: nothing decoded)."""
    data = path.read_bytes()[:24]
    assert data[:8] == SIGNATURE and data[12:16] == b"IHDR", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def read(path: Path) -> Image:
    """The whole image, decoded (pure Python: keep it to element-sized shots)."""
    data = path.read_bytes()
    assert data[:8] == SIGNATURE, "not a PNG"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour in CHANNELS and interlace == 0, (depth, colour, interlace)
    channels = CHANNELS[colour]
    return Image(width, height, _unfilter(zlib.decompress(idat), width, height, channels), channels)


def _unfilter(raw: bytes, width: int, height: int, bpp: int) -> list[bytes]:
    stride, rows, previous = width * bpp, [], bytearray(width * bpp)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):
            left = line[i - bpp] if i >= bpp else 0
            up, corner = previous[i], previous[i - bpp] if i >= bpp else 0
            line[i] = (line[i] + _predict(kind, left, up, corner)) & 0xFF
        rows.append(bytes(line))
        previous = line
    return rows


def _predict(kind: int, left: int, up: int, corner: int) -> int:
    if kind == 0:
        return 0
    if kind == 1:
        return left
    if kind == 2:
        return up
    if kind == 3:
        return (left + up) // 2
    estimate = left + up - corner  # Paeth
    a, b, c = abs(estimate - left), abs(estimate - up), abs(estimate - corner)
    return left if a <= b and a <= c else up if b <= c else corner
