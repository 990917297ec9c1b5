"""Anchors and box coding, with values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from dyhead_serve.decode.anchors import AnchorGenerator, broadcast_per_level, cell_anchors
from dyhead_serve.decode.box_coding import BoxCoder


def test_cell_anchors_area_and_ratio():
    a = cell_anchors([32.0], [0.5, 1.0, 2.0])
    assert a.shape == (3, 4)
    torch.testing.assert_close(a[1], torch.tensor([-16.0, -16.0, 16.0, 16.0]))
    w, h = a[0, 2] - a[0, 0], a[0, 3] - a[0, 1]
    assert math.isclose(float(w), math.sqrt(2048), rel_tol=1e-6)  # ratio 0.5 = h / w
    assert math.isclose(float(h / w), 0.5, rel_tol=1e-6)
    # sizes vary slowest
    b = cell_anchors([8.0, 16.0], [1.0, 2.0])
    assert b[:, 2].tolist()[0] == 4.0 and b[2, 2].item() == 8.0


def test_grid_order_and_offset():
    gen = AnchorGenerator(strides=[8], sizes=[[16.0]], aspect_ratios=[[1.0]], offset=0.5)
    (anchors,) = gen.grid_anchors([(2, 3)])
    centres = ((anchors[:, :2] + anchors[:, 2:]) / 2).tolist()
    # (y, x) raster order, centres at (i + 0.5) * stride
    assert centres == [[4, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12]]
    gen0 = AnchorGenerator(strides=[8], sizes=[[16.0]], aspect_ratios=[[1.0, 2.0]], offset=0.0)
    (anchors0,) = gen0.grid_anchors([(1, 2)])
    assert anchors0.shape == (4, 4)
    assert anchors0[2].tolist() == [0.0, -8.0, 16.0, 8.0]  # second position, first anchor


def test_broadcast_rules():
    assert broadcast_per_level([1.0], 3, "X") == [[1.0]] * 3
    assert broadcast_per_level([[0.5, 1.0]], 2, "X") == [[0.5, 1.0]] * 2
    assert broadcast_per_level([[32], [64]], 2, "X") == [[32.0], [64.0]]
    with pytest.raises(ValueError, match="3 levels"):
        broadcast_per_level([[32], [64]], 3, "X")


def test_box_coder_round_trip_and_hand_values():
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 25.0, 15.0]])
    targets = torch.tensor([[1.0, 0.0, 11.0, 10.0], [0.0, 0.0, 40.0, 20.0]])
    deltas = coder.get_deltas(anchors, targets)
    torch.testing.assert_close(deltas[0], torch.tensor([1.0, 0.0, 0.0, 0.0]))  # 10 * 1px / 10px
    torch.testing.assert_close(deltas[1, 2], torch.tensor(5 * math.log(2.0)))
    torch.testing.assert_close(coder.apply_deltas(deltas, anchors), targets)


def test_box_coder_clamps_scale():
    coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
    box = coder.apply_deltas(torch.tensor([[0.0, 0.0, 100.0, 0.0]]), torch.tensor([[0.0, 0.0, 16.0, 16.0]]))
    assert math.isclose(float(box[0, 2] - box[0, 0]), 1000.0, rel_tol=1e-5)  # exp(log(1000/16)) * 16
