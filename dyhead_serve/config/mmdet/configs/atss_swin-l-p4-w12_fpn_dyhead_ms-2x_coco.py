# mmdetection 3.x's DyHead with a Swin-L backbone, as dyhead-serve ships it: ATSS with Swin
# Transformer Large (192 channels, depths 2/2/18/2, window 12; mmdetection's own implementation),
# FPN from stage 1 with P6/P7 on its output, six DyHead blocks, 1x1 predictors and anchors centred
# in their cells, Pillow resize to at most 2000 x 1200, RGB input with ImageNet mean and std,
# padding to 128. COCO val2017 box AP 56.2 with the weights of mmdetection's zoo:
# https://download.openmmlab.com/mmdetection/v2.0/dyhead/atss_swin-l-p4-w12_fpn_dyhead_mstrain_2x_coco/
# atss_swin-l-p4-w12_fpn_dyhead_mstrain_2x_coco_20220509_100315-bc5b6516.pth
# Only what inference reads is written here; dyhead-serve reads this file without executing it.
model = dict(
    type="ATSS",
    data_preprocessor=dict(
        type="DetDataPreprocessor",
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_size_divisor=128,
    ),
    backbone=dict(
        type="SwinTransformer",
        pretrain_img_size=384,
        embed_dims=192,
        depths=[2, 2, 18, 2],
        num_heads=[6, 12, 24, 48],
        window_size=12,
        mlp_ratio=4,
        qkv_bias=True,
        qk_scale=None,
        drop_rate=0.0,
        attn_drop_rate=0.0,
        drop_path_rate=0.2,
        patch_norm=True,
        out_indices=(1, 2, 3),
        with_cp=False,
        convert_weights=True,
    ),
    neck=[
        dict(
            type="FPN",
            in_channels=[384, 768, 1536],
            out_channels=256,
            start_level=0,
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
    dict(type="Resize", scale=(2000, 1200), keep_ratio=True, backend="pillow"),
    dict(type="PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor")),
]
