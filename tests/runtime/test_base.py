"""Running a batch in chunks, as the backends do for networks with a largest batch."""

from __future__ import annotations

import pytest
import torch

from dyhead_serve.runtime.base import infer_in_chunks


def _network(calls: list[int]):
    def run(images: torch.Tensor, image_sizes: torch.Tensor) -> dict[str, torch.Tensor]:
        calls.append(images.shape[0])
        return {"sum": images.flatten(1).sum(1), "sizes": image_sizes * 2}

    return run


@pytest.mark.parametrize(("batch", "chunk", "expected_calls"), [(5, 2, [2, 2, 1]), (4, 4, [4]), (3, 8, [3])])
def test_chunks_are_consecutive_and_outputs_concatenated(batch, chunk, expected_calls) -> None:
    images = torch.arange(batch * 3 * 2 * 2, dtype=torch.float32).view(batch, 3, 2, 2)
    sizes = torch.arange(batch * 2).view(batch, 2)
    calls: list[int] = []
    outputs = infer_in_chunks(_network(calls), images, sizes, chunk)
    assert calls == expected_calls
    torch.testing.assert_close(outputs["sum"], images.flatten(1).sum(1))
    torch.testing.assert_close(outputs["sizes"], sizes * 2)


def test_a_chunk_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        infer_in_chunks(_network([]), torch.zeros(1, 3, 2, 2), torch.zeros(1, 2), 0)
