"""Default values of every config key: Detectron2's defaults plus the official DyHead additions.

The keys and values are those of Detectron2's ``detectron2/config/defaults.py`` (``get_cfg()``),
followed by what the official DynamicHead ``train_net.py`` adds before it reads a config file:
``add_dyhead_config`` (``MODEL.DYHEAD``) and ``add_extra_config`` (``MODEL.SWINT``,
``MODEL.ATSS``, ``SOLVER.OPTIMIZER``, and ``MODEL.BACKBONE.FREEZE_AT = -1``). A YAML file may
only set keys that appear here, with values of the same type.

A few keys of our own describe mmdetection's DyHead models, whose configs are translated into
this tree (:mod:`dyhead_serve.config.mmdet`); their defaults keep Detectron2's behaviour:
``MODEL.LAYOUT``, ``MODEL.CLASS_NAMES``, ``MODEL.FPN.RELU_BEFORE_P7``, ``MODEL.ATSS.PRED_KERNEL_SIZE``,
``MODEL.ATSS.BBOX_REG_MEANS`` / ``BBOX_REG_STDS``, ``INPUT.RESIZE_RULE``,
``INPUT.RESIZE_BACKEND``, ``INPUT.SIZE_DIVISIBILITY``, ``TEST.POSTPROCESS`` and
``TEST.MIN_BOX_SIZE``.

Tuples and lists are kept apart on purpose: a file value is converted to the type of the
default (``STEPS: [1, 2]`` becomes the tuple ``(1, 2)``).
"""

from __future__ import annotations

from typing import Any

from dyhead_serve.config.node import CfgNode

__all__ = ["get_default_config"]


def _model_defaults() -> dict[str, Any]:
    return {
        "LOAD_PROPOSALS": False,
        "MASK_ON": False,
        "KEYPOINT_ON": False,
        "DEVICE": "cuda",
        "META_ARCHITECTURE": "GeneralizedRCNN",
        "WEIGHTS": "",
        # Ours: parameter names and arithmetic of the DyHead tower, Swin's patch merging and the
        # checkpoint keys: "official" (DynamicHead / Detectron2) or "mmdet" (mmdetection 3.x).
        "LAYOUT": "official",
        # Ours: names of the classes ([]: COCO's for 80 classes, class_<i> otherwise).
        "CLASS_NAMES": [],
        # BGR means of ImageNet; std 1 because MSRA weights absorbed it into conv1.
        "PIXEL_MEAN": [103.530, 116.280, 123.675],
        "PIXEL_STD": [1.0, 1.0, 1.0],
        # Detectron2 says 2; DyHead's add_extra_config trains every backbone stage.
        "BACKBONE": {"NAME": "build_resnet_backbone", "FREEZE_AT": -1},
        "FPN": {
            "IN_FEATURES": [],
            "OUT_CHANNELS": 256,
            "NORM": "",
            "FUSE_TYPE": "sum",
            # Ours: ReLU between P6 and P7 (Detectron2); mmdetection's relu_before_extra_convs.
            "RELU_BEFORE_P7": True,
        },
        "PROPOSAL_GENERATOR": {"NAME": "RPN", "MIN_SIZE": 0},
        "ANCHOR_GENERATOR": {
            "NAME": "DefaultAnchorGenerator",
            "SIZES": [[32, 64, 128, 256, 512]],
            "ASPECT_RATIOS": [[0.5, 1.0, 2.0]],
            "ANGLES": [[-90, 0, 90]],
            "OFFSET": 0.0,
        },
        "RPN": {
            "HEAD_NAME": "StandardRPNHead",
            "IN_FEATURES": ["res4"],
            "BOUNDARY_THRESH": -1,
            "IOU_THRESHOLDS": [0.3, 0.7],
            "IOU_LABELS": [0, -1, 1],
            "BATCH_SIZE_PER_IMAGE": 256,
            "POSITIVE_FRACTION": 0.5,
            "BBOX_REG_LOSS_TYPE": "smooth_l1",
            "BBOX_REG_LOSS_WEIGHT": 1.0,
            "BBOX_REG_WEIGHTS": (1.0, 1.0, 1.0, 1.0),
            "SMOOTH_L1_BETA": 0.0,
            "LOSS_WEIGHT": 1.0,
            "PRE_NMS_TOPK_TRAIN": 12000,
            "PRE_NMS_TOPK_TEST": 6000,
            "POST_NMS_TOPK_TRAIN": 2000,
            "POST_NMS_TOPK_TEST": 1000,
            "NMS_THRESH": 0.7,
            "CONV_DIMS": [-1],
        },
        "ROI_HEADS": {
            "NAME": "Res5ROIHeads",
            "NUM_CLASSES": 80,
            "IN_FEATURES": ["res4"],
            "IOU_THRESHOLDS": [0.5],
            "IOU_LABELS": [0, 1],
            "BATCH_SIZE_PER_IMAGE": 512,
            "POSITIVE_FRACTION": 0.25,
            "SCORE_THRESH_TEST": 0.05,
            "NMS_THRESH_TEST": 0.5,
            "PROPOSAL_APPEND_GT": True,
        },
        "ROI_BOX_HEAD": {
            "NAME": "",
            "BBOX_REG_LOSS_TYPE": "smooth_l1",
            "BBOX_REG_LOSS_WEIGHT": 1.0,
            "BBOX_REG_WEIGHTS": (10.0, 10.0, 5.0, 5.0),
            "SMOOTH_L1_BETA": 0.0,
            "POOLER_RESOLUTION": 14,
            "POOLER_SAMPLING_RATIO": 0,
            "POOLER_TYPE": "ROIAlignV2",
            "NUM_FC": 0,
            "FC_DIM": 1024,
            "NUM_CONV": 0,
            "CONV_DIM": 256,
            "NORM": "",
            "CLS_AGNOSTIC_BBOX_REG": False,
            "TRAIN_ON_PRED_BOXES": False,
            "USE_FED_LOSS": False,
            "USE_SIGMOID_CE": False,
            "FED_LOSS_FREQ_WEIGHT_POWER": 0.5,
            "FED_LOSS_NUM_CLASSES": 50,
        },
        "ROI_BOX_CASCADE_HEAD": {
            "BBOX_REG_WEIGHTS": (
                (10.0, 10.0, 5.0, 5.0),
                (20.0, 20.0, 10.0, 10.0),
                (30.0, 30.0, 15.0, 15.0),
            ),
            "IOUS": (0.5, 0.6, 0.7),
        },
        "ROI_MASK_HEAD": {
            "NAME": "MaskRCNNConvUpsampleHead",
            "POOLER_RESOLUTION": 14,
            "POOLER_SAMPLING_RATIO": 0,
            "NUM_CONV": 0,
            "CONV_DIM": 256,
            "NORM": "",
            "CLS_AGNOSTIC_MASK": False,
            "POOLER_TYPE": "ROIAlignV2",
        },
        "ROI_KEYPOINT_HEAD": {
            "NAME": "KRCNNConvDeconvUpsampleHead",
            "POOLER_RESOLUTION": 14,
            "POOLER_SAMPLING_RATIO": 0,
            "CONV_DIMS": (512,) * 8,
            "NUM_KEYPOINTS": 17,
            "MIN_KEYPOINTS_PER_IMAGE": 1,
            "NORMALIZE_LOSS_BY_VISIBLE_KEYPOINTS": True,
            "LOSS_WEIGHT": 1.0,
            "POOLER_TYPE": "ROIAlignV2",
        },
        "SEM_SEG_HEAD": {
            "NAME": "SemSegFPNHead",
            "IN_FEATURES": ["p2", "p3", "p4", "p5"],
            "IGNORE_VALUE": 255,
            "NUM_CLASSES": 54,
            "CONVS_DIM": 128,
            "COMMON_STRIDE": 4,
            "NORM": "GN",
            "LOSS_WEIGHT": 1.0,
        },
        "PANOPTIC_FPN": {
            "INSTANCE_LOSS_WEIGHT": 1.0,
            "COMBINE": {
                "ENABLED": True,
                "OVERLAP_THRESH": 0.5,
                "STUFF_AREA_LIMIT": 4096,
                "INSTANCES_CONFIDENCE_THRESH": 0.5,
            },
        },
        "RETINANET": {
            "NUM_CLASSES": 80,
            "IN_FEATURES": ["p3", "p4", "p5", "p6", "p7"],
            "NUM_CONVS": 4,
            "IOU_THRESHOLDS": [0.4, 0.5],
            "IOU_LABELS": [0, -1, 1],
            "PRIOR_PROB": 0.01,
            "SCORE_THRESH_TEST": 0.05,
            "TOPK_CANDIDATES_TEST": 1000,
            "NMS_THRESH_TEST": 0.5,
            "BBOX_REG_WEIGHTS": (1.0, 1.0, 1.0, 1.0),
            "FOCAL_LOSS_GAMMA": 2.0,
            "FOCAL_LOSS_ALPHA": 0.25,
            "SMOOTH_L1_LOSS_BETA": 0.1,
            "BBOX_REG_LOSS_TYPE": "smooth_l1",
            "NORM": "",
        },
        "RESNETS": {
            "DEPTH": 50,
            "OUT_FEATURES": ["res4"],
            "NUM_GROUPS": 1,
            "NORM": "FrozenBN",
            "WIDTH_PER_GROUP": 64,
            "STRIDE_IN_1X1": True,
            "RES5_DILATION": 1,
            "RES2_OUT_CHANNELS": 256,
            "STEM_OUT_CHANNELS": 64,
            "DEFORM_ON_PER_STAGE": [False, False, False, False],
            "DEFORM_MODULATED": False,
            "DEFORM_NUM_GROUPS": 1,
        },
        # From the official DynamicHead code (dyhead/config.py and extra/config.py).
        "DYHEAD": {"NUM_CONVS": 6, "CHANNELS": 256},
        "SWINT": {
            "EMBED_DIM": 96,
            "OUT_FEATURES": ["stage2", "stage3", "stage4", "stage5"],
            "DEPTHS": [2, 2, 6, 2],
            "NUM_HEADS": [3, 6, 12, 24],
            "WINDOW_SIZE": 7,
            "MLP_RATIO": 4,
            "DROP_PATH_RATE": 0.2,
            "APE": False,
            "VERSION": 1,
            "OUT_NORM": True,
        },
        "ATSS": {
            "TOPK": 9,
            "NUM_CLASSES": 80,
            "IN_FEATURES": ["p3", "p4", "p5", "p6", "p7"],
            "NUM_CONVS": 4,
            "CHANNELS": 256,
            "USE_GN": True,
            "IOU_THRESHOLDS": [0.4, 0.5],
            "IOU_LABELS": [0, -1, 1],
            "PRIOR_PROB": 0.01,
            "BBOX_REG_WEIGHTS": (10.0, 10.0, 5.0, 5.0),
            "FOCAL_LOSS_GAMMA": 2.0,
            "FOCAL_LOSS_ALPHA": 0.25,
            "REG_LOSS_WEIGHT": 2.0,
            "INFERENCE_TH": 0.05,
            "PRE_NMS_TOP_N": 1000,
            "NMS_TH": 0.6,
            # Ours: kernel of the predictor convs (mmdetection's pred_kernel_size), and the
            # DeltaXYWHBBoxCoder target means and stds that TEST.POSTPROCESS "mmdet" decodes with.
            "PRED_KERNEL_SIZE": 1,
            "BBOX_REG_MEANS": (0.0, 0.0, 0.0, 0.0),
            "BBOX_REG_STDS": (0.1, 0.1, 0.2, 0.2),
        },
    }


def _input_defaults() -> dict[str, Any]:
    return {
        "MIN_SIZE_TRAIN": (800,),
        "MIN_SIZE_TRAIN_SAMPLING": "choice",
        "MAX_SIZE_TRAIN": 1333,
        "MIN_SIZE_TEST": 800,
        "MAX_SIZE_TEST": 1333,
        "RANDOM_FLIP": "horizontal",
        "CROP": {"ENABLED": False, "TYPE": "relative_range", "SIZE": [0.9, 0.9]},
        "FORMAT": "BGR",
        "MASK_FORMAT": "polygon",
        # Ours: the test-time resize, "detectron2" (ResizeShortestEdge) or "mmdet" (mmcv's
        # keep-ratio rescale to MAX_SIZE_TEST x MIN_SIZE_TEST), with "pillow" or "cv2" bilinear;
        # padding multiple of the network input (0: the model's own, the coarsest stride).
        "RESIZE_RULE": "detectron2",
        "RESIZE_BACKEND": "pillow",
        "SIZE_DIVISIBILITY": 0,
    }


def _solver_defaults() -> dict[str, Any]:
    return {
        "LR_SCHEDULER_NAME": "WarmupMultiStepLR",
        "MAX_ITER": 40000,
        "BASE_LR": 0.001,
        "BASE_LR_END": 0.0,
        "MOMENTUM": 0.9,
        "NESTEROV": False,
        "WEIGHT_DECAY": 0.0001,
        "WEIGHT_DECAY_NORM": 0.0,
        "GAMMA": 0.1,
        "STEPS": (30000,),
        "NUM_DECAYS": 3,
        "WARMUP_FACTOR": 1.0 / 1000,
        "WARMUP_ITERS": 1000,
        "WARMUP_METHOD": "linear",
        "RESCALE_INTERVAL": False,
        "CHECKPOINT_PERIOD": 5000,
        "IMS_PER_BATCH": 16,
        "REFERENCE_WORLD_SIZE": 0,
        "BIAS_LR_FACTOR": 1.0,
        "WEIGHT_DECAY_BIAS": None,  # None: same as WEIGHT_DECAY
        "CLIP_GRADIENTS": {"ENABLED": False, "CLIP_TYPE": "value", "CLIP_VALUE": 1.0, "NORM_TYPE": 2.0},
        "AMP": {"ENABLED": False},
        # From the official DynamicHead code (extra/config.py): "SGD" or "ADAMW".
        "OPTIMIZER": "SGD",
    }


def _default_tree() -> dict[str, Any]:
    return {
        "VERSION": 2,
        "MODEL": _model_defaults(),
        "INPUT": _input_defaults(),
        "DATASETS": {
            "TRAIN": (),
            "PROPOSAL_FILES_TRAIN": (),
            "PRECOMPUTED_PROPOSAL_TOPK_TRAIN": 2000,
            "TEST": (),
            "PROPOSAL_FILES_TEST": (),
            "PRECOMPUTED_PROPOSAL_TOPK_TEST": 1000,
        },
        "DATALOADER": {
            "NUM_WORKERS": 4,
            "ASPECT_RATIO_GROUPING": True,
            "SAMPLER_TRAIN": "TrainingSampler",
            "REPEAT_THRESHOLD": 0.0,
            "REPEAT_SQRT": True,
            "FILTER_EMPTY_ANNOTATIONS": True,
        },
        "SOLVER": _solver_defaults(),
        "TEST": {
            "EXPECTED_RESULTS": [],
            "EVAL_PERIOD": 0,
            "KEYPOINT_OKS_SIGMAS": [],
            "DETECTIONS_PER_IMAGE": 100,
            # Ours: post-processing rules of dense detectors, "detectron2" or "mmdet" (the
            # decoders of dyhead_serve/decode/), and mmdetection's min_bbox_size (-1: no filter).
            "POSTPROCESS": "detectron2",
            "MIN_BOX_SIZE": -1.0,
            "AUG": {
                "ENABLED": False,
                "MIN_SIZES": (400, 500, 600, 700, 800, 900, 1000, 1100, 1200),
                "MAX_SIZE": 4000,
                "FLIP": True,
            },
            "PRECISE_BN": {"ENABLED": False, "NUM_ITER": 200},
        },
        "OUTPUT_DIR": "./output",
        "SEED": -1,
        "CUDNN_BENCHMARK": False,
        "FLOAT32_PRECISION": "",
        "VIS_PERIOD": 0,
        "GLOBAL": {"HACK": 1.0},
    }


def get_default_config() -> CfgNode:
    """Return a new, writable config holding every default (see the module docstring).

    Each call builds a fresh tree, so callers may change theirs freely.
    """
    return CfgNode(_default_tree())
