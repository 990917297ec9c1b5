"""Decoding images the way Detectron2's ``read_image`` does (PIL, EXIF orientation applied).

Images with more than 8 bits per sample (16-bit grayscale PNG, TIFF and PGM, which Pillow opens in
its 32-bit integer modes) are scaled from 0-65535 to 0-255; converting them directly would clip
every value above 255 to white. Floating-point images have no defined scale and are refused.

Only raster formats open (:data:`RASTER_FORMATS`): Pillow also knows PostScript/EPS (which it
renders by starting Ghostscript on the file's program), WMF and others that run external code or
unbounded work, and an upload's name or content type says nothing about which plugin its bytes pick.
A progressive JPEG can hold thousands of scans, each a full pass over the image: the scans are
counted from the markers before decoding and bounded (:data:`MAX_JPEG_SCANS`,
:data:`MAX_JPEG_SCAN_PIXELS`).
"""

from __future__ import annotations

import io
import os
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from dyhead_serve.errors import UserError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "MAX_JPEG_SCANS",
    "MAX_JPEG_SCAN_PIXELS",
    "RASTER_FORMATS",
    "TYPICAL_JPEG_SCANS",
    "ImageDecodeError",
    "ImageTooLargeError",
    "decode_image",
    "image_size",
    "jpeg_scan_count",
    "read_image",
]

# Enough for a 100-megapixel photograph; anything larger is refused before it is decoded.
DEFAULT_MAX_PIXELS = 100_000_000

# The formats an image may be in (Pillow's opener names; the JPEG opener also opens the MPO files
# of many cameras and phones). None of them starts a process.
RASTER_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "PPM")

# A progressive JPEG usually has 6 to 12 scans, and each scan is one more pass over every pixel
# (about 10-20 ms per megapixel here), while a file may hold thousands of tiny ones. Up to
# TYPICAL_JPEG_SCANS any image within the pixel budget decodes; beyond it the scans times the
# pixels may not pass MAX_JPEG_SCAN_PIXELS (a few seconds of one decode thread at most), and no
# file has more than MAX_JPEG_SCANS.
TYPICAL_JPEG_SCANS = 12
MAX_JPEG_SCANS = 64
MAX_JPEG_SCAN_PIXELS = 200_000_000
# A marker inside entropy-coded data: 0xFF followed by anything but a stuffed 0x00 or RST0-7.
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7]")

_EXIF_ORIENTATION = 0x0112
_TRANSPOSE_FOR_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class ImageDecodeError(UserError, ValueError):
    """The bytes are not an image we can decode (or the image is too large)."""


class ImageTooLargeError(ImageDecodeError):
    """The image has more pixels than allowed, or Pillow refuses it as a decompression bomb."""


def _apply_exif_orientation(image: Image.Image) -> Image.Image:
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION)
    except Exception:  # a broken EXIF block is ignored, as Detectron2 does
        return image
    method = _TRANSPOSE_FOR_ORIENTATION.get(orientation) if orientation is not None else None
    return image.transpose(method) if method is not None else image


# Pillow's modes of one integer sample wider than 8 bits.
_WIDE_INTEGER_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
# 16-bit level -> the nearest 8-bit level: one table lookup per pixel, no wide temporaries.
_SIXTEEN_TO_EIGHT = ((np.arange(65536, dtype=np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def _to_rgb(image: Image.Image, name: str) -> Image.Image:
    """8-bit RGB, scaling wide integer samples (0-65535) to 0-255 instead of clipping them."""
    if image.mode in _WIDE_INTEGER_MODES:
        samples = np.asarray(image)  # [H, W] uint16 or int32 ("I")
        if samples.dtype != np.uint16 and samples.size and (samples.min() < 0 or samples.max() > 65535):
            raise ImageDecodeError(
                f"{name}: {image.mode} pixel values outside 0-65535; save the image with 8 or 16 bits "
                "per sample"
            )
        gray = _SIXTEEN_TO_EIGHT[samples]  # rounded to the nearest level
        return Image.fromarray(gray).convert("RGB")
    if image.mode == "F":
        raise ImageDecodeError(
            f"{name}: floating-point pixels (mode F) have no defined 8-bit scale; save the image with 8 or "
            "16 bits per sample"
        )
    return image.convert("RGB")


def jpeg_scan_count(data: bytes, stop_after: int = MAX_JPEG_SCANS) -> int:
    """How many scans (SOS segments) the JPEG in ``data`` has, read from its markers alone,
    counting no further than ``stop_after + 1``.

    The walk follows the segment lengths from SOI and skips each scan's entropy-coded data to the
    next marker with one regular-expression search, so neither embedded thumbnails nor the
    compressed bytes are mistaken for markers and the cost stays linear in the file. A truncated
    or malformed stream returns the scans seen so far; Pillow reports what is wrong with it.
    """
    n = len(data)
    pos = 2  # after SOI
    scans = 0
    while pos + 4 <= n and scans <= stop_after:
        if data[pos] != 0xFF:
            break
        marker = data[pos + 1]
        if marker == 0xFF:  # a fill byte before the marker
            pos += 1
            continue
        if marker == 0xD9:  # EOI
            break
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # TEM, RSTn: no length field
            pos += 2
            continue
        pos += 2 + ((data[pos + 2] << 8) | data[pos + 3])
        if marker == 0xDA:  # SOS: its header, then entropy-coded data up to the next marker
            scans += 1
            found = _NEXT_MARKER.search(data, pos)
            if found is None:
                break
            pos = found.start()
    return scans


def _check_decode_work(image: Image.Image, data: bytes, name: str) -> None:
    """Refuse a file whose decoding costs far more than its pixel count says (before decoding)."""
    if image.format not in ("JPEG", "MPO") or not image.info.get("progressive"):
        return
    scans = jpeg_scan_count(data)
    width, height = image.size
    if scans > MAX_JPEG_SCANS or (
        scans > TYPICAL_JPEG_SCANS and scans * width * height > MAX_JPEG_SCAN_PIXELS
    ):
        counted = str(scans) if scans <= MAX_JPEG_SCANS else f"more than {MAX_JPEG_SCANS}"
        raise ImageTooLargeError(
            f"{name}: progressive JPEG of {width}x{height} with {counted} scans is too costly to decode "
            f"(at most {MAX_JPEG_SCANS} scans, and beyond {TYPICAL_JPEG_SCANS} at most "
            f"{MAX_JPEG_SCAN_PIXELS:,} scan-pixels); save it as a baseline JPEG or PNG"
        )


@contextmanager
def _opened(data: bytes, max_pixels: int, name: str) -> Iterator[Image.Image]:
    """The image Pillow opens from ``data`` (header read, pixels not yet decoded), with every
    failure inside the block turned into an :class:`ImageDecodeError`."""
    if not data:
        raise ImageDecodeError(f"{name}: empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=RASTER_FORMATS) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise ImageTooLargeError(
                        f"{name}: {width}x{height} image has more than {max_pixels} pixels"
                    )
                _check_decode_work(image, data, name)
                yield image
    except ImageDecodeError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(
            f"{name}: not an image in a format we decode ({', '.join(RASTER_FORMATS)})"
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(f"{name}: not a decodable image ({exc})") from exc
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageTooLargeError(f"{name}: refused as a decompression bomb ({exc})") from exc


def image_size(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, name: str = "image") -> tuple[int, int]:
    """(width, height) of encoded image bytes, from the header alone (nothing is decoded).

    Raises:
        ImageDecodeError: as :func:`decode_image`, for what the header already shows.
    """
    with _opened(data, max_pixels, name) as image:
        width, height = image.size
        return width, height


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, name: str = "image") -> np.ndarray:
    """Decode encoded image bytes to an RGB uint8 array of shape [H, W, 3].

    Raises:
        ImageDecodeError: empty, truncated or unrecognised data, or more than ``max_pixels`` pixels.
    """
    with _opened(data, max_pixels, name) as image:
        image.load()
        rgb = _to_rgb(_apply_exif_orientation(image), name)
        return np.asarray(rgb, dtype=np.uint8).copy()


def read_image(path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file to an RGB uint8 array [H, W, 3].

    Raises:
        FileNotFoundError: the file does not exist.
        ImageDecodeError: the file is not a decodable image.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    return decode_image(path.read_bytes(), max_pixels=max_pixels, name=str(path))
