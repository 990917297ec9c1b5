"""The names mmdetection gives our detectors' tensors, for loading its DyHead checkpoints.

Our ATSS detectors built with ``MODEL.LAYOUT = "mmdet"`` hold the same tensors as mmdetection's
``ATSS`` model with a ResNet or Swin backbone, an ``FPN`` + ``DyHead`` neck and an ``ATSSHead``
without stacked convs; only the names differ (the DyHead blocks already use mmdetection's names
inside; see :mod:`dyhead_serve.modeling.dyhead`). :data:`_NAMES` lists the correspondence:
Detectron2's ``stem`` / ``res{s}`` / ``shortcut`` / ``conv{k}.norm`` are mmdetection's ``conv1`` /
``layer{s-1}`` / ``downsample`` / ``bn{k}``; Swin's ``layers`` / ``attn`` / ``mlp.fc1`` are
``stages`` / ``attn.w_msa`` / ``ffn.layers.0.0``; the FPN's ``fpn_lateral{l}`` /
``fpn_output{l}`` / ``top_block.p6`` are ``neck.0.lateral_convs.i`` / ``fpn_convs.i`` / the
``fpn_convs`` after them; ``dyhead_tower`` is ``neck.1.dyhead_blocks``; the head's ``cls_logits``
/ ``bbox_pred`` / ``centerness`` / ``scales`` are ``bbox_head.atss_cls`` / ``atss_reg`` /
``atss_centerness`` / ``scales`` (whose ``scale`` mmdetection stores as a 0-d tensor).

mmdetection's BatchNorm layers also store ``num_batches_tracked``, which inference never reads:
those entries are accepted and ignored.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from dyhead_serve.checkpoint.load import KeyMap

__all__ = ["mmdet_key_map", "mmdet_name"]

# Our name -> mmdetection's, as (pattern, template) pairs. Named groups fill the template; two are
# shifted: ``layer`` (our res2 is mmdetection's layer1) and ``level`` (our fpn_lateral3 is its
# lateral_convs.0 when the pyramid starts at P3).
_RES = r"bottom_up\.res(?P<layer>\d)\.(?P<b>\d+)\."  # a ResNet block
_LAYER = "backbone.layer{layer}.{b}."
_SWIN = r"bottom_up\.layers\.(?P<i>\d+)\.blocks\.(?P<j>\d+)\."  # a Swin block
_STAGE = "backbone.stages.{i}.blocks.{j}."
_T = r"(?P<t>\w+)"  # weight, bias, running_mean, ...
_NAMES: list[tuple[str, str]] = [
    # ResNet
    (r"bottom_up\.stem\.conv1\.weight", "backbone.conv1.weight"),
    (r"bottom_up\.stem\.conv1\.norm\." + _T, "backbone.bn1.{t}"),
    (_RES + r"conv(?P<k>\d)\.weight", _LAYER + "conv{k}.weight"),
    (_RES + r"conv(?P<k>\d)\.norm\." + _T, _LAYER + "bn{k}.{t}"),
    (_RES + r"shortcut\.weight", _LAYER + "downsample.0.weight"),
    (_RES + r"shortcut\.norm\." + _T, _LAYER + "downsample.1.{t}"),
    # Swin Transformer
    (r"bottom_up\.patch_embed\.proj\." + _T, "backbone.patch_embed.projection.{t}"),
    (r"bottom_up\.patch_embed\.norm\." + _T, "backbone.patch_embed.norm.{t}"),
    (_SWIN + r"attn\.(?P<t>.+)", _STAGE + "attn.w_msa.{t}"),
    (_SWIN + r"mlp\.fc1\." + _T, _STAGE + "ffn.layers.0.0.{t}"),
    (_SWIN + r"mlp\.fc2\." + _T, _STAGE + "ffn.layers.1.{t}"),
    (_SWIN + r"(?P<n>norm[12])\." + _T, _STAGE + "{n}.{t}"),
    (r"bottom_up\.layers\.(?P<i>\d+)\.downsample\.(?P<t>.+)", "backbone.stages.{i}.downsample.{t}"),
    (r"bottom_up\.(?P<n>norm\d)\." + _T, "backbone.{n}.{t}"),
    # FPN
    (r"fpn_lateral(?P<level>\d)\." + _T, "neck.0.lateral_convs.{level}.conv.{t}"),
    (r"fpn_output(?P<level>\d)\." + _T, "neck.0.fpn_convs.{level}.conv.{t}"),
    (r"top_block\.p6\." + _T, "neck.0.fpn_convs.{p6}.conv.{t}"),
    (r"top_block\.p7\." + _T, "neck.0.fpn_convs.{p7}.conv.{t}"),
]
_OTHER_NAMES: list[tuple[str, str]] = [
    (r"backbone\.dyhead_tower\.(?P<t>.+)", "neck.1.dyhead_blocks.{t}"),
    (r"head\.cls_logits\." + _T, "bbox_head.atss_cls.{t}"),
    (r"head\.bbox_pred\." + _T, "bbox_head.atss_reg.{t}"),
    (r"head\.centerness\." + _T, "bbox_head.atss_centerness.{t}"),
    (r"head\.scales\.(?P<l>\d+)\.scale", "bbox_head.scales.{l}.scale"),
]
_RULES = [(re.compile(r"backbone\.backbone\." + p), t) for p, t in _NAMES] + [
    (re.compile(p), t) for p, t in _OTHER_NAMES
]


def mmdet_name(key: str, first_level: int, num_laterals: int) -> str:
    """The mmdetection name of one of our ``state_dict()`` keys.

    Args:
        key: our name.
        first_level: pyramid level of the FPN's first input (3 for P3).
        num_laterals: number of FPN inputs (P6 and P7 follow them in ``fpn_convs``).

    Raises:
        ValueError: the tensor has no counterpart in mmdetection's DyHead models.
    """
    for pattern, template in _RULES:
        match = pattern.fullmatch(key)
        if match is None:
            continue
        groups: dict[str, object] = dict(match.groupdict())
        if "layer" in groups:
            groups["layer"] = int(match["layer"]) - 1
        if "level" in groups:
            groups["level"] = int(match["level"]) - first_level
        return template.format(**groups, p6=num_laterals, p7=num_laterals + 1)
    raise ValueError(f"{key}: this tensor has no counterpart in mmdetection's DyHead ATSS models")


def mmdet_key_map(model_keys: Iterable[str]) -> KeyMap:
    """The :class:`KeyMap` of a detector built with ``MODEL.LAYOUT = "mmdet"``.

    Args:
        model_keys: the detector's ``state_dict()`` keys.

    Raises:
        ValueError: a tensor has no mmdetection name (e.g. an ATSS head with stacked convs).
    """
    keys = list(model_keys)
    laterals = [re.fullmatch(r"backbone\.backbone\.fpn_lateral(\d)\.weight", k) for k in keys]
    levels = sorted(int(m[1]) for m in laterals if m is not None)
    first = levels[0] if levels else 0
    to_file = {key: mmdet_name(key, first, len(levels)) for key in keys}
    counters = {
        name.rsplit(".", 1)[0] + ".num_batches_tracked"
        for name in to_file.values()
        if name.startswith("backbone.") and name.endswith(".running_mean")
    }
    return KeyMap(to_file, optional=frozenset(counters), family="mmdetection")
