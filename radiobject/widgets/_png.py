"""PNG in and out: encode an image, decode it back, put it in an ``ipywidgets.Image``."""

from __future__ import annotations

import io

import ipywidgets as w
import numpy as np

__all__ = ["decode_png", "encode_png", "show_png"]


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


def decode_png(data: bytes) -> np.ndarray:
    """The pixels of PNG bytes (the inverse of :func:`encode_png`).

    >>> decode_png(encode_png(np.zeros((2, 3, 3), np.uint8))).shape
    (2, 3, 3)
    """
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img).copy()


def show_png(image: w.Image, png: bytes) -> None:
    """Put ``png`` in ``image`` at its own pixel size (never stretched by the page layout)."""
    width, height = (str(int.from_bytes(png[i : i + 4], "big")) for i in (16, 20))  # IHDR
    with image.hold_sync():
        if (image.width, image.height) != (width, height):
            image.width, image.height = width, height
        image.value = png
