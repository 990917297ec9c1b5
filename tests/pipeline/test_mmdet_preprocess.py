"""mmdetection's test-time resize (mmcv's keep-ratio rule, Pillow or OpenCV) in InputSpec."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from PIL import Image

from dyhead_serve.pipeline.preprocess import (
    InputSpec,
    MissingExtraError,
    mmdet_rescaled_shape,
    preprocess,
    resized_shape,
)


def _spec(backend: str = "pillow", divisor: int = 32) -> InputSpec:
    return InputSpec("RGB", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 800, 1333, divisor, "mmdet", backend)


@pytest.mark.parametrize(
    ("hw", "expected"),
    [
        ((512, 512), (800, 800)),  # astronaut
        ((400, 600), (800, 1200)),  # coffee
        ((300, 451), (800, 1203)),  # chelsea: factor 800/300, 451 * 8/3 = 1202.67 -> 1203
        ((198, 516), (512, 1333)),  # one factor min(1333/516, 800/198) = 2.5833: 198 * 2.5833 = 511.5 -> 512
    ],
)
def test_mmcv_keep_ratio_rule(hw: tuple[int, int], expected: tuple[int, int]) -> None:
    assert mmdet_rescaled_shape(*hw, 800, 1333) == expected
    assert _spec().resized_shape(*hw) == expected


def test_the_rules_differ_where_detectron2_rounds_twice() -> None:
    # Detectron2 scales the short side to 800 first, then caps the long side: 511.4 -> 511.
    assert resized_shape(198, 516, 800, 1333) == (511, 1333)


@pytest.mark.parametrize("backend", ["pillow", "cv2"])
def test_resize_backends(backend: str) -> None:
    import cv2

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
    batch = preprocess([image], _spec(backend))
    assert batch.image_sizes == [(800, 1067)] and batch.padded_hw == (800, 1088)
    if backend == "cv2":
        expected = cv2.resize(image, (1067, 800), interpolation=cv2.INTER_LINEAR)
    else:
        expected = np.asarray(Image.fromarray(image).resize((1067, 800), Image.Resampling.BILINEAR))
    assert np.array_equal(
        batch.images[0, :, :800, :1067].permute(1, 2, 0).numpy(), expected.astype(np.float32)
    )
    assert float(batch.images[0, :, :, 1067:].abs().max()) == 0.0  # zero padding after normalisation


def test_missing_opencv_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cv2", None)  # import cv2 now raises ImportError
    with pytest.raises(MissingExtraError, match=r"pip install 'dyhead-serve\[mmdet\]'"):
        _spec("cv2")
    _spec("pillow")  # Pillow models do not need it


def test_spec_round_trip_and_old_model_json() -> None:
    spec = _spec("cv2", 128)
    assert InputSpec.from_dict(spec.to_dict()) == spec
    old = {k: v for k, v in spec.to_dict().items() if k not in ("resize_rule", "resize_backend")}
    assert (InputSpec.from_dict(old).resize_rule, InputSpec.from_dict(old).resize_backend) == (
        "detectron2",
        "pillow",
    )
    with pytest.raises(ValueError, match="resize rule"):
        InputSpec("RGB", (0.0,) * 3, (1.0,) * 3, 800, 1333, 32, "yolo")
    with pytest.raises(ValueError, match="resize backend"):
        InputSpec("RGB", (0.0,) * 3, (1.0,) * 3, 800, 1333, 32, "mmdet", "skimage")
