"""Every error a checkpoint, a download or MODEL.WEIGHTS can cause is a UserError (the CLI maps
it to one ``error:`` line, exit 2) and keeps the base callers already catch."""

from __future__ import annotations

import pytest

from dyhead_serve.checkpoint import CheckpointError, CheckpointMismatchError, DownloadError, SafetensorsError
from dyhead_serve.checkpoint.model_weights import WeightsError
from dyhead_serve.errors import UserError
from dyhead_serve.zoo import ZooError


@pytest.mark.parametrize(
    ("error", "base"),
    [
        (CheckpointError, RuntimeError),
        (CheckpointMismatchError, CheckpointError),
        (SafetensorsError, ValueError),
        (WeightsError, RuntimeError),
        (DownloadError, RuntimeError),
        (ZooError, RuntimeError),
    ],
)
def test_checkpoint_errors_are_user_errors_with_their_old_base(error: type[Exception], base: type) -> None:
    assert issubclass(error, UserError) and issubclass(error, base)
