"""PNG in and out: encode an image, decode it back, put it in an ``ipywidgets.Image``.

An image of at most 256 colours is sent as an indexed PNG (one byte a pixel and a palette):
a third of the bytes of RGB to compress, and a third or less of the bytes to send.
"""

from __future__ import annotations

import io

import ipywidgets as w
import numpy as np

__all__ = ["decode_png", "encode_indexed", "encode_png", "png_size", "show_png"]


def encode_png(image: np.ndarray, compress_level: int = 1) -> bytes:
    """PNG bytes of an RGB(A) or grey ``uint8`` image (fast, light compression).

    >>> encode_png(np.zeros((2, 3, 3), np.uint8))[1:4]
    b'PNG'
    """
    from PIL import Image  # matplotlib depends on Pillow, so it is always there

    array = np.ascontiguousarray(image)
    if array.dtype != np.uint8:
        raise ValueError(f"encode_png takes uint8 images, got {array.dtype}")
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="png", compress_level=compress_level)
    return buffer.getvalue()


def encode_indexed(index: np.ndarray, palette: np.ndarray, compress_level: int = 1) -> bytes:
    """PNG bytes of an indexed image: pixel ``(r, c)`` has colour ``palette[index[r, c]]``.

    Args:
        index: ``uint8`` image ``(rows, cols)`` of palette entries.
        palette: ``uint8`` colours ``(n, 3)``, ``n <= 256``.
        compress_level: zlib level (1: fast; the rows are not filtered, as PNG advises
            for palette images).

    >>> palette = np.array([[0, 0, 0], [9, 8, 7]], np.uint8)
    >>> decode_png(encode_indexed(np.array([[0, 1]], np.uint8), palette)).tolist()
    [[[0, 0, 0], [9, 8, 7]]]
    """
    from PIL import Image

    index = np.ascontiguousarray(index)
    colours = np.ascontiguousarray(palette, dtype=np.uint8)
    if index.dtype != np.uint8 or index.ndim != 2:
        raise ValueError(
            f"encode_indexed takes a 2D uint8 index image, got {index.dtype} {index.shape}"
        )
    if colours.ndim != 2 or colours.shape[1] != 3 or not 1 <= len(colours) <= 256:
        raise ValueError(f"a palette is 1..256 RGB colours, got shape {colours.shape}")
    image = Image.fromarray(index)
    image.putpalette(colours.tobytes(), rawmode="RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="png", compress_level=compress_level)
    return buffer.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """The pixels of PNG bytes (the inverse of :func:`encode_png`; indexed PNGs give RGB).

    >>> decode_png(encode_png(np.zeros((2, 3, 3), np.uint8))).shape
    (2, 3, 3)
    """
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        if img.mode == "P":
            return np.asarray(img.convert("RGB")).copy()
        return np.asarray(img).copy()


def png_size(png: bytes) -> tuple[int, int]:
    """``(width, height)`` of PNG bytes, from the header.

    >>> png_size(encode_png(np.zeros((2, 3), np.uint8)))
    (3, 2)
    """
    if len(png) < 24 or png[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not PNG bytes")
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def show_png(image: w.Image, png: bytes) -> None:
    """Put ``png`` in ``image`` at its own pixel size (never stretched by the page layout)."""
    width, height = (str(n) for n in png_size(png))
    with image.hold_sync():
        if (image.width, image.height) != (width, height):
            image.width, image.height = width, height
        image.value = png
