"""Small files that cost far more than their size to decode, or that ask Pillow to run a program."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

# An EPS whose PostScript never ends: Pillow's EPS plugin would hand it to Ghostscript.
ENDLESS_EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 100\n{ } loop\n"


def progressive_jpeg(height: int, width: int, seed: int = 0, flat: bool = False) -> bytes:
    """A progressive JPEG as libjpeg writes it (about 10 scans) of noise, or of one grey level
    (``flat``: its scans are a few bytes each, however large the image)."""
    if flat:
        pixels = np.full((height, width, 3), 128, dtype=np.uint8)
    else:
        pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", progressive=True, quality=90)
    return buffer.getvalue()


def _last_scan(data: bytes) -> tuple[int, int]:
    """(start, end) of the last SOS segment with its entropy-coded data."""
    start = data.rindex(b"\xff\xda")
    end = data.rindex(b"\xff\xd9")
    return start, end


def many_scan_jpeg(height: int, width: int, extra_scans: int, flat: bool = False) -> bytes:
    """A progressive JPEG whose last scan is repeated ``extra_scans`` times: libjpeg decodes every
    repetition (one more pass over all pixels each), so the cost grows with the scan count while
    the pixel count stays the same."""
    data = progressive_jpeg(height, width, flat=flat)
    start, end = _last_scan(data)
    return data[:end] + data[start:end] * extra_scans + data[end:]
