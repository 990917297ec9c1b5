"""mmdetection DyHead configs -> our config tree: the same model, described by our keys.

An mmdetection 3.x ``ATSS`` detector with a ResNet or Swin backbone, an ``FPN`` + ``DyHead``
neck and an ``ATSSHead`` without stacked convs is a model we build; its config becomes a
:class:`~dyhead_serve.config.CfgNode` with ``MODEL.LAYOUT = "mmdet"``, ``TEST.POSTPROCESS =
"mmdet"`` and ``INPUT.RESIZE_RULE = "mmdet"``, so that every command (predict, eval, export,
serve) runs it through the one pipeline. What we cannot reproduce exactly is refused with a
:class:`~dyhead_serve.config.ConfigError` naming the mmdetection key; options that only matter
to training (losses, assigners, init_cfg, frozen stages, ...) are ignored.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from dyhead_serve.config.defaults import get_default_config
from dyhead_serve.config.errors import ConfigError
from dyhead_serve.config.node import CfgNode

__all__ = ["mmdet_to_config"]

_RESNET_DEPTHS = (18, 34, 50, 101, 152)
_IGNORED_STEPS = ("LoadAnnotations", "PackDetInputs")
_LOAD_STEPS = ("LoadImageFromFile", "LoadImageFromNDArray")


class _Section:
    """One dict of an mmdetection config, read with defaults and checked, for error messages
    that name the key (``model.backbone.style``)."""

    def __init__(self, data: Any, path: str, source: str) -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: {path} must be a dict, got {type(data).__name__}")
        self.data, self.path, self.source = data, path, source

    def fail(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.source}: {self.path}.{key} {message}")

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def require(self, key: str) -> Any:
        if key not in self.data:
            raise self.fail(key, "is missing")
        return self.data[key]

    def expect(self, key: str, allowed: Sequence[Any], default: Any = None) -> Any:
        """The value of ``key`` (``default`` when absent), which must be one of ``allowed``."""
        value = self.data.get(key, default)
        if value not in allowed:
            shown = " or ".join(repr(a) for a in allowed)
            raise self.fail(key, f"= {value!r} is not supported (only {shown})")
        return value

    def type(self, *allowed: str) -> str:
        value = str(self.require("type")).removeprefix("mmdet.")
        if value not in allowed:
            raise self.fail("type", f"= {value!r} is not supported (only {', '.join(allowed)})")
        return value

    def sub(self, key: str, default: Any = None) -> _Section:
        return _Section(self.data.get(key, default), f"{self.path}.{key}", self.source)


def mmdet_to_config(data: dict[str, Any], source: str) -> CfgNode:
    """Our config for the mmdetection config ``data`` (as :func:`read_mmdet_config` gives it).

    Raises:
        ConfigError: the model is not one we reproduce exactly; the message names the key.
    """
    cfg = get_default_config()
    model = _Section(data.get("model"), "model", source)
    model.type("ATSS")
    cfg.MODEL.META_ARCHITECTURE = "ATSS"
    cfg.MODEL.LAYOUT = "mmdet"
    cfg.TEST.POSTPROCESS = "mmdet"
    _data_preprocessor(cfg, model.sub("data_preprocessor", {"type": "DetDataPreprocessor"}))
    names, channels = _backbone(cfg, model.sub("backbone"))
    strides = _neck(cfg, model, names, channels)
    _head(cfg, model, strides)
    _test_pipeline(cfg, data, source)
    classes = _class_names(data)
    if classes is not None:
        if len(classes) != cfg.MODEL.ATSS.NUM_CLASSES:
            raise ConfigError(
                f"{source}: test_dataloader.dataset.metainfo.classes names {len(classes)} classes, "
                f"the head predicts {cfg.MODEL.ATSS.NUM_CLASSES}"
            )
        cfg.MODEL.CLASS_NAMES = list(classes)
    return cfg


def _data_preprocessor(cfg: CfgNode, pre: _Section) -> None:
    pre.type("DetDataPreprocessor")
    mean, std = pre.get("mean"), pre.get("std")
    if mean is None and std is None:
        mean, std = [0.0] * 3, [1.0] * 3  # mmengine does not normalise then
    for key, value in (("mean", mean), ("std", std)):
        if not isinstance(value, list | tuple) or len(value) != 3:
            raise pre.fail(key, f"must list 3 values, got {value!r}")
    swap = bool(pre.get("bgr_to_rgb", False)) or bool(pre.get("rgb_to_bgr", False))
    # mmdetection decodes images as BGR; either flag swaps the channels to RGB.
    cfg.INPUT.FORMAT = "RGB" if swap else "BGR"
    cfg.MODEL.PIXEL_MEAN = [float(v) for v in mean]
    cfg.MODEL.PIXEL_STD = [float(v) for v in std]
    pad = pre.get("pad_size_divisor", 1)
    if not isinstance(pad, int) or pad < 1:
        raise pre.fail("pad_size_divisor", f"must be a positive integer, got {pad!r}")
    cfg.INPUT.SIZE_DIVISIBILITY = pad
    pre.expect("pad_value", (0, 0.0), 0)
    pre.expect("batch_augments", (None,), None)


def _backbone(cfg: CfgNode, backbone: _Section) -> tuple[list[str], list[int]]:
    """Configure the backbone; return its output names and channels, in out_indices order."""
    kind = backbone.type("ResNet", "SwinTransformer")
    if kind == "ResNet":
        return _resnet(cfg, backbone)
    return _swin(cfg, backbone)


def _resnet(cfg: CfgNode, backbone: _Section) -> tuple[list[str], list[int]]:
    depth = backbone.expect("depth", _RESNET_DEPTHS)
    backbone.expect("num_stages", (4,), 4)
    backbone.expect("in_channels", (3,), 3)
    backbone.expect("base_channels", (64,), 64)
    backbone.expect("stem_channels", (None, 64), None)
    backbone.expect("strides", ((1, 2, 2, 2), [1, 2, 2, 2]), (1, 2, 2, 2))
    backbone.expect("dilations", ((1, 1, 1, 1), [1, 1, 1, 1]), (1, 1, 1, 1))
    backbone.expect("deep_stem", (False,), False)
    backbone.expect("avg_down", (False,), False)
    backbone.expect("dcn", (None,), None)
    backbone.expect("plugins", (None,), None)
    style = backbone.expect("style", ("pytorch", "caffe"), "pytorch")
    norm = backbone.sub("norm_cfg", {"type": "BN"})
    # In eval mode BatchNorm uses its running statistics: our frozen norm computes the same
    # F.batch_norm.
    norm.type("BN", "SyncBN")
    indices = _indices(backbone, 4)
    r = cfg.MODEL.RESNETS
    r.DEPTH = depth
    r.STRIDE_IN_1X1 = style == "caffe"  # caffe puts the stride on the first 1x1 conv
    r.NORM = "FrozenBN"
    r.RES2_OUT_CHANNELS = 64 if depth in (18, 34) else 256
    r.OUT_FEATURES = [f"res{i + 2}" for i in indices]
    cfg.MODEL.BACKBONE.NAME = "build_retinanet_resnet_fpn_dyhead_backbone"
    cfg.MODEL.BACKBONE.FREEZE_AT = int(backbone.get("frozen_stages", -1)) + 1
    per_stage = [r.RES2_OUT_CHANNELS * 2**i for i in range(4)]
    return list(r.OUT_FEATURES), [per_stage[i] for i in indices]


def _swin(cfg: CfgNode, backbone: _Section) -> tuple[list[str], list[int]]:
    backbone.expect("in_channels", (3,), 3)
    backbone.expect("patch_size", (4,), 4)
    backbone.expect("strides", ((4, 2, 2, 2), [4, 2, 2, 2]), (4, 2, 2, 2))
    backbone.expect("qkv_bias", (True,), True)
    backbone.expect("qk_scale", (None,), None)
    backbone.expect("patch_norm", (True,), True)
    backbone.expect("use_abs_pos_embed", (False,), False)
    depths = list(backbone.get("depths", (2, 2, 6, 2)))
    heads = list(backbone.get("num_heads", (3, 6, 12, 24)))
    if len(depths) != 4 or len(heads) != 4:
        raise backbone.fail("depths", "and num_heads must have 4 stages each")
    embed = int(backbone.get("embed_dims", 96))
    mlp_ratio = backbone.get("mlp_ratio", 4)
    if int(embed * mlp_ratio) != embed * mlp_ratio:
        raise backbone.fail("mlp_ratio", f"= {mlp_ratio!r} gives a fractional hidden width")
    indices = _indices(backbone, 4)
    s = cfg.MODEL.SWINT
    s.EMBED_DIM = embed
    s.DEPTHS = depths
    s.NUM_HEADS = heads
    s.WINDOW_SIZE = int(backbone.get("window_size", 7))
    s.MLP_RATIO = mlp_ratio
    s.DROP_PATH_RATE = float(backbone.get("drop_path_rate", 0.1))
    s.APE = False
    s.OUT_FEATURES = [f"stage{i + 2}" for i in indices]
    cfg.MODEL.BACKBONE.NAME = "build_retinanet_swint_fpn_dyhead_backbone"
    cfg.MODEL.BACKBONE.FREEZE_AT = int(backbone.get("frozen_stages", -1))
    return list(s.OUT_FEATURES), [embed * 2**i for i in indices]


def _indices(backbone: _Section, stages: int) -> list[int]:
    indices = list(backbone.get("out_indices", range(stages)))
    if not indices or indices != sorted(set(indices)) or not all(0 <= i < stages for i in indices):
        raise backbone.fail(
            "out_indices", f"must be increasing stage indices in [0, {stages}), got {indices}"
        )
    return indices


def _neck(cfg: CfgNode, model: _Section, names: list[str], channels: list[int]) -> list[int]:
    """Configure FPN + DyHead; return the strides of the pyramid levels."""
    neck = model.get("neck")
    if not isinstance(neck, list | tuple) or len(neck) != 2:
        raise model.fail("neck", "must be [FPN, DyHead], the DyHead models' neck")
    fpn = _Section(neck[0], "model.neck[0]", model.source)
    dyhead = _Section(neck[1], "model.neck[1]", model.source)
    fpn.type("FPN")
    dyhead.type("DyHead")
    if list(fpn.require("in_channels")) != channels:
        raise fpn.fail(
            "in_channels", f"= {fpn.get('in_channels')} differs from the backbone's outputs {channels}"
        )
    start = fpn.get("start_level", 0)
    if not isinstance(start, int) or not 0 <= start < len(names):
        raise fpn.fail("start_level", f"= {start!r} is out of range")
    fpn.expect("end_level", (-1,), -1)
    fpn.expect("add_extra_convs", ("on_output",))
    inputs = names[start:]
    fpn.expect("num_outs", (len(inputs) + 2,))
    fpn.expect("norm_cfg", (None,), None)
    fpn.expect("conv_cfg", (None,), None)
    fpn.expect("act_cfg", (None,), None)
    fpn.expect("upsample_cfg", ({"mode": "nearest"},), {"mode": "nearest"})
    out_channels = int(fpn.require("out_channels"))
    cfg.MODEL.FPN.IN_FEATURES = inputs
    cfg.MODEL.FPN.OUT_CHANNELS = out_channels
    cfg.MODEL.FPN.NORM = ""
    cfg.MODEL.FPN.RELU_BEFORE_P7 = bool(fpn.get("relu_before_extra_convs", False))
    # resK and stageK have stride 2**K; P6 and P7 follow the coarsest input.
    last = int(inputs[-1][-1])
    strides = [2 ** int(name[-1]) for name in inputs] + [2 ** (last + 1), 2 ** (last + 2)]
    coarsest_input = 2**last
    pad = cfg.INPUT.SIZE_DIVISIBILITY
    if pad % coarsest_input:
        raise ConfigError(
            f"{model.source}: model.data_preprocessor.pad_size_divisor = {pad}: the FPN needs inputs "
            f"padded to a multiple of its coarsest input stride, {coarsest_input}"
        )
    if (
        dyhead.get("in_channels", out_channels) != out_channels
        or dyhead.get("out_channels", out_channels) != out_channels
    ):
        raise dyhead.fail(
            "out_channels", f"and in_channels must equal the FPN's out_channels ({out_channels})"
        )
    blocks = dyhead.get("num_blocks", 6)
    if not isinstance(blocks, int) or blocks < 1:
        raise dyhead.fail("num_blocks", f"must be a positive integer, got {blocks!r}")
    cfg.MODEL.DYHEAD.NUM_CONVS = blocks
    cfg.MODEL.DYHEAD.CHANNELS = out_channels
    cfg.MODEL.ATSS.IN_FEATURES = [f"p{int(math.log2(s))}" for s in strides]
    return strides


def _head(cfg: CfgNode, model: _Section, strides: list[int]) -> None:
    head = model.sub("bbox_head")
    head.type("ATSSHead")
    a = cfg.MODEL.ATSS
    a.NUM_CLASSES = int(head.require("num_classes"))
    head.expect("stacked_convs", (0,), 4)
    a.NUM_CONVS = 0
    a.PRED_KERNEL_SIZE = head.expect("pred_kernel_size", (1, 3), 3)
    if head.get("in_channels") != cfg.MODEL.DYHEAD.CHANNELS:
        raise head.fail("in_channels", f"must equal the neck's {cfg.MODEL.DYHEAD.CHANNELS} channels")
    head.sub("loss_cls", {}).expect("use_sigmoid", (True,), False)
    _anchors(cfg, head.sub("anchor_generator"), strides)
    coder = head.sub("bbox_coder")
    coder.type("DeltaXYWHBBoxCoder")
    coder.expect("clip_border", (True,), True)
    coder.expect("add_ctr_clamp", (False,), False)
    a.BBOX_REG_MEANS = tuple(float(v) for v in coder.get("target_means", (0.0, 0.0, 0.0, 0.0)))
    a.BBOX_REG_STDS = tuple(float(v) for v in coder.get("target_stds", (1.0, 1.0, 1.0, 1.0)))
    test = model.sub("test_cfg") if model.get("test_cfg") is not None else head.sub("test_cfg")
    nms_pre = test.require("nms_pre")
    if not isinstance(nms_pre, int) or nms_pre < 1:
        raise test.fail("nms_pre", f"must be a positive integer, got {nms_pre!r}")
    a.PRE_NMS_TOP_N = nms_pre
    a.INFERENCE_TH = float(test.get("score_thr", 0.0))
    nms = test.sub("nms")
    nms.type("nms")
    a.NMS_TH = float(nms.require("iou_threshold"))
    cfg.TEST.DETECTIONS_PER_IMAGE = int(test.require("max_per_img"))
    cfg.TEST.MIN_BOX_SIZE = float(test.get("min_bbox_size", -1))


def _anchors(cfg: CfgNode, anchors: _Section, strides: list[int]) -> None:
    anchors.type("AnchorGenerator")
    given = [s if isinstance(s, int) else s[0] for s in anchors.require("strides")]
    if given != strides:
        raise anchors.fail("strides", f"= {given} differs from the pyramid's strides {strides}")
    anchors.expect("base_sizes", (None,), None)
    anchors.expect("centers", (None,), None)
    anchors.expect("scale_major", (True,), True)
    ratios = [float(r) for r in anchors.require("ratios")]
    if anchors.get("scales") is not None:
        scales = [float(s) for s in anchors.get("scales")]
    else:
        per_octave = int(anchors.require("scales_per_octave"))
        scales = [
            float(anchors.require("octave_base_scale")) * 2 ** (i / per_octave) for i in range(per_octave)
        ]
    if len(scales) > 1 and len(ratios) > 1:
        raise anchors.fail("ratios", "and several scales order anchors differently from ours; not supported")
    g = cfg.MODEL.ANCHOR_GENERATOR
    g.SIZES = [[stride * scale for scale in scales] for stride in strides]
    g.ASPECT_RATIOS = [ratios]
    g.OFFSET = float(anchors.get("center_offset", 0.0))


def _test_pipeline(cfg: CfgNode, data: dict[str, Any], source: str) -> None:
    steps, where = _find_test_pipeline(data, source)
    resize = None
    for i, raw in enumerate(steps):
        step = _Section(raw, f"{where}[{i}]", source)
        kind = str(step.require("type")).removeprefix("mmdet.")
        if kind in _LOAD_STEPS:
            step.expect("to_float32", (False,), False)
            step.expect("color_type", ("color",), "color")
        elif kind == "Resize":
            resize = step
        elif kind not in _IGNORED_STEPS:
            supported = "LoadImageFromFile, Resize, LoadAnnotations, PackDetInputs"
            raise step.fail("type", f"= {kind!r}: test-time step not supported (only {supported})")
    if resize is None:
        raise ConfigError(f"{source}: {where} has no Resize step")
    resize.expect("keep_ratio", (True,), False)
    resize.expect("scale_factor", (None,), None)
    resize.expect("interpolation", ("bilinear",), "bilinear")
    scale = resize.require("scale")
    sides = [scale, scale] if isinstance(scale, int) else list(scale)
    if len(sides) != 2 or not all(isinstance(s, int) and s > 0 for s in sides):
        raise resize.fail("scale", f"must be two positive integers, got {scale!r}")
    cfg.INPUT.MIN_SIZE_TEST = min(sides)
    cfg.INPUT.MAX_SIZE_TEST = max(sides)
    cfg.INPUT.RESIZE_RULE = "mmdet"
    cfg.INPUT.RESIZE_BACKEND = resize.expect("backend", ("cv2", "pillow"), "cv2")


def _find_test_pipeline(data: dict[str, Any], source: str) -> tuple[list[Any], str]:
    """The test pipeline as mmdetection's ``get_test_pipeline_cfg`` finds it, else the
    top-level ``test_pipeline``."""
    dataset = (data.get("test_dataloader") or {}).get("dataset")
    where = "test_dataloader.dataset"
    while isinstance(dataset, dict):
        if "pipeline" in dataset:
            return _as_list(dataset["pipeline"], f"{where}.pipeline", source), f"{where}.pipeline"
        if "dataset" in dataset:
            dataset, where = dataset["dataset"], f"{where}.dataset"
        elif dataset.get("datasets"):
            dataset, where = dataset["datasets"][0], f"{where}.datasets[0]"
        else:
            break
    if "test_pipeline" in data:
        return _as_list(data["test_pipeline"], "test_pipeline", source), "test_pipeline"
    raise ConfigError(f"{source}: no test pipeline (test_dataloader.dataset.pipeline or test_pipeline)")


def _as_list(value: Any, where: str, source: str) -> list[Any]:
    if not isinstance(value, list | tuple):
        raise ConfigError(f"{source}: {where} must be a list of steps")
    return list(value)


def _class_names(data: dict[str, Any]) -> list[str] | None:
    dataset = (data.get("test_dataloader") or {}).get("dataset")
    while isinstance(dataset, dict):
        metainfo = dataset.get("metainfo")
        if isinstance(metainfo, dict) and metainfo.get("classes") is not None:
            return [str(c) for c in metainfo["classes"]]
        dataset = dataset.get("dataset")
    return None
