"""mmdetection DyHead configs -> our keys: the shipped configs, dumps, user configs, refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from dyhead_serve.config import ConfigError, load_config
from dyhead_serve.config.mmdet import MMDET_CONFIGS, load_mmdet_config, mmdet_config_path, read_mmdet_config

CAFFE, SIMPLE, SWIN = MMDET_CONFIGS


def test_reproduction_setting() -> None:
    cfg = load_config(CAFFE)
    assert (cfg.MODEL.META_ARCHITECTURE, cfg.MODEL.LAYOUT, cfg.TEST.POSTPROCESS) == ("ATSS", "mmdet", "mmdet")
    assert cfg.MODEL.BACKBONE.NAME == "build_retinanet_resnet_fpn_dyhead_backbone"
    assert cfg.MODEL.RESNETS.DEPTH == 50 and cfg.MODEL.RESNETS.STRIDE_IN_1X1 is True  # caffe style
    assert cfg.MODEL.RESNETS.OUT_FEATURES == ["res2", "res3", "res4", "res5"]
    assert cfg.MODEL.FPN.IN_FEATURES == ["res3", "res4", "res5"]  # start_level=1
    assert cfg.MODEL.FPN.RELU_BEFORE_P7 is False
    assert cfg.MODEL.ATSS.IN_FEATURES == ["p3", "p4", "p5", "p6", "p7"]
    assert (cfg.MODEL.DYHEAD.NUM_CONVS, cfg.MODEL.ATSS.NUM_CONVS, cfg.MODEL.ATSS.PRED_KERNEL_SIZE) == (
        6,
        0,
        1,
    )
    assert cfg.MODEL.ANCHOR_GENERATOR.SIZES == [[64.0], [128.0], [256.0], [512.0], [1024.0]]
    assert cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS == [[1.0]] and cfg.MODEL.ANCHOR_GENERATOR.OFFSET == 0.5
    assert cfg.MODEL.ATSS.BBOX_REG_STDS == (0.1, 0.1, 0.2, 0.2)
    assert (cfg.MODEL.ATSS.INFERENCE_TH, cfg.MODEL.ATSS.PRE_NMS_TOP_N, cfg.MODEL.ATSS.NMS_TH) == (
        0.05,
        1000,
        0.6,
    )
    assert (cfg.TEST.DETECTIONS_PER_IMAGE, cfg.TEST.MIN_BOX_SIZE) == (100, 0.0)
    assert cfg.INPUT.FORMAT == "BGR" and cfg.MODEL.PIXEL_MEAN == [103.53, 116.28, 123.675]
    assert cfg.MODEL.PIXEL_STD == [1.0, 1.0, 1.0] and cfg.INPUT.SIZE_DIVISIBILITY == 128
    assert (cfg.INPUT.RESIZE_RULE, cfg.INPUT.RESIZE_BACKEND) == ("mmdet", "pillow")
    assert (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST) == (800, 1333)


def test_simple_setting() -> None:
    cfg = load_config(SIMPLE)
    assert cfg.MODEL.RESNETS.STRIDE_IN_1X1 is False  # pytorch style
    assert cfg.MODEL.ATSS.PRED_KERNEL_SIZE == 3 and cfg.MODEL.ANCHOR_GENERATOR.OFFSET == 0.0
    assert cfg.INPUT.FORMAT == "RGB" and cfg.MODEL.PIXEL_STD == [58.395, 57.12, 57.375]
    assert cfg.INPUT.SIZE_DIVISIBILITY == 32 and cfg.INPUT.RESIZE_BACKEND == "cv2"


def test_swin_large() -> None:
    cfg = load_config(SWIN)
    s = cfg.MODEL.SWINT
    assert cfg.MODEL.BACKBONE.NAME == "build_retinanet_swint_fpn_dyhead_backbone"
    assert (s.EMBED_DIM, s.DEPTHS, s.NUM_HEADS, s.WINDOW_SIZE) == (192, [2, 2, 18, 2], [6, 12, 24, 48], 12)
    assert s.OUT_FEATURES == ["stage3", "stage4", "stage5"] == cfg.MODEL.FPN.IN_FEATURES
    assert (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, cfg.INPUT.RESIZE_BACKEND) == (
        1200,
        2000,
        "pillow",
    )
    assert cfg.INPUT.SIZE_DIVISIBILITY == 128 and cfg.INPUT.FORMAT == "RGB"


def test_overrides_apply_after_translation() -> None:
    cfg = load_config(
        SIMPLE, ["MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", "384", "MODEL.ATSS.INFERENCE_TH", "0.3"]
    )
    assert (cfg.MODEL.DEVICE, cfg.INPUT.MIN_SIZE_TEST, cfg.MODEL.ATSS.INFERENCE_TH) == ("cpu", 384, 0.3)
    assert load_config(str(mmdet_config_path(SIMPLE))) == load_mmdet_config(SIMPLE)


# A resolved dump as mmengine's Config.dump writes it: plain assignments, the bases merged in.
DUMP = """auto_scale_lr = dict(base_batch_size=16, enable=False)
backend_args = None
default_scope = 'mmdet'
model = dict(
    backbone=dict(
        depth=50, frozen_stages=1, init_cfg=None, norm_cfg=dict(requires_grad=True, type='BN'),
        norm_eval=True, num_stages=4, out_indices=(0, 1, 2, 3, ), style='pytorch', type='ResNet'),
    bbox_head=dict(
        anchor_generator=dict(octave_base_scale=8, ratios=[1.0, ], scales_per_octave=1,
            strides=[8, 16, 32, 64, 128, ], type='AnchorGenerator'),
        bbox_coder=dict(target_means=[0.0, 0.0, 0.0, 0.0, ], target_stds=[0.1, 0.1, 0.2, 0.2, ],
            type='DeltaXYWHBBoxCoder'),
        feat_channels=256, in_channels=256,
        loss_cls=dict(alpha=0.25, gamma=2.0, loss_weight=1.0, type='FocalLoss', use_sigmoid=True),
        num_classes=80, stacked_convs=0,
        test_cfg=dict(max_per_img=100, min_bbox_size=0, nms=dict(iou_threshold=0.6, type='nms'), nms_pre=1000,
            score_thr=0.05),
        type='ATSSHead'),
    data_preprocessor=dict(bgr_to_rgb=True, mean=[123.675, 116.28, 103.53, ], pad_size_divisor=32,
        std=[58.395, 57.12, 57.375, ], type='DetDataPreprocessor'),
    neck=[
        dict(add_extra_convs='on_output', in_channels=[256, 512, 1024, 2048, ], num_outs=5, out_channels=256,
            start_level=1, type='FPN'),
        dict(in_channels=256, num_blocks=6, out_channels=256, type='DyHead'),
    ],
    test_cfg=dict(max_per_img=100, min_bbox_size=0, nms=dict(iou_threshold=0.6, type='nms'), nms_pre=1000,
        score_thr=0.05),
    type='ATSS')
optim_wrapper = dict(
    optimizer=dict(lr=0.01, momentum=0.9, type='SGD', weight_decay=0.0001), type='OptimWrapper')
test_dataloader = dict(
    batch_size=1,
    dataset=dict(
        ann_file='annotations/instances_val2017.json', backend_args=None, data_prefix=dict(img='val2017/'),
        data_root='data/coco/',
        pipeline=[
            dict(backend_args=None, type='LoadImageFromFile'),
            dict(keep_ratio=True, scale=(1333, 800, ), type='Resize'),
            dict(type='LoadAnnotations', with_bbox=True),
            dict(meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor', ),
                 type='PackDetInputs'),
        ],
        test_mode=True, type='CocoDataset'),
    drop_last=False, num_workers=2, persistent_workers=True,
    sampler=dict(shuffle=False, type='DefaultSampler'))
test_pipeline = [dict(type='LoadImageFromFile')]
"""


def test_a_dump_reads_as_the_config_it_dumps(tmp_path: Path) -> None:
    dump = tmp_path / "dumped.py"
    dump.write_text(DUMP)
    # the test dataloader's pipeline wins over test_pipeline, as in mmdetection's inference
    assert load_config(str(dump)) == load_config(SIMPLE)


def _user_config(tmp_path: Path, extra: str) -> Path:
    base = tmp_path / "_base_"
    base.mkdir(exist_ok=True)
    (base / "dyhead.py").write_text(mmdet_config_path(SIMPLE).read_text())
    path = tmp_path / "mine.py"
    path.write_text("_base_ = ['_base_/dyhead.py']\n" + extra)
    return path


def test_a_user_config_with_base_files_beside_it(tmp_path: Path) -> None:
    path = _user_config(
        tmp_path,
        "model = dict(bbox_head=dict(num_classes=3), test_cfg=dict(score_thr=0.3))\n"
        "test_dataloader = dict(dataset=dict(metainfo=dict(classes=('cat', 'dog', 'bird')),\n"
        "                                    pipeline={{_base_.test_pipeline}}))\n",
    )
    cfg = load_config(str(path))
    assert cfg.MODEL.ATSS.NUM_CLASSES == 3 and cfg.MODEL.ATSS.INFERENCE_TH == 0.3
    assert cfg.MODEL.CLASS_NAMES == ["cat", "dog", "bird"]
    assert cfg.MODEL.ATSS.NMS_TH == 0.6  # from the base


_RESIZE = "test_pipeline = [dict(type='Resize', scale=(1333, 800)"
_REFUSED = [
    (
        "model = dict(bbox_head=dict(stacked_convs=4))",
        r"model\.bbox_head\.stacked_convs = 4 is not supported",
    ),
    ("model = dict(test_cfg=dict(nms=dict(type='soft_nms')))", r"model\.test_cfg\.nms\.type = 'soft_nms'"),
    ("model = dict(backbone=dict(dcn=dict(type='DCNv2')))", r"model\.backbone\.dcn"),
    ("model = dict(backbone=dict(norm_cfg=dict(type='GN')))", r"model\.backbone\.norm_cfg\.type = 'GN'"),
    ("model = dict(backbone=dict(type='ResNeXt'))", r"model\.backbone\.type = 'ResNeXt'"),
    ("model = dict(type='FCOS')", r"model\.type = 'FCOS'"),
    ("model = dict(neck=[dict(type='FPN')])", r"model\.neck must be \[FPN, DyHead\]"),
    ("model = dict(data_preprocessor=dict(pad_size_divisor=1))", "padded to a multiple of .* 32"),
    ("model = dict(bbox_head=dict(loss_cls=dict(use_sigmoid=False)))", "use_sigmoid = False"),
    (
        "model = dict(bbox_head=dict(anchor_generator=dict(ratios=[0.5, 1.0], scales_per_octave=2)))",
        "several scales",
    ),
    (
        _RESIZE + ", keep_ratio=True), dict(type='RandomFlip')]",
        r"\[1\]\.type = 'RandomFlip': test-time step not",
    ),
    (_RESIZE + ", keep_ratio=False)]", r"test_pipeline\[0\]\.keep_ratio = False"),
    (_RESIZE + ", keep_ratio=True, interpolation='bicubic')]", "interpolation = 'bicubic'"),
    (
        "test_dataloader = dict(dataset=dict(metainfo=dict(classes=('a',))))",
        "names 1 classes, the head predicts 80",
    ),
]


@pytest.mark.parametrize(("extra", "message"), _REFUSED)
def test_what_we_cannot_reproduce_exactly_is_refused(tmp_path: Path, extra: str, message: str) -> None:
    path = _user_config(tmp_path, extra + "\n")
    with pytest.raises(ConfigError, match=message):
        load_config(str(path))


def test_every_shipped_config_is_read_without_executing_it() -> None:
    for name in MMDET_CONFIGS:
        data = read_mmdet_config(mmdet_config_path(name))
        assert data["model"]["type"] == "ATSS"
    with pytest.raises(ConfigError, match="did you mean 'atss_r50_fpn_dyhead_1x_coco'"):
        load_config("atss_r50_fpn_dyhead_1x_cocoo")
