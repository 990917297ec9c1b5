"""Images with more than 8 bits per sample are decoded faithfully, or refused with a clear error."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from PIL import EpsImagePlugin, Image

from dyhead_serve.data.sample_image import synthetic_photo
from dyhead_serve.pipeline.image_io import (
    TYPICAL_JPEG_SCANS,
    ImageDecodeError,
    ImageTooLargeError,
    decode_image,
    jpeg_scan_count,
)
from tests.pipeline.hostile_images import ENDLESS_EPS, many_scan_jpeg, progressive_jpeg


def encode(array: np.ndarray, image_format: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=image_format)
    return buffer.getvalue()


GRAY8 = np.asarray(Image.fromarray(synthetic_photo(60, 80, seed=3)).convert("L"))


@pytest.mark.parametrize(
    ("image_format", "dtype"),
    [("PNG", np.uint16), ("TIFF", np.uint16), ("PPM", np.uint16), ("TIFF", np.int32)],
    ids=["png-16bit", "tiff-16bit", "pgm-16bit", "tiff-32bit-int"],
)
def test_wide_grayscale_is_scaled_to_8_bits(image_format: str, dtype: type) -> None:
    wide = GRAY8.astype(dtype) * 257  # the same picture at 16 bits: 255 -> 65535
    decoded = decode_image(encode(wide, image_format))
    assert decoded.dtype == np.uint8 and decoded.shape == (*GRAY8.shape, 3)
    np.testing.assert_array_equal(decoded, np.repeat(GRAY8[:, :, None], 3, axis=2))


def test_16_bit_png_is_not_white() -> None:
    dark = np.full((32, 32), 1000, dtype=np.uint16)  # 1000 / 65535 of full scale: nearly black
    assert decode_image(encode(dark, "PNG")).max() == 4


def test_values_outside_16_bits_are_refused() -> None:
    wide = np.full((8, 8), 70_000, dtype=np.int32)
    with pytest.raises(ImageDecodeError, match="outside 0-65535"):
        decode_image(encode(wide, "TIFF"))
    with pytest.raises(ImageDecodeError, match="outside 0-65535"):
        decode_image(encode(-wide, "TIFF"))


def test_floating_point_images_are_refused() -> None:
    with pytest.raises(ImageDecodeError, match="floating-point"):
        decode_image(encode(np.full((8, 8), 0.5, dtype=np.float32), "TIFF"))


def test_8_bit_images_are_unchanged() -> None:
    photo = synthetic_photo(40, 50, seed=1)
    np.testing.assert_array_equal(decode_image(encode(photo, "PNG")), photo)
    gray = decode_image(encode(GRAY8, "PNG"))
    np.testing.assert_array_equal(gray[:, :, 0], GRAY8)


def test_postscript_posing_as_an_image_is_refused_without_starting_a_process(monkeypatch) -> None:
    import subprocess

    started: list[object] = []

    def record(*args: object, **kwargs: object) -> None:
        started.append(args)
        raise AssertionError("a process was started while decoding an image")

    monkeypatch.setattr(subprocess, "Popen", record)
    monkeypatch.setattr(EpsImagePlugin, "gs_binary", "gs")  # as on a host with Ghostscript
    with pytest.raises(ImageDecodeError, match="not an image in a format we decode"):
        decode_image(ENDLESS_EPS, name="loop.jpg")
    assert started == []


@pytest.mark.parametrize("image_format", ["JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "PPM"])
def test_raster_formats_decode(image_format: str) -> None:
    photo = synthetic_photo(40, 48, seed=2)
    decoded = decode_image(encode(photo, image_format))
    assert decoded.shape == photo.shape


def test_jpeg_scan_count_reads_markers_only() -> None:
    data = progressive_jpeg(64, 80)
    scans = Image.open(io.BytesIO(data))
    assert scans.info.get("progressive") or scans.info.get("progression")
    count = jpeg_scan_count(data)
    assert 6 <= count <= TYPICAL_JPEG_SCANS
    assert jpeg_scan_count(many_scan_jpeg(64, 80, extra_scans=7)) == count + 7
    baseline = encode(synthetic_photo(64, 80), "JPEG")
    assert jpeg_scan_count(baseline) == 1
    assert jpeg_scan_count(data[: len(data) // 2]) <= count  # truncated: what was seen, no error


def test_progressive_jpeg_with_thousands_of_scans_is_refused_before_decoding() -> None:
    bomb = many_scan_jpeg(200, 200, extra_scans=2000)
    begin = time.perf_counter()
    with pytest.raises(ImageTooLargeError, match="scans is too costly to decode"):
        decode_image(bomb, name="scans.jpg")
    assert time.perf_counter() - begin < 1.0  # refused from the markers (decoding takes seconds)


def test_ordinary_progressive_jpeg_decodes() -> None:
    decoded = decode_image(progressive_jpeg(120, 160))
    assert decoded.shape == (120, 160, 3)


def test_many_scans_of_a_small_image_stay_within_the_budget() -> None:
    # 40 scans of 100x100: 400,000 scan-pixels, far under the budget, within the scan limit
    decoded = decode_image(many_scan_jpeg(100, 100, extra_scans=30))
    assert decoded.shape == (100, 100, 3)
