"""Settings from flags, DYHEAD_SERVE_* variables and defaults."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from dyhead_serve.cli import build_parser
from dyhead_serve.server.serve_cli import _SETTINGS_FLAGS
from dyhead_serve.server.settings import ServerSettings


def test_environment_variables_with_the_prefix(monkeypatch):
    monkeypatch.setenv("DYHEAD_SERVE_MAX_BATCH_SIZE", "16")
    monkeypatch.setenv("DYHEAD_SERVE_CORS_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("DYHEAD_SERVE_OVERRIDES", "TEST.DETECTIONS_PER_IMAGE 50 DATASETS.TEST \"('a', 'b')\"")
    monkeypatch.setenv("DYHEAD_SERVE_API_KEY", "s3cret-key")
    monkeypatch.setenv("DYHEAD_SERVE_CACHE", "/somewhere")  # the zoo's variable is not a setting
    settings = ServerSettings()
    assert settings.max_batch_size == 16
    assert settings.cors_origins == ["https://a.example", "https://b.example"]
    assert settings.overrides == ["TEST.DETECTIONS_PER_IMAGE", "50", "DATASETS.TEST", "('a', 'b')"]
    assert settings.api_key is not None and settings.api_key.get_secret_value() == "s3cret-key"
    assert "s3cret-key" not in repr(settings)
    assert ServerSettings(max_batch_size=2).max_batch_size == 2  # explicit values win


def test_round_trip_through_the_environment(monkeypatch):
    original = ServerSettings(
        model="m", cors_origins=["https://x.example"], api_key="k", max_batch_delay_ms=2.5
    )
    for name, value in original.to_environment().items():
        monkeypatch.setenv(name, value)
    assert ServerSettings() == original


def test_invalid_values_are_refused():
    for bad in ({"max_batch_size": 0}, {"port": 70_000}, {"backend": "tflite"}, {"request_timeout_s": 0}):
        with pytest.raises(ValidationError):
            ServerSettings(**bad)


def test_unset_flags_defer_to_the_environment():
    args = build_parser().parse_args(
        ["serve", "--max-batch-size", "4", "--cors-origins", "https://a.example"]
    )
    given = {name: getattr(args, name) for name in _SETTINGS_FLAGS if getattr(args, name) is not None}
    assert given == {"max_batch_size": 4, "cors_origins": "https://a.example"}
    assert ServerSettings(**given).cors_origins == ["https://a.example"]


@pytest.mark.parametrize("value", ["", "   "])
def test_an_empty_api_key_means_no_key(monkeypatch, value):
    monkeypatch.setenv("DYHEAD_SERVE_API_KEY", value)
    assert ServerSettings().api_key is None
    monkeypatch.setenv("DYHEAD_SERVE_API_KEY", "s3cret")
    key = ServerSettings().api_key
    assert key is not None and key.get_secret_value() == "s3cret"
