"""Every command of both console scripts goes through the one mapping of a user's mistake
(:class:`~dyhead_serve.errors.UserError`) to one ``error: <message>`` line and exit status 2."""

from __future__ import annotations

import pytest

import dyhead_serve.cli.eval
import dyhead_serve.cli.export
import dyhead_serve.cli.export_engine
import dyhead_serve.cli.export_tensorrt
import dyhead_serve.cli.predict
import dyhead_serve.cli.serve
import dyhead_serve.cli.train
import dyhead_serve.cli.zoo
from dyhead_serve.checkpoint import CheckpointError
from dyhead_serve.checkpoint.model_weights import WeightsError
from dyhead_serve.checkpoint.safetensors_file import SafetensorsError
from dyhead_serve.cli.export import main as export_main
from dyhead_serve.cli.main import main as serve_main
from dyhead_serve.config import ConfigError
from dyhead_serve.data.coco_json import DatasetError
from dyhead_serve.decode.raw_outputs import OutputShapeError
from dyhead_serve.errors import UserError
from dyhead_serve.export.engine_cache import EngineCacheError
from dyhead_serve.export.errors import ExportError
from dyhead_serve.export.tensorrt_build import EngineBuildError
from dyhead_serve.export.torch_export import TorchExportError
from dyhead_serve.model_source import ModelSourceError
from dyhead_serve.pipeline.image_io import ImageDecodeError
from dyhead_serve.pipeline.predictor import UnsupportedImageSizeError
from dyhead_serve.pipeline.preprocess import MissingExtraError
from dyhead_serve.runtime.artifact_schema import ArtifactError
from dyhead_serve.runtime.base import BackendError
from dyhead_serve.zoo import ZooError

# (console script's main, the command's arguments, the module and name of what it runs)
COMMANDS = [
    (serve_main, ["predict", "photo.jpg"], dyhead_serve.cli.predict, "run_predict"),
    (serve_main, ["train", "--config", "dyhead_r50_atss_fpn_1x"], dyhead_serve.cli.train, "run_train"),
    (serve_main, ["eval", "--config", "c.yaml", "--weights", "w.pth"], dyhead_serve.cli.eval, "run_eval"),
    (serve_main, ["zoo", "list"], dyhead_serve.cli.zoo, "run_zoo_list"),
    (serve_main, ["serve"], dyhead_serve.cli.serve, "run_serve"),
    (export_main, ["onnx", "--model", "default", "--out", "x"], dyhead_serve.cli.export, "_run_onnx"),
    (export_main, ["tensorrt", "--onnx", "x", "--out", "y"], dyhead_serve.cli.export_tensorrt,
     "_run_tensorrt"),
    (export_main, ["engine"], dyhead_serve.cli.export_engine, "_run_engine"),
]  # fmt: skip

USER_ERRORS = [
    ArtifactError, BackendError, CheckpointError, ConfigError, DatasetError, EngineBuildError,
    EngineCacheError, ExportError, ImageDecodeError, MissingExtraError, ModelSourceError,
    OutputShapeError, SafetensorsError, TorchExportError, UnsupportedImageSizeError, WeightsError,
    ZooError,
]  # fmt: skip


@pytest.mark.parametrize("error", USER_ERRORS, ids=lambda error: error.__name__)
def test_every_user_facing_error_is_a_user_error(error):
    assert issubclass(error, UserError)


@pytest.mark.parametrize(
    ("main", "argv", "module", "name"), COMMANDS, ids=[" ".join(argv[:2]) for _, argv, _, _ in COMMANDS]
)
def test_a_user_error_is_one_error_line_and_exit_status_2(main, argv, module, name, monkeypatch, capsys):
    def refuse(args):
        raise ConfigError("MODEL.FOO: no such key; check the config  \n")

    monkeypatch.setattr(module, name, refuse)  # the parser binds the command when it is built
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err == "error: MODEL.FOO: no such key; check the config\n"
    assert captured.out == ""


@pytest.mark.parametrize("error", [FileNotFoundError, PermissionError, IsADirectoryError])
def test_a_path_the_user_named_is_a_user_error_too(error, monkeypatch, capsys):
    def missing(args):
        raise error(2, "No such file or directory", "nope.pth")

    monkeypatch.setattr(dyhead_serve.cli.export_engine, "_run_engine", missing)
    assert export_main(["engine"]) == 2
    assert capsys.readouterr().err == "error: [Errno 2] No such file or directory: 'nope.pth'\n"


def test_a_bug_keeps_its_traceback(monkeypatch):
    def bug(args):
        raise KeyError("a bug, not the user's mistake")

    monkeypatch.setattr(dyhead_serve.cli.zoo, "run_zoo_list", bug)
    with pytest.raises(KeyError, match="a bug"):
        serve_main(["zoo", "list"])
