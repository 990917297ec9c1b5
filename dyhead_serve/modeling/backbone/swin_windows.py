"""Window bookkeeping for Swin Transformer attention: cutting a feature map into windows and
back, the attention mask of shifted windows, and the relative-position lookup of a window.

These are plain functions of shapes so that they can be checked by hand on tiny grids.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "MASKED",
    "pad_to_window_multiple",
    "relative_position_index",
    "shifted_window_mask",
    "window_partition",
    "window_reverse",
]

# The official code masks with -100, not -inf: softmax then gives exp(-100) (a float32 denormal,
# not zero) to masked pairs, and a row can never be all -inf. Trained weights saw this value.
MASKED = -100.0


def window_partition(x: Tensor, window_size: int) -> Tensor:
    """Cut a map into non-overlapping square windows, row-major over windows.

    Args:
        x: Tensor[B, H, W, C] with H and W multiples of ``window_size``.

    Returns:
        Tensor[B * (H / window_size) * (W / window_size), window_size, window_size, C]: window
        ``b * nW + i * (W / window_size) + j`` is ``x[b, i*ws:(i+1)*ws, j*ws:(j+1)*ws]``.
    """
    batch, height, width, channels = x.shape
    if height % window_size or width % window_size:
        raise ValueError(f"map size {height}x{width} is not a multiple of the window size {window_size}")
    x = x.view(batch, height // window_size, window_size, width // window_size, window_size, channels)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, window_size, window_size, channels)


def window_reverse(windows: Tensor, window_size: int, height: int, width: int) -> Tensor:
    """Inverse of :func:`window_partition`.

    Args:
        windows: Tensor[B * nW, window_size, window_size, C].
        height, width: size of the map the windows were cut from.

    Returns:
        Tensor[B, height, width, C].
    """
    rows, cols = height // window_size, width // window_size
    channels = windows.shape[-1]
    x = windows.view(-1, rows, cols, window_size, window_size, channels)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, height, width, channels)


def pad_to_window_multiple(x: Tensor, window_size: int) -> Tensor:
    """Zero-pad the bottom and right of Tensor[B, H, W, C] up to multiples of ``window_size``.

    The padded tokens are zeros (after the block's LayerNorm), and the official code does not
    mask them out: they take part in attention like any other token.
    """
    height, width = x.shape[1], x.shape[2]
    pad_bottom = (window_size - height % window_size) % window_size
    pad_right = (window_size - width % window_size) % window_size
    # Padded unconditionally (by zero when already a multiple): a Python branch on the size
    # would be frozen into a traced ONNX graph at the traced size.
    return F.pad(x, (0, 0, 0, pad_right, 0, pad_bottom))


def shifted_window_mask(
    height: int, width: int, window_size: int, shift_size: int, device: torch.device | None = None
) -> Tensor:
    """Attention mask of shifted windows on a map of ``height`` x ``width`` (window multiples).

    After the map is rolled up and left by ``shift_size``, the last row and column of windows
    hold tokens from opposite borders of the map. Each axis splits into three bands (before the
    last window, the last window minus the wrapped-in strip, the wrapped-in strip of
    ``shift_size``); two tokens of one window may attend to each other only if they lie in the
    same band on both axes.

    Returns:
        Tensor[nW, window_size**2, window_size**2] (nW windows in :func:`window_partition`
        order): 0 where query and key share a region, :data:`MASKED` elsewhere.
    """
    if height % window_size or width % window_size:
        raise ValueError(f"map size {height}x{width} is not a multiple of the window size {window_size}")
    rows = torch.arange(height, device=device)
    cols = torch.arange(width, device=device)
    # Band 0, 1, 2 per axis, exactly as the official slices (0, -ws), (-ws, -shift), (-shift, None).
    row_band = (rows >= height - window_size).long() + (rows >= height - shift_size).long()
    col_band = (cols >= width - window_size).long() + (cols >= width - shift_size).long()
    region = (row_band[:, None] * 3 + col_band[None, :]).float()  # [H, W]
    region_windows = window_partition(region[None, :, :, None], window_size)  # [nW, ws, ws, 1]
    region_windows = region_windows.reshape(-1, window_size * window_size)  # [nW, ws*ws]
    differs = region_windows[:, None, :] != region_windows[:, :, None]  # [nW, query, key]
    return torch.zeros(differs.shape, device=device).masked_fill(differs, MASKED)


def relative_position_index(window_size: int) -> Tensor:
    """Row of the relative-position bias table for each (query, key) pair of a window.

    Tokens are numbered row-major in the window; for query ``(yq, xq)`` and key ``(yk, xk)`` the
    index is ``(yq - yk + ws - 1) * (2 * ws - 1) + (xq - xk + ws - 1)``, in
    ``[0, (2 * ws - 1) ** 2)``.

    Returns:
        Tensor[ws * ws, ws * ws] of int64.
    """
    coords = torch.arange(window_size)
    y = coords.repeat_interleave(window_size)  # [ws*ws] row of each token
    x = coords.repeat(window_size)  # [ws*ws] column of each token
    dy = y[:, None] - y[None, :] + window_size - 1
    dx = x[:, None] - x[None, :] + window_size - 1
    return dy * (2 * window_size - 1) + dx
