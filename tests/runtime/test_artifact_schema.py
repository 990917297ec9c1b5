"""Hostile or broken model.json files are refused when loaded, naming the field (exit 2 in the CLI),
instead of tracebacks, silent nonsense (labels "a", "b", "c"), or a 20 GB image at inference."""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from dyhead_serve.artifact_rules import ArtifactError
from dyhead_serve.cli import main as cli_main
from dyhead_serve.data.sample_image import synthetic_photo
from dyhead_serve.decode.dense_format import DENSE_FIELD_RULES
from dyhead_serve.decode.detectron2_dense import Detectron2DenseSpec
from dyhead_serve.decode.mmdet_atss import MMDetATSSSpec
from dyhead_serve.decode.rcnn import RCNN_FIELD_RULES, RCNNDecoderSpec
from dyhead_serve.pipeline.preprocess import INPUT_SPEC_RULES, InputSpec
from dyhead_serve.runtime.artifact import ModelArtifact

SHIPPED = Path(__file__).resolve().parents[2] / "dyhead_serve" / "zoo_files" / "default" / "model.json"
GOOD: dict[str, Any] = json.loads(SHIPPED.read_text())


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def edit(path: str, value: Any) -> Any:
    """GOOD with the field at dotted ``path`` set to ``value`` (``...`` deletes it)."""
    data = copy.deepcopy(GOOD)
    *parents, last = path.split(".")
    node = data
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if value is ...:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return data


def _mmdet_rules_on_retinanet() -> Any:
    data = edit("decoder.spec.rules", "mmdet")
    data["decoder"]["spec"]["kind"] = "retinanet"
    return data


# (id, document, the field the message names)
BROKEN = [
    (
        "unknown-decoder-key",
        edit("decoder.spec.stride_list", [8]),
        "decoder.spec: unknown field 'stride_list'",
    ),
    ("missing-decoder-key", edit("decoder.spec.nms_threshold", ...), "decoder.spec.nms_threshold: missing"),
    ("spec-is-a-list", edit("decoder.spec", [1, 2]), "decoder.spec: expected an object"),
    ("unknown-decoder-type", edit("decoder.type", "yolo"), "decoder.type: expected one of"),
    ("deep-nesting-in-spec", edit("decoder.spec.strides", nested(500)), r"decoder.spec.strides\[0\]"),
    ("stride-zero", edit("decoder.spec.strides.0", 0), r"decoder.spec.strides\[0\]: expected an integer in"),
    ("min-size-zero", edit("input_spec.min_size", 0), "input_spec.min_size: expected an integer in"),
    ("min-size-negative", edit("input_spec.min_size", -5), "input_spec.min_size"),
    (
        "min-size-huge",
        edit("input_spec.min_size", 100_000),
        r"input_spec.min_size: expected an integer in \[1, 4096\]",
    ),
    ("max-size-huge", edit("input_spec.max_size", 100_000), "input_spec.max_size"),
    ("min-above-max", edit("input_spec.min_size", 1000), "input_spec.min_size: 1000 is larger than"),
    ("pixel-std-zero", edit("input_spec.pixel_std.1", 0), r"input_spec.pixel_std\[1\]"),
    ("pixel-std-nan", edit("input_spec.pixel_std.0", float("nan")), r"input_spec.pixel_std\[0\]"),
    ("pixel-mean-inf", edit("input_spec.pixel_mean.2", float("inf")), r"input_spec.pixel_mean\[2\]"),
    (
        "two-channel-std",
        edit("input_spec.pixel_std", [1.0, 1.0]),
        "input_spec.pixel_std: expected a list of 3",
    ),
    ("boolean-size", edit("input_spec.size_divisibility", True), "input_spec.size_divisibility"),
    (
        "zero-divisibility",
        edit("input_spec.size_divisibility", 0),
        r"input_spec.size_divisibility: .*\[1, 1024\]",
    ),
    ("string-size", edit("input_spec.max_size", "1333"), "input_spec.max_size"),
    ("class-names-a-string", edit("class_names", "abc"), "class_names: expected a list"),
    ("class-name-not-a-string", edit("class_names.0", 7), r"class_names\[0\]"),
    ("classes-disagree", edit("decoder.spec.num_classes", 80), "decoder.spec.num_classes: 80 classes, but"),
    (
        "anchor-levels-disagree",
        edit("decoder.spec.anchor_sizes", [[32.0], [64.0]]),
        "decoder.spec.anchor_sizes: 2 levels",
    ),
    ("negative-anchor", edit("decoder.spec.anchor_sizes.0.0", -32.0), r"decoder.spec.anchor_sizes\[0\]\[0\]"),
    ("threshold-above-one", edit("decoder.spec.score_threshold", 5), "decoder.spec.score_threshold"),
    ("output-missing", edit("outputs", [GOOD["outputs"][0], GOOD["outputs"][1]]), "reads 'centerness'"),
    (
        "logits-width-disagrees",
        edit("outputs.0.shape", ["batch", "n", 80]),
        "outputs.logits: last dimension 80",
    ),
    ("unknown-top-level", edit("extra", 1), "the top level: unknown field 'extra'"),
    ("missing-input-spec", edit("input_spec", ...), "input_spec: missing"),
    ("provenance-a-list", edit("provenance", []), "provenance: expected an object"),
    ("unknown-precision", edit("provenance", {"precision": "int8"}), "provenance.precision: expected one of"),
    (
        "unknown-resize-rule",
        edit("input_spec.resize_rule", "yolo"),
        "input_spec.resize_rule: expected one of",
    ),
    ("unknown-resize-backend", edit("input_spec.resize_backend", "skimage"), "input_spec.resize_backend"),
    ("unknown-decoder-rules", edit("decoder.spec.rules", "yolo"), "decoder.spec.rules: expected one of"),
    (
        "three-box-stds",
        edit("decoder.spec.box_stds", [0.1, 0.1, 0.2]),
        "decoder.spec.box_stds: expected a list of 4",
    ),
    ("zero-box-std", edit("decoder.spec.box_stds", [0.1, 0.0, 0.2, 0.2]), r"decoder.spec.box_stds\[1\]"),
    (
        "nan-box-mean",
        edit("decoder.spec.box_means", [0.0, float("nan"), 0.0, 0.0]),
        r"decoder.spec.box_means\[1\]",
    ),
    ("min-box-size-below", edit("decoder.spec.min_box_size", -5), "decoder.spec.min_box_size"),
    (
        "mmdet-rules-on-retinanet",
        _mmdet_rules_on_retinanet(),
        "decoder.spec.rules: the mmdet rules decode ATSS",
    ),
]


def write_model(folder: Path, document: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.json").write_text(json.dumps(document))
    (folder / "model.onnx").write_bytes(b"never read: model.json is checked first")
    return folder


@pytest.mark.parametrize(("document", "message"), [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN])
def test_broken_model_json_names_the_field(tmp_path: Path, document: Any, message: str) -> None:
    write_model(tmp_path, document)
    with pytest.raises(ArtifactError, match=message):
        ModelArtifact.load(tmp_path / "model.json")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            '{"format": "dyhead-serve/model@1", "provenance": ' + "[" * 100_000 + "]" * 100_000 + "}",
            "nested too deeply",
        ),
        ("{not json", "not valid JSON"),
        ('{"format": "dyhead-serve/model@1", "name": "a\0"}', "NUL character"),
        ("[1, 2]", "not a dyhead-serve model.json"),
    ],
    ids=["deep-nesting", "not-json", "nul", "not-an-object"],
)
def test_unreadable_model_json(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "model.json").write_text(content)
    with pytest.raises(ArtifactError, match=message):
        ModelArtifact.load(tmp_path / "model.json")


def test_the_shipped_model_json_is_valid() -> None:
    artifact = ModelArtifact.load(SHIPPED)
    assert artifact.input_spec.max_size == 384 and len(artifact.class_names) == 6


@pytest.mark.parametrize("case", ["min-size-huge", "class-names-a-string", "spec-is-a-list", "pixel-std-nan"])
def test_predict_exits_2_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    document, message = next(b[1:] for b in BROKEN if b[0] == case)
    folder = write_model(tmp_path / "model", document)
    assert cli_main(["predict", "--model", str(folder), str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert message.split(":")[0].replace("\\", "") in err


def test_a_valid_model_json_of_another_model_is_refused_at_the_first_image(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Consistent in itself (one class, one name) but not the graph's (six class scores): the
    decoder compares the outputs with its spec, so predict stops with exit 2 instead of labels."""
    folder = tmp_path / "model"
    shutil.copytree(SHIPPED.parent, folder)
    document = json.loads(SHIPPED.read_text())
    document["class_names"] = ["circle"]
    document["decoder"]["spec"]["num_classes"] = 1
    (folder / "model.json").write_text(json.dumps(document))
    image = tmp_path / "x.png"
    Image.fromarray(synthetic_photo(128, 128, seed=1)).save(image)
    assert cli_main(["predict", "--model", str(folder), str(image)]) == 2
    err = capsys.readouterr().err
    assert "'logits' output has 6 class scores, but the decoder spec declares 1" in err
    assert "Traceback" not in err


def _fields(spec_class: type) -> set[str]:
    return {f.name for f in dataclasses.fields(spec_class)}


def test_every_spec_field_has_a_rule() -> None:
    """Adding a field to a spec dataclass needs a rule beside it (and the reverse). A "dense"
    entry holds the fields of either dense decoder, and the ``rules`` that picks one."""
    assert set(INPUT_SPEC_RULES) == _fields(InputSpec)
    assert set(RCNN_FIELD_RULES) == _fields(RCNNDecoderSpec)
    assert set(DENSE_FIELD_RULES) == _fields(Detectron2DenseSpec) | _fields(MMDetATSSSpec) | {"rules"}
