"""Model arguments and model resolution, defined once for every command."""

from __future__ import annotations

import argparse

import pytest

from dyhead_serve import zoo
from dyhead_serve.checkpoint import sha256_of
from dyhead_serve.cli import build_parser as serve_parser
from dyhead_serve.cli.export import build_parser as export_parser
from dyhead_serve.cli.model_options import model_source_from_args, overrides_from_args
from dyhead_serve.model_source import ModelSourceError, resolve_model
from dyhead_serve.runtime.export_command import override_flags


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {s: a for a in parser._actions for s in a.option_strings}


def test_every_command_takes_the_same_model_arguments():
    commands = {
        **_subparsers(serve_parser()),
        **{f"export {k}": v for k, v in _subparsers(export_parser()).items()},
    }
    with_models = {k: v for k, v in commands.items() if "--weights" in _options(v)}
    assert set(with_models) == {
        "predict", "serve", "eval", "export onnx", "export tensorrt", "export engine"
    }  # fmt: skip
    for name, parser in with_models.items():
        options = _options(parser)
        assert {"--model", "--config", "--weights", "--set"} <= set(options), name
        assert options["--set"].nargs == 2 and options["--set"].metavar == ("KEY", "VALUE"), name
        assert options["--weights"].help == _options(commands["predict"])["--weights"].help, name
        assert options["--config"].help == _options(commands["predict"])["--config"].help, name
    assert "--set" in _options(commands["train"])
    for name in ("train", "eval"):  # Detectron2's trailing KEY VALUE pairs, too
        assert any(a.dest == "opts" for a in commands[name]._actions), name


def test_set_and_trailing_overrides_combine_in_order():
    args = serve_parser().parse_args(
        ["eval", "--model", "default", "--set", "A.B", "1", "--no-progress", "C.D", "2", "E", "x y"]
    )
    assert overrides_from_args(args) == ["A.B", "1", "C.D", "2", "E", "x y"]
    assert override_flags(overrides_from_args(args)) == [
        "--set",
        "A.B",
        "1",
        "--set",
        "C.D",
        "2",
        "--set",
        "E",
        "x y",
    ]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"config": "dyhead_r50_atss_fpn_1x"}, "--config needs --weights"),
        ({"model": "default", "config": "c.yaml", "weights": "w.pth"}, "not both"),
        ({"model": "default", "overrides": ["A.B"]}, "KEY VALUE pairs"),
        ({"model": None, "default_ok": False}, "name a model"),
    ],
)
def test_bad_model_arguments_say_what_to_change(kwargs, message):
    with pytest.raises(ModelSourceError, match=message):
        resolve_model(**kwargs)


def test_exported_folder_takes_no_overrides_nor_weights(tmp_path):
    assert resolve_model(str(tmp_path)).kind == "exported"
    with pytest.raises(ModelSourceError, match="overrides no longer apply"):
        resolve_model(str(tmp_path), overrides=["A", "1"])
    with pytest.raises(ModelSourceError, match="--weights does not apply"):
        resolve_model(str(tmp_path), weights="w.pth")
    with pytest.raises(ModelSourceError, match="needs a zoo name"):
        resolve_model(str(tmp_path), exported_ok=False)


def test_unknown_zoo_name_lists_the_known_ones():
    with pytest.raises(zoo.ZooError, match=r"known models: .*default"):
        resolve_model("no_such_model")


def test_zoo_model_provenance_is_named_not_located():
    source = resolve_model(None, overrides=["TEST.DETECTIONS_PER_IMAGE", "50"])
    assert (source.kind, source.name, source.embedded) == ("zoo", "default", True)
    record = source.provenance()
    assert record["config"] == record["weights"] == "zoo:default"
    assert record["weights_sha256"] == zoo.DEFAULT_SHA256
    assert record["overrides"] == ["TEST.DETECTIONS_PER_IMAGE", "50"]
    assert source.class_names == list(zoo.ZOO["default"].class_names or ())


def test_config_provenance_locates_and_hashes_the_files(tiny_weights):
    source = resolve_model(config="dyhead_r50_atss_fpn_1x", weights=tiny_weights, overrides=["A", "1"])
    assert (source.kind, source.name, source.class_names) == ("config", "dyhead_r50_atss_fpn_1x", None)
    assert source.provenance() == {
        "config": "dyhead_r50_atss_fpn_1x",
        "weights": str(tiny_weights),
        "weights_sha256": sha256_of(tiny_weights),
        "overrides": ["A", "1"],
    }


def test_a_zoo_model_with_local_weights_records_the_file(tiny_weights):
    args = export_parser().parse_args(
        ["onnx", "--model", "default", "--weights", str(tiny_weights), "--out", "x"]
    )
    source = model_source_from_args(args, exported=False, default=False)
    assert source.provenance()["weights"] == str(tiny_weights) and not source.embedded
    assert source.provenance()["config"] == "zoo:default"
