"""Preprocessing (Detectron2's ResizeShortestEdge, normalisation, padding), the mapping of boxes
back to the original image (Detectron2's, done by its decoders) and the labelled detections."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from dyhead_serve.decode.rescale import rescale_to_original
from dyhead_serve.pipeline.image_io import ImageDecodeError, decode_image
from dyhead_serve.pipeline.postprocess import label_detections
from dyhead_serve.pipeline.preprocess import InputSpec, preprocess, resized_shape

SPEC = InputSpec("BGR", (103.53, 116.28, 123.675), (1.0, 1.0, 1.0), 800, 1333, 128)


@pytest.mark.parametrize(
    ("hw", "expected"),
    [
        ((480, 640), (800, 1067)),  # 640 * 800 / 480 = 1066.67 -> 1067
        ((640, 480), (1067, 800)),
        ((400, 1200), (444, 1333)),  # capped by the long edge: 1333 / 3 = 444.33
        ((800, 800), (800, 800)),
        ((427, 640), (800, 1199)),  # 1199.06
    ],
)
def test_resized_shape(hw, expected):
    assert resized_shape(*hw, 800, 1333) == expected


def test_preprocess_normalises_flips_and_pads():
    image = np.zeros((60, 80, 3), dtype=np.uint8)
    image[..., 0] = 200  # red
    spec = InputSpec("BGR", (10.0, 20.0, 30.0), (1.0, 2.0, 4.0), 60, 1000, 32)
    batch = preprocess([image], spec)
    assert batch.images.shape == (1, 3, 64, 96)
    assert batch.image_sizes == [(60, 80)] and batch.original_sizes == [(60, 80)]
    # BGR: channel 2 holds red
    assert batch.images[0, 2, 0, 0].item() == pytest.approx((200 - 30) / 4)
    assert batch.images[0, 0, 0, 0].item() == pytest.approx((0 - 10) / 1)
    assert batch.images[0, :, 60:, :].abs().sum() == 0 and batch.images[0, :, :, 80:].abs().sum() == 0
    rgb = preprocess([image], InputSpec("RGB", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 60, 1000, 32))
    assert rgb.images[0, 0, 0, 0].item() == 200


def test_preprocess_resizes_with_pil_bilinear():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(30, 40, 3), dtype=np.uint8)
    spec = InputSpec("RGB", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 45, 1000, 1)
    batch = preprocess([image], spec)
    expected = np.asarray(Image.fromarray(image).resize((60, 45), Image.Resampling.BILINEAR))
    assert batch.image_sizes == [(45, 60)]
    np.testing.assert_array_equal(batch.images[0].permute(1, 2, 0).numpy().astype(np.uint8), expected)


def test_rescale_to_original_clips_drops_empty_then_labels():
    decoded = rescale_to_original(
        boxes=torch.tensor([[10.0, 20.0, 50.0, 60.0], [-5.0, -5.0, 500.0, 40.0], [90.0, 10.0, 95.0, 10.0]]),
        scores=torch.tensor([0.9, 0.8, 0.7]),
        classes=torch.tensor([0, 1, 2]),
        image_size=(100, 200),
        original_size=(50, 100),
    )
    det = label_detections(decoded, original_size=(50, 100), class_names=["a", "b", "c"])
    assert det.boxes.tolist() == [[5.0, 10.0, 25.0, 30.0], [0.0, 0.0, 100.0, 20.0]]  # third has zero height
    assert det.labels == ["a", "b"] and (det.width, det.height) == (100, 50)
    assert det.to_json()[0] == {
        "box": [5.0, 10.0, 25.0, 30.0],
        "score": pytest.approx(0.9),
        "class_id": 0,
        "label": "a",
    }


def _encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_decode_image_applies_exif_orientation_and_converts_to_rgb():
    image = Image.new("RGB", (4, 2), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: the decoded image is 2 wide, 4 high
    decoded = decode_image(_encode(image, "JPEG", exif=exif))
    assert decoded.shape == (4, 2, 3)
    gray = decode_image(_encode(Image.new("L", (3, 3), 7), "PNG"))
    assert gray.shape == (3, 3, 3) and gray[0, 0].tolist() == [7, 7, 7]


@pytest.mark.parametrize("data", [b"", b"not an image at all", None])
def test_decode_image_rejects_bad_bytes(data):
    if data is None:  # a truncated PNG
        data = _encode(Image.new("RGB", (64, 64), (1, 2, 3)), "PNG")[:40]
    with pytest.raises(ImageDecodeError):
        decode_image(data)


def test_decode_image_pixel_limit():
    data = _encode(Image.new("RGB", (100, 100)), "PNG")
    with pytest.raises(ImageDecodeError, match="pixels"):
        decode_image(data, max_pixels=5000)
