"""Settings from flags, DYHEAD_SERVE_* variables and defaults."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from dyhead_serve.cli import build_parser
from dyhead_serve.cli.serve import settings_values
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
    given = settings_values(args)
    assert given == {"max_batch_size": 4, "cors_origins": "https://a.example"}
    assert ServerSettings(**given).cors_origins == ["https://a.example"]


def test_an_empty_api_key_means_no_key(monkeypatch):
    monkeypatch.setenv("DYHEAD_SERVE_API_KEY", "")
    assert ServerSettings().api_key is None
    monkeypatch.setenv("DYHEAD_SERVE_API_KEY", "s3cret")
    key = ServerSettings().api_key
    assert key is not None and key.get_secret_value() == "s3cret"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("   ", "only whitespace"),
        ("\t", "only whitespace"),
        (" s3cret", "starts or ends with whitespace"),
        ("s3cret\n", "starts or ends with whitespace"),
        ("clé-secrète", "printable ASCII"),
        ("key\x7f", "printable ASCII"),
    ],
    ids=["spaces", "tab", "leading-space", "trailing-newline", "non-ascii", "control-character"],
)
def test_api_keys_that_could_not_match_are_refused(monkeypatch, value, message):
    monkeypatch.setenv("DYHEAD_SERVE_API_KEY", value)
    with pytest.raises(ValidationError, match=message) as info:
        ServerSettings()
    assert value.strip() not in str(info.value) or not value.strip()  # the key is not echoed
    with pytest.raises(ValidationError, match=message):
        ServerSettings(api_key=value)


def test_serve_refuses_a_whitespace_key_at_start_up(monkeypatch, capsys):
    import uvicorn

    from dyhead_serve.cli import main as cli_main

    def must_not_start(self, *args, **kwargs):
        raise AssertionError("the server started with a whitespace-only API key")

    monkeypatch.setattr(uvicorn.Server, "run", must_not_start)
    monkeypatch.setenv("DYHEAD_SERVE_API_KEY", "  ")
    assert cli_main(["serve"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: invalid server settings: api_key") and "only whitespace" in err


def test_a_key_with_inner_spaces_and_punctuation_matches(served_backend):
    from fastapi.testclient import TestClient

    from dyhead_serve.server import create_app

    key = "a b~!{}"
    with TestClient(create_app(ServerSettings(api_key=key, warmup=False), backend=served_backend)) as client:
        assert client.get("/v1/models", headers={"X-API-Key": key}).status_code == 200
        assert client.get("/v1/models", headers={"X-API-Key": "a b~!{"}).status_code == 401
        latin = client.get("/v1/models", headers={"X-API-Key": "a b\xe9!{}".encode("latin-1")})
        assert latin.status_code == 401
