"""The Detector contract: every detector trains through ``forward_train`` and reports its loss state."""

from __future__ import annotations

import pytest
import torch

from dyhead_serve.modeling.build import build_model
from dyhead_serve.training.from_config import trainer_settings
from dyhead_serve.training.train import Trainer
from tests.modeling.test_rcnn_losses import tiny_rcnn_config
from tests.training.tiny_training import cycle_batches, synthetic_samples, tiny_config


@pytest.mark.parametrize("meta", ["dyhead_r50_atss_fpn_1x", "dyhead_r50_retina_fpn_1x"])
def test_dense_forward_train_is_the_losses_of_forward(tmp_path, meta):
    model = build_model(tiny_config(tmp_path, meta=meta))
    images = torch.randn(2, 3, 128, 128)
    sizes = torch.tensor([[128, 128], [120, 100]])
    boxes = [torch.tensor([[10.0, 12.0, 60.0, 70.0]]), torch.tensor([[5.0, 5.0, 90.0, 40.0]])]
    classes = [torch.tensor([1]), torch.tensor([3])]
    expected = model.losses(model(images, sizes), boxes, classes, (128, 128))
    if hasattr(model.loss, "loss_normalizer"):
        model.loss.loss_normalizer = None  # RetinaNet's moving average moved: start it again
    losses = model.forward_train(images, sizes, boxes, classes)
    assert list(losses) == list(expected)
    for name, value in expected.items():
        assert torch.equal(losses[name], value), name
    assert model.loss_state_dict() == model.loss.state_dict()


def test_loss_state_of_each_detector(tmp_path):
    retina = build_model(tiny_config(tmp_path, meta="dyhead_r50_retina_fpn_1x"))
    assert retina.loss_state_dict() == {}
    retina.load_loss_state_dict({"loss_normalizer": 7.0})
    assert retina.loss_state_dict() == {"loss_normalizer": 7.0}
    assert build_model(tiny_config(tmp_path)).loss_state_dict() == {}  # ATSS: kept, empty
    assert build_model(tiny_rcnn_config(tmp_path)).loss_state_dict() is None  # no checkpoint entry


def test_trainer_refuses_a_detector_that_is_not_a_module(tmp_path):
    class NotAModule:
        size_divisibility = 32

    with pytest.raises(TypeError, match=r"nn\.Module"):
        Trainer(NotAModule(), cycle_batches(synthetic_samples(2), 2), trainer_settings(tiny_config(tmp_path)))  # type: ignore[arg-type]
