"""Loading the official DyHead configs: defaults, YAML safety, overrides, _BASE_ and freezing."""

from __future__ import annotations

import copy
import logging
import pickle
from pathlib import Path

import pytest

from dyhead_serve.config import (
    OFFICIAL_CONFIGS,
    CfgNode,
    ConfigError,
    FrozenConfigError,
    get_default_config,
    load_config,
    official_config_path,
)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def leaf_keys(node: CfgNode, prefix: str = "") -> list[str]:
    keys = []
    for key, value in node.items():
        if isinstance(value, CfgNode):
            keys.extend(leaf_keys(value, f"{prefix}{key}."))
        else:
            keys.append(f"{prefix}{key}")
    return keys


# -- the four official configs ---------------------------------------------------------


@pytest.mark.parametrize("name", OFFICIAL_CONFIGS)
def test_official_config_common_values(name: str) -> None:
    cfg = load_config(name)
    assert cfg.VERSION == 2
    assert cfg.SOLVER.STEPS == (60000, 80000)
    assert cfg.SOLVER.MAX_ITER == 90000
    assert cfg.DATASETS.TRAIN == ("coco_2017_train",)
    assert cfg.DATASETS.TEST == ("coco_2017_val",)
    assert cfg.MODEL.DYHEAD.NUM_CONVS == 6
    assert cfg.MODEL.DYHEAD.CHANNELS == 256
    assert cfg.MODEL.BACKBONE.FREEZE_AT == -1
    assert official_config_path(name).is_file()


@pytest.mark.parametrize("name", ["dyhead_r50_atss_fpn_1x", "dyhead_swint_atss_fpn_2x_ms"])
def test_atss_configs(name: str) -> None:
    cfg = load_config(name)
    assert cfg.MODEL.META_ARCHITECTURE == "ATSS"
    assert cfg.MODEL.ANCHOR_GENERATOR.SIZES == [[64], [128], [256], [512], [1024]]
    assert cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS == [1.0]
    assert cfg.MODEL.ANCHOR_GENERATOR.OFFSET == 0.5
    assert cfg.MODEL.ATSS.NUM_CONVS == 0
    assert cfg.MODEL.ATSS.TOPK == 9  # a default of the official add_extra_config


def test_r50_atss_config() -> None:
    cfg = load_config("dyhead_r50_atss_fpn_1x")
    assert cfg.MODEL.BACKBONE.NAME == "build_retinanet_resnet_fpn_dyhead_backbone"
    assert cfg.MODEL.RESNETS.DEPTH == 50
    assert cfg.MODEL.RESNETS.OUT_FEATURES == ["res3", "res4", "res5"]
    assert cfg.MODEL.FPN.IN_FEATURES == ["res3", "res4", "res5"]
    assert cfg.INPUT.FORMAT == "BGR"
    assert cfg.INPUT.MIN_SIZE_TRAIN == (800,)
    assert cfg.MODEL.PIXEL_MEAN == [103.530, 116.280, 123.675]
    assert cfg.SOLVER.BASE_LR == 0.01
    assert cfg.SOLVER.OPTIMIZER == "SGD"


def test_retinanet_config_sizes_follow_the_formula() -> None:
    cfg = load_config("dyhead_r50_retina_fpn_1x")
    sizes = cfg.MODEL.ANCHOR_GENERATOR.SIZES
    assert sizes == [[x, x * 2 ** (1.0 / 3), x * 2 ** (2.0 / 3)] for x in [32, 64, 128, 256, 512]]
    assert sizes[0] == pytest.approx([32, 40.3174736, 50.7968337])
    assert cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS == [[0.5, 1.0, 2.0]]
    assert cfg.MODEL.ANCHOR_GENERATOR.OFFSET == 0.0
    assert cfg.MODEL.RETINANET.IOU_THRESHOLDS == [0.4, 0.5]
    assert cfg.MODEL.RETINANET.SMOOTH_L1_LOSS_BETA == 0.0


def test_rcnn_config() -> None:
    cfg = load_config("dyhead_r50_rcnn_fpn_1x")
    assert cfg.MODEL.META_ARCHITECTURE == "GeneralizedRCNN"
    assert cfg.MODEL.ANCHOR_GENERATOR.SIZES == [[32], [64], [128], [256], [512]]
    assert cfg.MODEL.RPN.IN_FEATURES == ["p2", "p3", "p4", "p5", "p6"]
    assert cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN == 2000
    assert cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN == 1000
    assert cfg.MODEL.ROI_HEADS.NAME == "StandardROIHeads"
    assert cfg.MODEL.ROI_BOX_HEAD.NUM_FC == 2
    assert cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION == 7
    assert cfg.MODEL.ROI_MASK_HEAD.NUM_CONV == 4
    assert cfg.SOLVER.BASE_LR == 0.02


def test_swint_config() -> None:
    cfg = load_config("dyhead_swint_atss_fpn_2x_ms")
    assert cfg.INPUT.FORMAT == "RGB"
    assert cfg.INPUT.MIN_SIZE_TRAIN == (640, 672, 704, 736, 768, 800)
    assert cfg.MODEL.PIXEL_MEAN == [123.675, 116.28, 103.53]
    assert cfg.MODEL.PIXEL_STD == [58.395, 57.12, 57.375]
    assert cfg.MODEL.SWINT.OUT_FEATURES == ["stage3", "stage4", "stage5"]
    assert cfg.MODEL.SWINT.DEPTHS == [2, 2, 6, 2]
    assert cfg.SOLVER.OPTIMIZER == "ADAMW"
    assert cfg.SOLVER.BASE_LR == 0.0001
    assert cfg.SOLVER.WEIGHT_DECAY == 0.05
    assert cfg.SOLVER.IMS_PER_BATCH == 32


def test_name_and_path_give_the_same_config() -> None:
    name = "dyhead_r50_retina_fpn_1x"
    assert load_config(official_config_path(name)) == load_config(name)
    assert load_config(str(official_config_path(name))) == load_config(name)


def test_unknown_official_name_lists_the_shipped_ones() -> None:
    with pytest.raises(ConfigError, match="dyhead_r50_atss_fpn_1x") as info:
        official_config_path("dyhead_r50_atss_fpn")
    assert all(name in str(info.value) for name in OFFICIAL_CONFIGS)


def test_missing_file_lists_the_shipped_names(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist") as info:
        load_config(tmp_path / "nope.yaml")
    assert all(name in str(info.value) for name in OFFICIAL_CONFIGS)


# -- defaults ----------------------------------------------------------------------------


def test_defaults_are_detectron2_plus_dyhead() -> None:
    cfg = get_default_config()
    # 192 keys of Detectron2's defaults.py, 29 of DynamicHead's add_dyhead/add_extra_config,
    # 11 of ours for mmdetection's models (their defaults keep Detectron2's behaviour).
    assert len(leaf_keys(cfg)) == 232
    assert cfg.MODEL.LAYOUT == "official" and cfg.TEST.POSTPROCESS == "detectron2"
    assert cfg.INPUT.RESIZE_RULE == "detectron2" and cfg.INPUT.RESIZE_BACKEND == "pillow"
    assert cfg.INPUT.SIZE_DIVISIBILITY == 0 and cfg.MODEL.FPN.RELU_BEFORE_P7 is True
    assert cfg.MODEL.ATSS.PRED_KERNEL_SIZE == 1 and cfg.TEST.MIN_BOX_SIZE == -1.0
    assert cfg.VERSION == 2
    assert cfg.MODEL.DEVICE == "cuda"
    assert cfg.MODEL.BACKBONE.FREEZE_AT == -1  # Detectron2's 2, overridden by add_extra_config
    assert cfg.MODEL.RESNETS.STRIDE_IN_1X1 is True
    assert cfg.MODEL.ANCHOR_GENERATOR.SIZES == [[32, 64, 128, 256, 512]]
    assert cfg.MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS == (512,) * 8
    assert cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS == (0.5, 0.6, 0.7)
    assert cfg.SOLVER.WARMUP_FACTOR == 0.001
    assert cfg.SOLVER.WEIGHT_DECAY_BIAS is None
    assert cfg.SOLVER.OPTIMIZER == "SGD"
    assert cfg.MODEL.SWINT.EMBED_DIM == 96
    assert cfg.MODEL.ATSS.BBOX_REG_WEIGHTS == (10.0, 10.0, 5.0, 5.0)
    assert cfg.TEST.DETECTIONS_PER_IMAGE == 100
    assert cfg.INPUT.FORMAT == "BGR"
    assert cfg.INPUT.CROP.ENABLED is False


def test_default_configs_are_independent() -> None:
    first = get_default_config()
    first.MODEL.RESNETS.OUT_FEATURES.append("res5")
    first.MODEL.DEVICE = "cpu"
    second = get_default_config()
    assert second.MODEL.RESNETS.OUT_FEATURES == ["res4"]
    assert second.MODEL.DEVICE == "cuda"


# -- overrides ---------------------------------------------------------------------------


def test_overrides_are_decoded_and_typed() -> None:
    cfg = load_config(
        "dyhead_r50_atss_fpn_1x",
        overrides=[
            "MODEL.DEVICE", "cpu",
            "TEST.DETECTIONS_PER_IMAGE", "50",
            "SOLVER.BASE_LR", "1",
            "SOLVER.STEPS", "[10, 20]",
            "INPUT.MIN_SIZE_TEST", "0",
            "MODEL.RESNETS.OUT_FEATURES", "('res4', 'res5')",
            "DATASETS.TEST", "('coco_2017_val', 'extra')",
            "SOLVER.WEIGHT_DECAY_BIAS", "0.0",
            "OUTPUT_DIR", "123",
        ],
    )  # fmt: skip
    assert cfg.MODEL.DEVICE == "cpu"
    assert cfg.TEST.DETECTIONS_PER_IMAGE == 50 and type(cfg.TEST.DETECTIONS_PER_IMAGE) is int
    assert cfg.SOLVER.BASE_LR == 1.0 and type(cfg.SOLVER.BASE_LR) is float
    assert cfg.SOLVER.STEPS == (10, 20)
    assert cfg.INPUT.MIN_SIZE_TEST == 0
    assert cfg.MODEL.RESNETS.OUT_FEATURES == ["res4", "res5"]
    assert cfg.DATASETS.TEST == ("coco_2017_val", "extra")
    assert cfg.SOLVER.WEIGHT_DECAY_BIAS == 0.0  # None default: any value
    assert cfg.OUTPUT_DIR == "123"  # a string key keeps its text


def test_nested_tuples_keep_the_default_container_types() -> None:
    cfg = get_default_config()
    cfg.merge_from_list(["MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS", "[[1.0, 1.0, 2.0, 2.0]]"])
    assert cfg.MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS == ((1.0, 1.0, 2.0, 2.0),)
    cfg.merge_from_list(["MODEL.ANCHOR_GENERATOR.SIZES", "[(16, 32)]"])
    assert cfg.MODEL.ANCHOR_GENERATOR.SIZES == [[16, 32]]
    cfg.merge_from_list(["MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", "[1.0]"])
    assert cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS == [1.0]


def test_overrides_accept_python_values() -> None:
    cfg = get_default_config()
    cfg.merge_from_list(["TEST.DETECTIONS_PER_IMAGE", 7, "MODEL.PIXEL_STD", (57.0, 57.0, 57.0)])
    assert cfg.TEST.DETECTIONS_PER_IMAGE == 7
    assert cfg.MODEL.PIXEL_STD == [57.0, 57.0, 57.0]


def test_odd_overrides_are_rejected() -> None:
    with pytest.raises(ConfigError, match="odd number"):
        load_config("dyhead_r50_atss_fpn_1x", overrides=["MODEL.DEVICE", "cpu", "TEST.EVAL_PERIOD"])


def test_unknown_override_key_suggests_the_right_one() -> None:
    cfg = get_default_config()
    with pytest.raises(ConfigError, match=r"unknown config key 'MODEL.RESNET.DEPTH'.*'MODEL.RESNETS.DEPTH'"):
        cfg.merge_from_list(["MODEL.RESNET.DEPTH", "101"])
    with pytest.raises(ConfigError, match=r"unknown config key 'MODEL.DEPTH'.*'MODEL.RESNETS.DEPTH'"):
        cfg.merge_from_list(["MODEL.DEPTH", "101"])


def test_override_type_mismatch_names_key_and_types() -> None:
    cfg = get_default_config()
    with pytest.raises(ConfigError, match=r"'TEST.DETECTIONS_PER_IMAGE'.*expected int.*got str 'many'"):
        cfg.merge_from_list(["TEST.DETECTIONS_PER_IMAGE", "many"])
    with pytest.raises(ConfigError, match=r"'MODEL.RESNETS.STRIDE_IN_1X1'.*expected bool.*got int"):
        cfg.merge_from_list(["MODEL.RESNETS.STRIDE_IN_1X1", "1"])
    with pytest.raises(ConfigError, match=r"'TEST.EVAL_PERIOD'.*expected int.*got float"):
        cfg.merge_from_list(["TEST.EVAL_PERIOD", "1.5"])


def test_override_of_a_group_or_base_is_rejected() -> None:
    cfg = get_default_config()
    with pytest.raises(ConfigError, match=r"'MODEL.RESNETS' .*group of keys"):
        cfg.merge_from_list(["MODEL.RESNETS", "{'DEPTH': 101}"])
    with pytest.raises(ConfigError, match="_BASE_"):
        cfg.merge_from_list(["_BASE_", "other.yaml"])


def test_failed_overrides_change_nothing() -> None:
    cfg = get_default_config()
    with pytest.raises(ConfigError, match=r"MODEL\.NOPE"):
        cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.NOPE", "1"])
    assert cfg == get_default_config()


def test_version_other_than_2_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="VERSION 1"):
        load_config(write(tmp_path / "old.yaml", "VERSION: 1\nMODEL:\n  WEIGHT: x\n"))
    with pytest.raises(ConfigError, match="VERSION 3"):
        load_config("dyhead_r50_atss_fpn_1x", overrides=["VERSION", "3"])


def test_missing_version_is_assumed_current(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        cfg = load_config(write(tmp_path / "v.yaml", "MODEL:\n  DEVICE: cpu\n"))
    assert cfg.MODEL.DEVICE == "cpu"
    assert "no VERSION" in caplog.text


# -- YAML safety and file errors -----------------------------------------------------------


def test_unknown_key_in_file_names_key_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.yaml", "VERSION: 2\nMODEL:\n  FOO:\n    BAR: 1\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'MODEL.FOO.BAR' \(in .*bad.yaml:4\)"):
        load_config(path)


def test_typo_in_file_gets_a_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path / "typo.yaml", "MODEL:\n  ANCHOR_GENERATOR:\n    SIZE: [[32]]\n")
    with pytest.raises(
        ConfigError, match=r"'MODEL.ANCHOR_GENERATOR.SIZE' .*did you mean 'MODEL.ANCHOR_GENERATOR.SIZES'"
    ):
        load_config(path)


def test_type_mismatch_in_file_names_key_and_types(tmp_path: Path) -> None:
    path = write(tmp_path / "types.yaml", "SOLVER:\n  MAX_ITER: lots\n")
    with pytest.raises(ConfigError, match=r"'SOLVER.MAX_ITER' \(in .*types.yaml:2\).*expected int.*got str"):
        load_config(path)
    path = write(tmp_path / "group.yaml", "MODEL: 3\n")
    with pytest.raises(ConfigError, match=r"'MODEL' .*group of keys"):
        load_config(path)


@pytest.mark.parametrize(
    "value",
    [
        '!!python/object/apply:os.system ["echo pwned"]',
        "!!python/name:os.system",
        "!!python/tuple [1, 2]",
        "!custom 3",
    ],
)
def test_unknown_tags_are_rejected_with_key_and_tag(tmp_path: Path, value: str) -> None:
    path = write(tmp_path / "tag.yaml", f"MODEL:\n  ANCHOR_GENERATOR:\n    SIZES: {value}\n")
    tag = value.split()[0]
    with pytest.raises(ConfigError, match="unsupported YAML tag") as info:
        load_config(path)
    assert "MODEL.ANCHOR_GENERATOR.SIZES" in str(info.value)
    assert tag in str(info.value)


def test_malicious_eval_payload_is_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payloads = [
        "__import__('os').system('echo pwned')",
        f"__import__('pathlib').Path({str(marker)!r}).touch()",
    ]
    for payload in payloads:
        path = write(
            tmp_path / "evil.yaml",
            f"MODEL:\n  ANCHOR_GENERATOR:\n    SIZES: !!python/object/apply:eval [{payload!r}]\n",
        )
        with pytest.raises(
            ConfigError, match=r"'MODEL.ANCHOR_GENERATOR.SIZES' \(in .*evil.yaml:3\).*calls are not allowed"
        ):
            load_config(path)
    assert not marker.exists()


def test_eval_tag_needs_one_expression_string(tmp_path: Path) -> None:
    path = write(
        tmp_path / "args.yaml",
        'MODEL:\n  ANCHOR_GENERATOR:\n    SIZES: !!python/object/apply:eval ["[1]", {}]\n',
    )
    with pytest.raises(ConfigError, match=r"'MODEL.ANCHOR_GENERATOR.SIZES'.*exactly one expression string"):
        load_config(path)


def test_eval_tag_with_safe_arithmetic_in_user_file(tmp_path: Path) -> None:
    path = write(
        tmp_path / "ok.yaml",
        'MODEL:\n  PIXEL_STD: !!python/object/apply:eval ["[57.0 + 0.375, 57.12, 58.4 - 0.005]"]\n',
    )
    assert load_config(path).MODEL.PIXEL_STD == [57.375, 57.12, 58.4 - 0.005]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("MODEL: [1, 2\n", "not valid YAML"),
        ("- 1\n- 2\n", "must hold a mapping"),
        ("SEED: 1\nSEED: 2\n", "duplicate config key 'SEED'"),
        ("MODEL:\n  1: 2\n", "keys must be strings"),
        ("SEED: 2021-01-01\n", "type mismatch for config key 'SEED'"),
        ("MODEL:\n  PIXEL_STD: [1, {A: 2}, 3]\n", "invalid value for config key 'MODEL.PIXEL_STD'"),
    ],
)
def test_malformed_files(tmp_path: Path, text: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        load_config(write(tmp_path / "bad.yaml", text))


def test_empty_file_gives_defaults(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert load_config(write(tmp_path / "empty.yaml", "")) == get_default_config()


# -- _BASE_ --------------------------------------------------------------------------------


def test_base_inheritance_relative_and_recursive(tmp_path: Path) -> None:
    write(tmp_path / "bases" / "root.yaml", "VERSION: 2\nSEED: 1\nSOLVER:\n  MAX_ITER: 10\n  BASE_LR: 0.5\n")
    write(
        tmp_path / "bases" / "mid.yaml", "_BASE_: root.yaml\nSOLVER:\n  MAX_ITER: 20\nMODEL:\n  DEVICE: cpu\n"
    )
    child = write(tmp_path / "child.yaml", "_BASE_: bases/mid.yaml\nSOLVER:\n  STEPS: (5,)\nSEED: 3\n")
    cfg = load_config(child)
    assert cfg.SEED == 3  # child wins
    assert cfg.SOLVER.MAX_ITER == 20  # mid wins over root
    assert cfg.SOLVER.BASE_LR == 0.5  # from root, merged key by key
    assert cfg.SOLVER.STEPS == (5,)
    assert cfg.MODEL.DEVICE == "cpu"


def test_base_list_and_official_base(tmp_path: Path) -> None:
    official = official_config_path("dyhead_r50_retina_fpn_1x")
    write(tmp_path / "a.yaml", "TEST:\n  DETECTIONS_PER_IMAGE: 10\n")
    child = write(tmp_path / "c.yaml", f"_BASE_: [{str(official)!r}, a.yaml]\nSOLVER:\n  MAX_ITER: 5\n")
    cfg = load_config(child)
    assert cfg.MODEL.META_ARCHITECTURE == "RetinaNet"
    assert cfg.MODEL.ANCHOR_GENERATOR.SIZES == load_config(official).MODEL.ANCHOR_GENERATOR.SIZES
    assert cfg.TEST.DETECTIONS_PER_IMAGE == 10
    assert cfg.SOLVER.MAX_ITER == 5


def test_base_errors(tmp_path: Path) -> None:
    write(tmp_path / "x.yaml", "_BASE_: y.yaml\n")
    write(tmp_path / "y.yaml", "_BASE_: x.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "x.yaml")
    with pytest.raises(ConfigError, match=r"missing\.yaml.*does not exist"):
        load_config(write(tmp_path / "m.yaml", "_BASE_: missing.yaml\n"))
    with pytest.raises(ConfigError, match="remote"):
        load_config(write(tmp_path / "r.yaml", "_BASE_: https://example.com/base.yaml\n"))


def test_error_in_base_names_the_base_file(tmp_path: Path) -> None:
    write(tmp_path / "base.yaml", "SOLVER:\n  NOT_A_KEY: 1\n")
    child = write(tmp_path / "child.yaml", "_BASE_: base.yaml\nSEED: 1\n")
    with pytest.raises(ConfigError, match=r"'SOLVER.NOT_A_KEY' \(in .*base.yaml:2\)"):
        load_config(child)


# -- CfgNode ---------------------------------------------------------------------------------


def test_frozen_config_refuses_writes(tmp_path: Path) -> None:
    cfg = load_config("dyhead_r50_atss_fpn_1x", freeze=True)
    assert cfg.is_frozen() and cfg.MODEL.RESNETS.is_frozen()
    writes = [
        lambda: setattr(cfg.MODEL, "DEVICE", "cpu"),
        lambda: cfg.MODEL.__setitem__("DEVICE", "cpu"),
        lambda: delattr(cfg, "SEED"),
        lambda: cfg.SOLVER.update(MAX_ITER=1),
        lambda: cfg.SOLVER.pop("MAX_ITER"),
        lambda: cfg.TEST.clear(),
        lambda: cfg.merge_from_list(["MODEL.DEVICE", "cpu"]),
        lambda: cfg.merge_from_file(write(tmp_path / "s.yaml", "SEED: 4\n")),
    ]
    for write_attempt in writes:
        with pytest.raises(FrozenConfigError, match="frozen"):
            write_attempt()
    assert cfg.MODEL.DEVICE == "cuda" and cfg.SEED == -1
    assert issubclass(FrozenConfigError, ConfigError) and issubclass(FrozenConfigError, AttributeError)


def test_clone_is_deep_and_keeps_frozen_state() -> None:
    cfg = load_config("dyhead_r50_atss_fpn_1x")
    cfg.freeze()
    copied = cfg.clone()
    assert copied == cfg and copied.is_frozen()
    copied.defrost()
    copied.MODEL.DEVICE = "cpu"
    copied.MODEL.ANCHOR_GENERATOR.SIZES[0].append(1)
    assert cfg.MODEL.DEVICE == "cuda"
    assert cfg.MODEL.ANCHOR_GENERATOR.SIZES[0] == [64]
    assert cfg.is_frozen() and not copied.MODEL.is_frozen()
    assert copy.deepcopy(cfg) == cfg


def test_constructor_copies_nested_groups() -> None:
    cfg = get_default_config()
    cfg.freeze()
    rebuilt = CfgNode(cfg)
    assert rebuilt == cfg
    assert rebuilt.MODEL is not cfg.MODEL and not rebuilt.MODEL.is_frozen()
    rebuilt.MODEL.DEVICE = "cpu"
    assert cfg.MODEL.DEVICE == "cuda"


def test_attribute_access_and_setting() -> None:
    cfg = get_default_config()
    assert cfg.MODEL.RESNETS.DEPTH == cfg["MODEL"]["RESNETS"]["DEPTH"] == 50
    with pytest.raises(AttributeError, match=r"'DEPHT'.*did you mean 'DEPTH'"):
        _ = cfg.MODEL.RESNETS.DEPHT
    cfg.MODEL.NEW_GROUP = {"A": 1}  # setting may add keys, as in yacs
    assert isinstance(cfg.MODEL.NEW_GROUP, CfgNode) and cfg.MODEL.NEW_GROUP.A == 1
    with pytest.raises(ConfigError, match="CfgNode attribute"):
        cfg.clone = 3  # type: ignore[method-assign,assignment]
    with pytest.raises(ConfigError, match="invalid value"):
        cfg.SEED = {1, 2}


@pytest.mark.parametrize("name", OFFICIAL_CONFIGS)
def test_dump_round_trips(tmp_path: Path, name: str) -> None:
    cfg = load_config(name, overrides=["OUTPUT_DIR", "1e-3", "MODEL.WEIGHTS", "True"])
    text = cfg.dump()
    assert "!!python" not in text
    reloaded = load_config(write(tmp_path / "dumped.yaml", text))
    assert reloaded == cfg
    assert reloaded.SOLVER.STEPS == (60000, 80000)


def test_pickle_round_trip() -> None:
    cfg = load_config("dyhead_swint_atss_fpn_2x_ms", freeze=True)
    restored = pickle.loads(pickle.dumps(cfg))
    assert restored == cfg
    assert isinstance(restored.MODEL, CfgNode)
    assert restored.is_frozen() and restored.MODEL.SWINT.is_frozen()


def test_merge_from_other_cfg_checks_keys() -> None:
    cfg = get_default_config()
    cfg.merge_from_other_cfg({"MODEL": {"DEVICE": "cpu"}, "SOLVER": {"STEPS": [1, 2]}})
    assert cfg.MODEL.DEVICE == "cpu" and cfg.SOLVER.STEPS == (1, 2)
    with pytest.raises(ConfigError, match=r"unknown config key 'MODEL\.NOPE'"):
        cfg.merge_from_other_cfg({"MODEL": {"NOPE": 1}})


def test_config_errors_are_user_errors_and_value_errors() -> None:
    from dyhead_serve.config.errors import FrozenConfigError
    from dyhead_serve.config.safe_eval import ExpressionError
    from dyhead_serve.errors import UserError

    for error in (ConfigError, FrozenConfigError, ExpressionError):
        assert issubclass(error, UserError) and issubclass(error, ValueError)
    assert issubclass(FrozenConfigError, AttributeError)
