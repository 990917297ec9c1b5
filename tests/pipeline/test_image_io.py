"""Images with more than 8 bits per sample are decoded faithfully, or refused with a clear error."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from dyhead_serve.data.sample_image import synthetic_photo
from dyhead_serve.pipeline.image_io import ImageDecodeError, decode_image


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
