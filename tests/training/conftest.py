"""Fixtures of the training tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from dyhead_serve.data.synthetic import generate_synthetic_dataset


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The root of a generated shapes dataset: 4 training and 2 validation images of 128 px."""
    return generate_synthetic_dataset(
        tmp_path_factory.mktemp("shapes"), num_train=4, num_val=2, image_size=128
    ).root
