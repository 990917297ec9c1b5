"""One ``ModelOptions`` from the command line and from the server's settings, passed whole to the
runtime loader."""

from __future__ import annotations

import pytest

import dyhead_serve.runtime.loader
from dyhead_serve.cli.main import build_parser, main
from dyhead_serve.cli.model_options import model_options_from_args
from dyhead_serve.runtime.options import BACKENDS, ModelOptions
from dyhead_serve.server.settings import ServerSettings


def test_predict_flags_become_model_options():
    args = build_parser().parse_args(
        ["predict", "--config", "c.yaml", "--weights", "w.pth", "--set", "A.B", "1", "--backend", "torch",
         "--device", "cpu", "--threads", "2", "x.jpg"]
    )  # fmt: skip
    assert model_options_from_args(args) == ModelOptions(
        config="c.yaml", weights="w.pth", overrides=("A.B", "1"), backend="torch", device="cpu", threads=2
    )
    defaults = build_parser().parse_args(["predict", "x.jpg"])
    assert model_options_from_args(defaults) == ModelOptions()


def test_server_settings_hold_the_same_options(monkeypatch):
    for name in ("MODEL", "CONFIG", "WEIGHTS", "OVERRIDES", "BACKEND", "DEVICE", "THREADS", "MAX_BATCH_SIZE"):
        monkeypatch.delenv(f"DYHEAD_SERVE_{name}", raising=False)
    monkeypatch.setenv("DYHEAD_SERVE_THREADS", "3")
    settings = ServerSettings(model="exported/atss", backend="onnxruntime", overrides=["A.B", "1"])
    # The server's batch size is the largest batch its model runs (a TensorRT engine must take it).
    assert settings.model_options == ModelOptions(
        model="exported/atss", overrides=("A.B", "1"), backend="onnxruntime", threads=3, max_batch=8
    )
    monkeypatch.delenv("DYHEAD_SERVE_THREADS")
    defaults = ServerSettings()
    assert defaults.model_options == ModelOptions(max_batch=defaults.max_batch_size)  # one set of defaults


def test_the_backend_list_is_the_one_of_the_runtime():
    serve = build_parser().parse_args(["serve", "--backend", "tensorrt"])
    assert serve.backend == "tensorrt"
    for name in BACKENDS:
        assert ServerSettings(backend=name).backend == name
    with pytest.raises(SystemExit):
        build_parser().parse_args(["predict", "--backend", "tflite", "x.jpg"])


def test_predict_passes_its_options_whole_to_the_loader(monkeypatch, capsys):
    """A recording stand-in for the loader: it keeps what it was given and refuses to load."""
    given: list[ModelOptions] = []

    def record(options):
        given.append(options)
        raise dyhead_serve.runtime.loader.BackendError("stand-in: nothing loaded")

    monkeypatch.setattr(dyhead_serve.runtime.loader, "load_backend", record)
    assert main(["predict", "--model", "m", "--device", "cpu", "x.jpg"]) == 2
    assert given == [ModelOptions(model="m", device="cpu")]
    assert capsys.readouterr().err == "error: stand-in: nothing loaded\n"
