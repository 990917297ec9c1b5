"""mmdetection's detections, reproduced by our torch backend from mmdetection configs and
checkpoints: the three DyHead models on real photographs (boxes within 0.01 px, scores within
1e-4, same classes in the same order)."""

from __future__ import annotations

import pytest

from dyhead_serve.runtime.base import make_predictor
from tests.mmdet.conftest import CAFFE, SIMPLE, SMALL, SWIN, assert_matches, photo, reference, torch_backend


@pytest.mark.parametrize("config", [CAFFE, SIMPLE])
def test_resnet50_settings_on_the_small_astronaut(config: str, checkpoints) -> None:
    backend = torch_backend(config, SMALL, checkpoints(config))
    assert_matches(make_predictor(backend)(photo("astronaut")), reference(config, "astronaut", "small"))


def test_swin_large_on_the_small_astronaut() -> None:
    backend = torch_backend(SWIN, SMALL)
    assert_matches(make_predictor(backend)(photo("astronaut")), reference(SWIN, "astronaut", "small"))


@pytest.mark.slow
@pytest.mark.parametrize("config", [CAFFE, SIMPLE, SWIN])
def test_full_size_photographs(config: str, checkpoints) -> None:
    weights = checkpoints(config) if config != SWIN else None
    predictor = make_predictor(torch_backend(config, [], weights))
    for name in ("astronaut", "coffee", "chelsea"):
        expected = reference(config, name, "full")
        detections = predictor(photo(name))
        assert list(predictor.last_times.__dict__) and detections.height == expected["ori_shape"][0]
        assert_matches(detections, expected)
