# mmdetection 3.x's DyHead "reproduction" setting, as dyhead-serve ships it: ATSS with a caffe-style
# ResNet-50, FPN from C3 with P6/P7 on its output, six DyHead blocks, 1x1 predictors and anchors
# centred in their cells (as the official DynamicHead code), Pillow resize, BGR input with the caffe
# mean and no std, padding to 128. COCO val2017 box AP 42.5 with the weights of mmdetection's zoo:
# https://download.openmmlab.com/mmdetection/v2.0/dyhead/atss_r50_fpn_dyhead_for_reproduction_1x_coco/
# atss_r50_fpn_dyhead_for_reproduction_4x4_1x_coco_20220107_213939-162888e6.pth
# Only what inference reads is written here; dyhead-serve reads this file without executing it.
model = dict(
    type="ATSS",
    data_preprocessor=dict(
        type="DetDataPreprocessor",
        mean=[103.53, 116.28, 123.675],
        std=[1.0, 1.0, 1.0],
        bgr_to_rgb=False,
        pad_size_divisor=128,
    ),
    backbone=dict(
        type="ResNet",
        depth=50,
        num_stages=4,
        out_indices=(0, 1, 2, 3),
        frozen_stages=1,
        norm_cfg=dict(type="BN", requires_grad=False),
        norm_eval=True,
        style="caffe",
    ),
    neck=[
        dict(
            type="FPN",
            in_channels=[256, 512, 1024, 2048],
            out_channels=256,
            start_level=1,
            add_extra_convs="on_output",
            num_outs=5,
        ),
        dict(type="DyHead", in_channels=256, out_channels=256, num_blocks=6, zero_init_offset=False),
    ],
    bbox_head=dict(
        type="ATSSHead",
        num_classes=80,
        in_channels=256,
        stacked_convs=0,
        feat_channels=256,
        pred_kernel_size=1,
        anchor_generator=dict(
            type="AnchorGenerator",
            ratios=[1.0],
            octave_base_scale=8,
            scales_per_octave=1,
            strides=[8, 16, 32, 64, 128],
            center_offset=0.5,
        ),
        bbox_coder=dict(
            type="DeltaXYWHBBoxCoder",
            target_means=[0.0, 0.0, 0.0, 0.0],
            target_stds=[0.1, 0.1, 0.2, 0.2],
        ),
        loss_cls=dict(type="FocalLoss", use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0),
    ),
    test_cfg=dict(
        nms_pre=1000,
        min_bbox_size=0,
        score_thr=0.05,
        nms=dict(type="nms", iou_threshold=0.6),
        max_per_img=100,
    ),
)
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=(1333, 800), keep_ratio=True, backend="pillow"),
    dict(type="PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor")),
]
