"""The server's settings: command-line flags, ``DYHEAD_SERVE_*`` environment variables, defaults."""

from __future__ import annotations

import json
import shlex
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from dyhead_serve.runtime.options import BACKEND_HELP, DEVICE_HELP, BackendName, ModelOptions

__all__ = ["ENV_PREFIX", "ServerSettings"]

ENV_PREFIX = "DYHEAD_SERVE_"
_MODEL_DEFAULTS = ModelOptions()


class ServerSettings(BaseSettings):
    """Everything ``dyhead-serve serve`` can be told.

    Each field is also read from the environment variable ``DYHEAD_SERVE_<FIELD>`` (upper case),
    e.g. ``DYHEAD_SERVE_MAX_BATCH_SIZE=16``; command-line flags win over the environment. Lists
    (``cors_origins``, ``overrides``) are comma-separated or JSON.
    """

    # hide_input_in_errors: a refused API key must not appear in messages or logs.
    # allow_inf_nan=False: a limit of "inf" or "nan" is refused, not turned into an overflow later.
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="ignore",
        validate_default=True,
        hide_input_in_errors=True,
        allow_inf_nan=False,
    )

    # The model (as `dyhead-serve predict` names it): model_options gathers them.
    model: str | None = Field(
        default=None, description="zoo name or exported folder; None: the embedded default"
    )
    config: str | None = Field(
        default=None, description="a Detectron2 DyHead config (torch backend), with weights"
    )
    weights: str | None = Field(
        default=None, description="checkpoint for `config`, or a local copy of a zoo model's"
    )
    backend: BackendName = Field(default=_MODEL_DEFAULTS.backend, description=BACKEND_HELP)
    device: str = Field(default=_MODEL_DEFAULTS.device, description=DEVICE_HELP)
    threads: int = Field(
        default=_MODEL_DEFAULTS.threads, ge=0, description="ONNX Runtime intra-op threads (0: its default)"
    )
    overrides: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="config overrides KEY VALUE KEY VALUE ... (torch backend)"
    )

    # The HTTP server.
    host: str = Field(
        default="127.0.0.1",
        description="address to listen on; a loopback address is reachable from this machine only",
    )
    port: int = Field(default=8000, ge=0, le=65535, description="TCP port")
    workers: int = Field(default=1, ge=1, le=64, description="server processes, each with its own model copy")

    # Batching and admission.
    max_batch_size: int = Field(
        default=8, ge=1, le=256, description="images per backend call; 1 turns batching off"
    )
    max_batch_delay_ms: float = Field(
        default=10.0,
        ge=0.0,
        le=10_000.0,
        description="longest wait for a batch to fill after its first image",
    )
    max_queue: int = Field(
        default=64,
        ge=1,
        le=100_000,
        description="images accepted and not yet answered; more get 503 + Retry-After",
    )
    preprocess_workers: int = Field(
        default=2, ge=1, le=64, description="threads decoding and resizing images"
    )
    request_timeout_s: float = Field(
        default=30.0, gt=0.0, description="a request still unanswered after this: 504"
    )
    read_timeout_s: float = Field(
        default=60.0,
        gt=0.0,
        le=3600.0,
        description="time to receive a whole request (headers and body) from its first byte: 408 after",
    )
    header_timeout_s: float = Field(
        default=10.0,
        gt=0.0,
        le=3600.0,
        description="time to receive a request's line and headers (at most read_timeout_s): 408 after",
    )
    max_connections: int = Field(
        default=256, ge=1, le=100_000, description="open connections per worker; more get 503 and are closed"
    )
    warmup: bool = Field(default=True, description="run one inference before reporting ready")

    # Limits on what a client may send.
    max_upload_mb: float = Field(
        default=20.0, gt=0.0, le=65536.0, description="largest request body (all images together)"
    )
    max_files: int = Field(default=16, ge=1, le=1024, description="most images in one request")
    max_image_pixels: int = Field(
        default=50_000_000, ge=1, description="larger images are refused before decoding"
    )
    max_request_pixels: int = Field(
        default=100_000_000,
        ge=1,
        description="most pixels of all images of one request together, checked before decoding",
    )

    # Access.
    api_key: SecretStr | None = Field(
        default=None,
        description="when set, /v1 and /v2 model routes need this X-API-Key header (gRPC: x-api-key "
        "metadata; prefer the environment variable: command lines are visible to other users)",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="origins allowed to call the API from a browser (CORS), comma-separated "
        "(e.g. https://app.example.com)",
    )

    # KServe v2 over gRPC, on the HTTP server's host, in the same process (and model).
    grpc_port: int = Field(
        default=8001,
        ge=0,
        le=65535,
        description="port of the KServe v2 gRPC service (inference.GRPCInferenceService); 0: no gRPC",
    )
    grpc_max_message_mb: float = Field(
        default=20.0,
        gt=0.0,
        le=2047.0,  # gRPC's limits are 32-bit signed byte counts
        description="largest gRPC request message (all images together); larger: RESOURCE_EXHAUSTED",
    )

    @field_validator("api_key", mode="before")
    @classmethod
    def _check_api_key(cls, value: Any) -> Any:
        """ "" means no key; any other key must be able to match an ``X-API-Key`` header."""
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if not isinstance(value, str):
            return value
        if value == "":  # DYHEAD_SERVE_API_KEY="" (an unset variable in compose, say): no key
            return None
        if not value.strip():
            raise ValueError("the API key is only whitespace; set a real key, or an empty one for none")
        if value != value.strip():
            raise ValueError(
                "the API key starts or ends with whitespace, which HTTP strips from header values: "
                "it could never match"
            )
        if not all(" " <= char <= "~" for char in value):
            raise ValueError(
                "the API key must be printable ASCII (letters, digits, punctuation, inner spaces): "
                "header values are bytes, so other characters match inconsistently"
            )
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        """A JSON list, or origins separated by commas."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [item.strip() for item in text.split(",") if item.strip()]
        return value

    @field_validator("overrides", mode="before")
    @classmethod
    def _split_overrides(cls, value: Any) -> Any:
        """A JSON list, or ``KEY VALUE ...`` split like a shell command line."""
        if isinstance(value, str):
            text = value.strip()
            return json.loads(text) if text.startswith("[") else shlex.split(text)
        return value

    @property
    def model_options(self) -> ModelOptions:
        """The model these settings name and where it runs, as the runtime loader takes them."""
        return ModelOptions(
            model=self.model,
            config=self.config,
            weights=self.weights,
            overrides=tuple(self.overrides),
            backend=self.backend,
            device=self.device,
            threads=self.threads,
            max_batch=self.max_batch_size,
        )

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def grpc_max_message_bytes(self) -> int:
        return int(self.grpc_max_message_mb * 1024 * 1024)

    def to_environment(self) -> dict[str, str]:
        """These settings as ``DYHEAD_SERVE_*`` variables (how worker processes receive them)."""
        env: dict[str, str] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            env[ENV_PREFIX + name.upper()] = json.dumps(value) if isinstance(value, list) else str(value)
        return env
