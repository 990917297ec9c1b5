"""Deterministic random weights for mmdetection-format DyHead/ATSS state dicts.

Depends only on numpy and torch.  Used to make the reference checkpoints that the
dyhead-serve fixtures were produced with; the same function rebuilds them bit for bit.

Key-list format (one tensor per line, state_dict order):
    <name> <shape> <dtype>
shape is ``AxBxC`` (``-`` for a 0-d tensor), dtype is ``float32`` or ``int64``.

Drawing rules (see ``_float_spec``): one ``numpy.random.default_rng(seed)`` stream,
consumed key by key in list order, only for float entries (integer entries draw
nothing).  Every float entry draws ``prod(shape)`` values with either
``rng.standard_normal(n)`` (then ``mean + std * z``) or ``rng.uniform(lo, hi, n)``,
in float64, then cast to float32.  Two deterministic post-draw adjustments (no extra
draws): ``bbox_head.atss_cls.weight`` rows are centred (each class filter minus its
mean), and ``*.task_attn_module.conv2.conv.bias`` gets ``DYRELU_A2_SHIFT`` added to its
third quarter (the DyReLU a2 coefficient).  Changing any constant here changes the
weights and therefore invalidates the fixtures made with them.

Integer entries:
* ``*.num_batches_tracked`` -> 0 (int64, 0-d).
* ``*.relative_position_index`` (Swin, shape ``N x N`` with ``N = W*W``) -> recomputed
  here (standard Swin relative position index for a ``W x W`` window:
  ``(dy + W - 1) * (2W - 1) + (dx + W - 1)``), unless ``fixed`` supplies the tensor.
  make_fixtures.py passes the built model's integer buffers as ``fixed`` and also checks
  that the recomputed index equals mmdet's buffer.
* any other int64 entry must be supplied in ``fixed``.

Per-model knob ``input_std``: the first conv of the backbone (``backbone.conv1.weight``
for ResNet, ``backbone.patch_embed.projection.weight`` for Swin) is divided by it, so that
a model whose data preprocessor does not divide by the pixel std (mmdet's caffe-style
config: std = 1) starts with unit-scale activations.  Use ``recommended_kwargs(name)``.
"""

import math
import re

import numpy as np
import torch

__all__ = [
    "parse_key_list",
    "random_state_dict",
    "recommended_kwargs",
    "swin_relative_position_index",
    "write_key_list",
]

_DTYPES = {"float32": torch.float32, "int64": torch.int64}
_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}

# config name -> keyword arguments used for the reference checkpoints
RECOMMENDED = {
    "atss_r50-caffe_fpn_dyhead_1x_coco": {"input_std": 57.375},
    "atss_r50_fpn_dyhead_1x_coco": {},
    "atss_swin-l-p4-w12_fpn_dyhead_ms-2x_coco": {},
}


def recommended_kwargs(config_name):
    return dict(RECOMMENDED.get(config_name, {}))


def write_key_list(state_dict, path):
    with open(path, "w") as f:
        for name, t in state_dict.items():
            shape = "x".join(str(int(s)) for s in t.shape) or "-"
            f.write(f"{name} {shape} {_DTYPE_NAMES[t.dtype]}\n")


def parse_key_list(path):
    """Return [(name, shape_tuple, dtype_str)] from a ``name shape dtype`` file."""
    entries = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, shape, dtype = line.split()
            dims = () if shape == "-" else tuple(int(s) for s in shape.split("x"))
            if dtype not in _DTYPES:
                raise ValueError(f"unknown dtype {dtype!r} in {line}")
            entries.append((name, dims, dtype))
    return entries


def swin_relative_position_index(window):
    """(W*W, W*W) int64 index into a (2W-1)^2 relative-position bias table."""
    ys, xs = np.meshgrid(np.arange(window), np.arange(window), indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    dy = ys[:, None] - ys[None, :] + window - 1
    dx = xs[:, None] - xs[None, :] + window - 1
    return torch.from_numpy((dy * (2 * window - 1) + dx).astype(np.int64))


CLS_W = 4.0
CLS_B = -7.0
DYRELU_A2_SHIFT = 1.5


def _fan_in(shape):
    return int(np.prod(shape[1:])) if len(shape) > 1 else 1


def _float_spec(name, shape):
    """Return ('normal', mean, std) or ('uniform', lo, hi) for a float entry."""
    nd = len(shape)
    # ---- 0-d: ATSS per-level Scale
    if nd == 0:
        return ("uniform", 0.9, 1.1)
    # ---- BatchNorm statistics
    if name.endswith(".running_mean"):
        return ("normal", 0.0, 0.1)
    if name.endswith(".running_var"):
        return ("uniform", 0.5, 1.5)
    # ---- ATSS head
    if name.startswith("bbox_head."):
        if name.endswith("atss_cls.weight"):
            return ("normal", 0.0, CLS_W / math.sqrt(_fan_in(shape)))
        if name.endswith("atss_cls.bias"):
            return ("normal", CLS_B, 0.2)
        if name.endswith("atss_reg.weight"):
            return ("normal", 0.0, 4.0 / math.sqrt(_fan_in(shape)))
        if name.endswith("atss_centerness.weight"):
            return ("normal", 0.0, 4.0 / math.sqrt(_fan_in(shape)))
        if nd == 1:
            return ("normal", 0.0, 0.1)
    # ---- Swin
    if name.endswith("relative_position_bias_table"):
        return ("normal", 0.0, 0.5)
    # ---- 1-d weights are norm-layer scales (BN / GN / LN); biases are small
    if nd == 1 and name.endswith(".weight"):
        # last BN of a ResNet bottleneck (and of its downsample shortcut) kept small so
        # the residual stream grows slowly through the 16 blocks
        if re.search(r"\.layer\d+\.\d+\.bn3\.weight$", name):
            return ("normal", 0.3, 0.03)
        return ("normal", 1.0, 0.1)
    if nd == 1:
        return ("normal", 0.0, 0.02)
    # ---- DyHead
    if ".spatial_conv_offset." in name:
        # offsets (first 18 channels) of a few tenths of a pixel to ~2 px
        return ("normal", 0.0, 2.0 / math.sqrt(_fan_in(shape)))
    # ---- FPN lateral 1x1 convs damped so FPN outputs are O(0.1-1) whatever the backbone
    if ".lateral_convs." in name and name.endswith(".weight"):
        return ("normal", 0.0, 0.1 / math.sqrt(_fan_in(shape)))
    if ".scale_attn_module." in name or ".task_attn_module." in name:
        return ("normal", 0.0, 1.0 / math.sqrt(_fan_in(shape)))
    # ---- convs / linears: He for ReLU/GELU-followed layers in the backbone,
    #      unit gain elsewhere (FPN, DyHead DCNs are followed by GN)
    if name.startswith("backbone."):
        gain = 2.0
        if re.search(r"(qkv|proj|reduction)\.weight$", name) or re.search(r"ffn\.layers\.1\.weight$", name):
            gain = 1.0
        return ("normal", 0.0, math.sqrt(gain / _fan_in(shape)))
    return ("normal", 0.0, math.sqrt(1.0 / _fan_in(shape)))


def random_state_dict(entries, seed, fixed=None, input_std=1.0):
    """entries: [(name, shape, dtype)] as from parse_key_list; returns name -> tensor."""
    rng = np.random.default_rng(seed)
    fixed = fixed or {}
    out = {}
    for name, shape, dtype in entries:
        shape = tuple(shape)
        if dtype != "float32":
            if name in fixed:
                t = fixed[name].clone()
            elif name.endswith(".num_batches_tracked"):
                t = torch.zeros(shape, dtype=torch.int64)
            elif name.endswith(".relative_position_index"):
                w = round(math.sqrt(shape[0]))
                t = swin_relative_position_index(w)
            else:
                raise KeyError(f"no value for integer entry {name}")
            if tuple(t.shape) != shape:
                raise ValueError(f"shape mismatch for {name}")
            out[name] = t.to(_DTYPES[dtype])
            continue
        n = int(np.prod(shape)) if shape else 1
        spec = _float_spec(name, shape)
        if spec[0] == "normal":
            vals = spec[1] + spec[2] * rng.standard_normal(n)
        else:
            vals = rng.uniform(spec[1], spec[2], n)
        if input_std != 1.0 and name in ("backbone.conv1.weight", "backbone.patch_embed.projection.weight"):
            vals = vals / input_std
        if name.endswith("atss_cls.weight"):
            # centre each class's filter over its inputs: DyHead outputs have a
            # positive per-channel mean (DyReLU), which would otherwise hand a few
            # classes a large constant logit offset
            vals = vals.reshape(shape[0], -1)
            vals = (vals - vals.mean(axis=1, keepdims=True)).reshape(-1)
        if name.endswith("task_attn_module.conv2.conv.bias"):
            # DyReLU coefficients (a1, b1, a2, b2) = hsigmoid(conv2) - 0.5, a2 scaled
            # by 2: shift a2 to ~0.5 (leaky rather than plain ReLU), which keeps
            # DyHead outputs closer to zero-mean and the class scores more varied
            c = shape[0] // 4
            vals = vals.copy()
            vals[2 * c : 3 * c] += DYRELU_A2_SHIFT
        out[name] = torch.from_numpy(vals.astype(np.float32).reshape(shape))
    return out
