"""Skip conditions for tests that need a GPU or TensorRT (this project's CI has neither).

Use together with the declared markers, so such tests can be selected (``-m gpu``) on a machine
that has them::

    @pytest.mark.gpu
    @needs_gpu
    def test_...(): ...
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
HAS_TRITON = importlib.util.find_spec("triton") is not None

needs_gpu = pytest.mark.skipif(not (HAS_CUDA and HAS_TRITON), reason="needs a CUDA GPU (and Triton)")
needs_tensorrt = pytest.mark.skipif(
    not (HAS_CUDA and HAS_TENSORRT),
    reason="needs TensorRT >= 10.9 (Python bindings) and an NVIDIA GPU; neither is on this machine",
)
