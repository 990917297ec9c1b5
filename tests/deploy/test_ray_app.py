"""deploy/ray/serve_app.py without Ray: it imports, wraps the very app `dyhead-serve serve` runs,
and turns its arguments into server settings and deployment options."""

from __future__ import annotations

import importlib.util
import py_compile
import sys

import pytest

from dyhead_serve.server import create_app
from dyhead_serve.server.settings import ServerSettings
from tests.deploy.conftest import REPO

SERVE_APP = REPO / "deploy" / "ray" / "serve_app.py"


@pytest.fixture(scope="module")
def serve_app():
    py_compile.compile(str(SERVE_APP), doraise=True)
    spec = importlib.util.spec_from_file_location("serve_app", SERVE_APP)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    had_ray = "ray" in sys.modules
    spec.loader.exec_module(module)
    assert had_ray or "ray" not in sys.modules, "Ray must be imported only when the application is built"
    return module


def _api(app) -> dict[str, set[str]]:
    """Path -> methods, as the app's OpenAPI document lists them."""
    return {path: set(operations) for path, operations in app.openapi()["paths"].items()}


def test_the_replica_app_has_the_same_api_as_the_server(serve_app, monkeypatch):
    settings = ServerSettings()
    loaded = []

    def load(s: ServerSettings) -> object:
        loaded.append(s)
        return object()  # the app is not started here: only its routes are compared

    monkeypatch.setattr(serve_app, "load_backend_from_settings", load)
    app = serve_app.build_asgi_app(settings)
    assert loaded == [settings], "the replica loads its model before the app exists"
    api = _api(app)
    assert api == _api(create_app(settings))
    assert {"/v1/detect", "/readyz", "/healthz"} <= api.keys()


def test_arguments_split_into_server_settings_and_deployment_options(serve_app):
    args = {"model": "/models/atss-engine", "backend": "tensorrt", "max_batch_size": "4", "max_replicas": "8"}
    settings = serve_app.server_settings(args)
    assert (settings.model, settings.backend) == ("/models/atss-engine", "tensorrt")
    assert settings.max_batch_size == 4
    options = serve_app.deployment_options(args, settings)
    assert options["ray_actor_options"] == {"num_gpus": 1.0}
    autoscaling = options["autoscaling_config"]
    assert (autoscaling["min_replicas"], autoscaling["max_replicas"]) == (1, 8)
    assert autoscaling["target_ongoing_requests"] == 4.0  # one batch per replica
    assert options["max_ongoing_requests"] >= autoscaling["target_ongoing_requests"]


def test_unknown_arguments_are_refused(serve_app):
    with pytest.raises(ValueError, match="unknown argument"):
        serve_app.server_settings({"modle": "x"})
