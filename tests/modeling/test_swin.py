"""Swin-T backbone: window bookkeeping worked out by hand, padding, shapes, and the official
Swin-T DyHead ATSS model's state dict and checkpoint loading."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dyhead_serve.checkpoint import load_state_dict
from dyhead_serve.config import load_config
from dyhead_serve.modeling.backbone.swin import DropPath, PatchMerging, SwinBlock, SwinTransformer
from dyhead_serve.modeling.backbone.swin_windows import (
    MASKED,
    pad_to_window_multiple,
    relative_position_index,
    shifted_window_mask,
    window_partition,
    window_reverse,
)
from dyhead_serve.modeling.build import build_model
from tests.conftest import official_format_checkpoint, reference_keys

SWIN = "dyhead_swint_atss_fpn_2x_ms"


def test_window_partition_layout_and_round_trip():
    x = torch.arange(16.0).view(1, 4, 4, 1)  # row-major 0..15
    windows = window_partition(x, 2)
    assert windows.shape == (4, 2, 2, 1)
    expected = [[[0, 1], [4, 5]], [[2, 3], [6, 7]], [[8, 9], [12, 13]], [[10, 11], [14, 15]]]
    assert windows[..., 0].tolist() == expected
    y = torch.randn(2, 4, 6, 3)
    torch.testing.assert_close(window_reverse(window_partition(y, 2), 2, 4, 6), y, rtol=0, atol=0)


def test_window_partition_is_contiguous_for_a_single_row_of_windows():
    # reshape would return a strided view here and the caller's .view(-1, ws*ws, C) fail.
    windows = window_partition(torch.arange(8.0).view(1, 2, 4, 1), 2)
    assert windows.view(-1, 4, 1)[:, :, 0].tolist() == [[0, 1, 4, 5], [2, 3, 6, 7]]


def test_window_partition_rejects_non_multiples():
    with pytest.raises(ValueError, match="multiple of the window size"):
        window_partition(torch.zeros(1, 5, 4, 1), 2)


def test_shifted_window_mask_on_4x4_window_2_shift_1():
    # Row bands: rows 0-1 -> 0, row 2 -> 1, row 3 (the wrapped-in original row 0) -> 2; same for
    # columns. Region = 3 * row band + column band; tokens row-major within each window.
    mask = shifted_window_mask(4, 4, window_size=2, shift_size=1)
    assert mask.shape == (4, 4, 4)
    m, o = MASKED, 0.0
    # window 0 (rows 0-1, cols 0-1): regions [0, 0, 0, 0]
    assert mask[0].tolist() == [[o] * 4] * 4
    # window 1 (rows 0-1, cols 2-3): regions [1, 2, 1, 2]
    assert mask[1].tolist() == [[o, m, o, m], [m, o, m, o], [o, m, o, m], [m, o, m, o]]
    # window 2 (rows 2-3, cols 0-1): regions [3, 3, 6, 6]
    assert mask[2].tolist() == [[o, o, m, m], [o, o, m, m], [m, m, o, o], [m, m, o, o]]
    # window 3 (rows 2-3, cols 2-3): regions [4, 5, 7, 8]: each token sees only itself
    assert mask[3].tolist() == [[o if i == j else m for j in range(4)] for i in range(4)]


def test_relative_position_index_window_2():
    # Tokens (0,0), (0,1), (1,0), (1,1); index = (dy + 1) * 3 + (dx + 1), dy = y_query - y_key.
    expected = [[4, 3, 1, 0], [5, 4, 2, 1], [7, 6, 4, 3], [8, 7, 5, 4]]
    index = relative_position_index(2)
    assert index.dtype == torch.int64
    assert index.tolist() == expected
    assert relative_position_index(7).shape == (49, 49)
    assert int(relative_position_index(7).max()) == 13 * 13 - 1


def test_pad_to_window_multiple():
    x = torch.randn(1, 5, 9, 2)
    padded = pad_to_window_multiple(x, 7)
    assert padded.shape == (1, 7, 14, 2)
    torch.testing.assert_close(padded[:, :5, :9], x, rtol=0, atol=0)
    assert padded[:, 5:].abs().sum() == 0 and padded[:, :, 9:].abs().sum() == 0
    assert torch.equal(pad_to_window_multiple(padded, 7), padded)  # a multiple already: unchanged


def test_patch_merging_order_and_odd_padding():
    merge = PatchMerging(dim=1)
    merge.norm = nn.Identity()  # look at the gathered 2x2 neighbourhood itself
    with torch.no_grad():
        merge.reduction.weight.copy_(torch.tensor([[1.0, 10.0, 100.0, 1000.0], [0.0, 0.0, 0.0, 0.0]]))
    x = torch.arange(1.0, 10.0).view(1, 9, 1)  # a 3x3 map holding 1..9, padded to 4x4 with zeros
    out = merge(x, 3, 3)
    # x0 + 10 * x1 + 100 * x2 + 1000 * x3 with x0 = (0,0), x1 = (1,0), x2 = (0,1), x3 = (1,1)
    assert out[0, :, 0].tolist() == [1 + 40 + 200 + 5000, 3 + 60, 7 + 800, 9]


def test_shifted_block_keeps_wrapped_regions_apart():
    torch.manual_seed(0)
    block = SwinBlock(dim=4, num_heads=1, window_size=2, shift_size=1, mlp_ratio=2.0, drop_path=0.0).eval()
    mask = shifted_window_mask(4, 4, 2, 1)
    x = torch.randn(1, 16, 4)
    change = torch.tensor([3.0, -2.0, 0.5, 1.0])  # not constant: LayerNorm would remove that

    def moved(token: int, mask: torch.Tensor) -> torch.Tensor:
        """How much the block's output at every token moves when ``token``'s input changes."""
        changed = x.clone()
        changed[0, token] += change
        return (block(changed, 4, 4, mask) - block(x, 4, 4, mask))[0].abs().amax(dim=-1)

    # Rolled up-left by 1, original (0,0) and (3,3) share window 3 but lie in different regions.
    assert moved(3 * 4 + 3, mask)[0] < 1e-6
    assert moved(3 * 4 + 3, torch.zeros_like(mask))[0] > 1e-3  # without the mask they would interact
    # Original (1,1) and (2,2) share window 0, one region: they interact.
    assert moved(2 * 4 + 2, mask)[1 * 4 + 1] > 1e-3


def test_drop_path_is_identity_in_eval_and_drops_whole_samples_in_training():
    drop = DropPath(0.5)
    x = torch.randn(8, 3, 2)
    assert drop.eval()(x) is x
    torch.manual_seed(0)
    out = drop.train()(x)
    for sample, original in zip(out, x, strict=True):
        assert torch.equal(sample, torch.zeros_like(sample)) or torch.allclose(sample, original * 2)


def test_output_shapes_strides_and_padding_of_odd_sizes():
    model = SwinTransformer(
        ["stage2", "stage3", "stage4", "stage5"], embed_dim=12, depths=(2, 2, 2, 2), num_heads=(1, 2, 3, 4)
    ).eval()
    assert [(k, s.channels, s.stride) for k, s in model.output_shape().items()] == [
        ("stage2", 12, 4), ("stage3", 24, 8), ("stage4", 48, 16), ("stage5", 96, 32)
    ]  # fmt: skip
    with torch.no_grad():
        out = model(torch.randn(2, 3, 61, 250))
    # 61x250 -> ceil(/4) 16x63 -> 8x32 -> 4x16 -> 2x8 (every halving rounds up)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "stage2": (2, 12, 16, 63), "stage3": (2, 24, 8, 32), "stage4": (2, 48, 4, 16), "stage5": (2, 96, 2, 8)
    }  # fmt: skip
    assert model.size_divisibility == 0


def test_unknown_output_is_rejected():
    with pytest.raises(ValueError, match="stage2"):
        SwinTransformer(["res5"], embed_dim=12, depths=(2, 2, 2, 2), num_heads=(1, 2, 3, 4))


@pytest.fixture(scope="module")
def swin_model():
    return build_model(load_config(SWIN, overrides=["MODEL.DEVICE", "cpu"]))


def test_state_dict_equals_official_key_list(swin_model):
    state = swin_model.state_dict()
    # The key list has the float tensors in state-dict order, then the integer buffers.
    floats = [(k, tuple(v.shape), v.dtype) for k, v in state.items() if v.is_floating_point()]
    integers = [(k, tuple(v.shape), v.dtype) for k, v in state.items() if not v.is_floating_point()]
    assert floats + integers == reference_keys(SWIN)
    assert swin_model.size_divisibility == 128
    bottom_up = swin_model.backbone.backbone.bottom_up
    assert [(k, s.channels, s.stride) for k, s in bottom_up.output_shape().items()] == [
        ("stage3", 192, 8), ("stage4", 384, 16), ("stage5", 768, 32)
    ]  # fmt: skip


def test_official_checkpoint_loads_and_runs(swin_model, tmp_path):
    path = official_format_checkpoint(SWIN, tmp_path / "swin.pth")
    report = load_state_dict(swin_model, path)
    assert report.ok
    stored = torch.load(path, weights_only=True)["model"]
    name = "backbone.backbone.bottom_up.layers.2.blocks.3.attn.relative_position_index"
    assert torch.equal(swin_model.state_dict()[name], stored[name])
    with torch.no_grad():
        out = swin_model(torch.randn(1, 3, 128, 128))
    positions = sum((128 // s) ** 2 for s in (8, 16, 32, 64, 128))
    assert out["logits"].shape == (1, positions, 80)
    assert out["deltas"].shape == (1, positions, 4)


def test_onnx_export_is_correct_at_sizes_other_than_the_traced_one(tmp_path):
    """The shifted-window mask must follow the map size in the graph: the padded size was once
    computed as -(-h // ws) * ws, which ONNX's truncating integer division gets wrong."""
    import onnxruntime

    torch.manual_seed(0)
    net = SwinTransformer(["stage2", "stage3"], embed_dim=16, depths=(2, 2), num_heads=(1, 2), window_size=7)
    net.eval()
    path = tmp_path / "swin.onnx"
    with torch.no_grad():
        torch.onnx.export(
            net, (torch.randn(1, 3, 64, 96),), str(path), dynamo=False, opset_version=19,
            input_names=["images"], output_names=["stage2", "stage3"],
            dynamic_axes={
                "images": {2: "h", 3: "w"}, "stage2": {2: "h2", 3: "w2"}, "stage3": {2: "h3", 3: "w3"},
            },
        )  # fmt: skip
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for size in [(64, 96), (80, 80), (100, 60)]:  # 20x20 and 25x15 stage-2 maps: not multiples of 7
        images = torch.randn(1, 3, *size)
        with torch.no_grad():
            expected = net(images)
        got = session.run(None, {"images": images.numpy()})
        for name, value in zip(["stage2", "stage3"], got, strict=True):
            torch.testing.assert_close(torch.from_numpy(value), expected[name], rtol=1e-4, atol=1e-4)
