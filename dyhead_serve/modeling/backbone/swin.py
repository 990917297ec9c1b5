"""Swin Transformer backbone in the form of the official DynamicHead code (``extra/swint.py``,
itself from Swin-Transformer-Object-Detection): same module names, same arithmetic.

Outputs are ``stage2``..``stage5`` (strides 4, 8, 16, 32; channels ``embed_dim * 2**i``), each
passed through its own LayerNorm ``norm{i}`` (``norm1``..``norm3`` for stage3..stage5).
Inputs of any size are accepted: the patch embedding, the window attention and the patch
merging each zero-pad on the bottom/right as the official code does. Kept from the official code
because trained weights depend on them: padded tokens take part in window attention unmasked;
the window is never shrunk for maps smaller than it (a 1x1 map is padded to 7x7 and still
shifted); shifted windows are masked with -100, not -inf.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dyhead_serve.modeling.backbone.base import Backbone
from dyhead_serve.modeling.backbone.swin_windows import (
    pad_to_window_multiple,
    relative_position_index,
    shifted_window_mask,
    window_partition,
    window_reverse,
)
from dyhead_serve.modeling.shape_spec import ShapeSpec

__all__ = [
    "DropPath",
    "PatchEmbed",
    "PatchMerging",
    "SwinBlock",
    "SwinStage",
    "SwinTransformer",
    "WindowAttention",
    "build_swin",
]

STAGE_NAMES = ("stage2", "stage3", "stage4", "stage5")


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a sample's residual branch with probability ``rate``
    and scale the kept ones by ``1 / (1 - rate)``; the identity in eval mode."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        return x * x.new_empty(shape).bernoulli_(keep).div_(keep)


class Mlp(nn.Module):
    """``fc2(GELU(fc1(x)))`` over the last dimension."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside each window, with a learned relative-position bias.

    Args:
        dim: channels of the tokens.
        window_size: side of the square window.
        num_heads: attention heads; ``dim`` must be divisible by it.
    """

    def __init__(self, dim: int, window_size: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"channels {dim} are not divisible by num_heads {num_heads}")
        self.window_size = window_size
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window_size - 1) ** 2, num_heads)
        )  # [(2ws-1)^2, heads]
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        # Persistent, as in the official model: its checkpoints carry this int64 buffer.
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.relative_position_index: Tensor
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Attend within windows.

        Args:
            x: Tensor[B * nW, N, C], N = window_size**2 tokens per window.
            mask: Tensor[nW, N, N] added to the logits (0 or -100), or None.

        Returns:
            Tensor[B * nW, N, C].
        """
        num_windows_total, tokens, channels = x.shape
        heads = self.num_heads
        qkv = self.qkv(x).reshape(num_windows_total, tokens, 3, heads, channels // heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each [B*nW, heads, N, C/heads]
        attn = (q * self.scale) @ k.transpose(-2, -1)  # [B*nW, heads, N, N]
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]  # [N*N, heads]
        attn = attn + bias.view(tokens, tokens, heads).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            num_windows = mask.shape[0]
            attn = attn.view(-1, num_windows, heads, tokens, tokens) + mask[None, :, None]
            attn = attn.view(-1, heads, tokens, tokens)
        attn = attn.softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(num_windows_total, tokens, channels)
        return self.proj(out)


class SwinBlock(nn.Module):
    """LayerNorm -> (shifted) window attention -> residual, LayerNorm -> MLP -> residual.

    Args:
        dim: channels.
        num_heads: attention heads.
        window_size: side of the attention window.
        shift_size: cyclic shift before partitioning (0: regular windows; window_size // 2 on
            every second block).
        mlp_ratio: hidden width of the MLP relative to ``dim``.
        drop_path: stochastic-depth rate of both residual branches.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        shift_size: int,
        mlp_ratio: float,
        drop_path: float,
    ) -> None:
        super().__init__()
        if not 0 <= shift_size < window_size:
            raise ValueError(f"shift_size must be in [0, window_size={window_size}), got {shift_size}")
        self.window_size = window_size
        self.shift_size = shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, height: int, width: int, shift_mask: Tensor) -> Tensor:
        """Tensor[B, H*W, C] -> Tensor[B, H*W, C]; ``shift_mask`` (see :func:`shifted_window_mask`)
        is used only when this block shifts."""
        batch, length, channels = x.shape
        if length != height * width:
            raise ValueError(f"got {length} tokens for a {height}x{width} map")
        ws, shift = self.window_size, self.shift_size
        shortcut = x
        x = pad_to_window_multiple(self.norm1(x).view(batch, height, width, channels), ws)
        padded_height, padded_width = x.shape[1], x.shape[2]
        if shift:
            x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
        windows = window_partition(x, ws).view(-1, ws * ws, channels)  # [B*nW, ws*ws, C]
        windows = self.attn(windows, mask=shift_mask if shift else None)
        x = window_reverse(windows.view(-1, ws, ws, channels), ws, padded_height, padded_width)
        if shift:
            x = torch.roll(x, shifts=(shift, shift), dims=(1, 2))
        x = x[:, :height, :width].reshape(batch, height * width, channels)
        x = shortcut + self.drop_path(x)
        return x + self.drop_path(self.mlp(self.norm2(x)))


MERGE_ORDERS = ("official", "unfold")


class PatchMerging(nn.Module):
    """Halve the resolution and double the channels: concatenate each 2x2 neighbourhood
    (odd sizes zero-padded on the bottom/right), LayerNorm, then a linear map 4C -> 2C.

    ``order`` is the layout of the 4C concatenated values, which the norm and reduction weights
    follow: ``"official"`` puts the four positions (row, col) = (0,0), (1,0), (0,1), (1,1) one
    after the other, C channels each (Swin-Transformer's code); ``"unfold"`` puts each channel's
    four positions (0,0), (0,1), (1,0), (1,1) together (``nn.Unfold``, mmdetection's
    ``PatchMerging``). The same values in another order give other float32 sums in the
    LayerNorm, so each checkpoint family runs in its own order.
    """

    def __init__(self, dim: int, order: str = "official") -> None:
        super().__init__()
        if order not in MERGE_ORDERS:
            raise ValueError(f"patch merging order must be one of {MERGE_ORDERS}, got {order!r}")
        self.order = order
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: Tensor, height: int, width: int) -> Tensor:
        """Tensor[B, H*W, C] -> Tensor[B, ceil(H/2) * ceil(W/2), 2C]."""
        batch, _, channels = x.shape
        # Padded unconditionally (by zero rows when even): a Python branch on the size would be
        # frozen into a traced ONNX graph at the traced size.
        x = F.pad(x.view(batch, height, width, channels), (0, 0, 0, width % 2, 0, height % 2))
        if self.order == "official":
            # (row, col) = (0,0), (1,0), (0,1), (1,1), each a block of C channels.
            parts = [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]]
            x = torch.cat(parts, dim=-1)
        else:
            # Per channel, (row, col) = (0,0), (0,1), (1,0), (1,1): index 4 * c + 2 * row + col.
            parts = [x[:, 0::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 0::2], x[:, 1::2, 1::2]]
            x = torch.stack(parts, dim=-1)  # [B, H/2, W/2, C, 4]
        return self.reduction(self.norm(x.reshape(batch, -1, 4 * channels)))


class SwinStage(nn.Module):
    """``depth`` blocks alternating regular and shifted windows, then optional patch merging.

    Args:
        drop_path: stochastic-depth rate of each block.
        downsample: whether to end with a :class:`PatchMerging` (all stages but the last).
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        drop_path: Sequence[float],
        downsample: bool,
        merge_order: str = "official",
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.shift_size = window_size // 2
        self.blocks = nn.ModuleList(
            SwinBlock(
                dim,
                num_heads,
                window_size,
                shift_size=0 if i % 2 == 0 else self.shift_size,
                mlp_ratio=mlp_ratio,
                drop_path=drop_path[i],
            )
            for i in range(depth)
        )
        self.downsample = PatchMerging(dim, merge_order) if downsample else None

    def forward(self, x: Tensor, height: int, width: int) -> Tensor:
        """Tensor[B, H*W, C] -> the stage's output Tensor[B, H*W, C] (before patch merging).

        The shifted-window mask depends only on the padded map size: built once per call.
        """
        ws = self.window_size
        # Not -(-h // ws) * ws: traced into ONNX, integer division truncates towards zero, and
        # the mask would have fewer windows than the map whenever h is not a multiple of ws.
        padded_height = height + (ws - height % ws) % ws
        padded_width = width + (ws - width % ws) % ws
        mask = shifted_window_mask(padded_height, padded_width, ws, self.shift_size, device=x.device)
        for block in self.blocks:
            x = block(x, height, width, mask)
        return x


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch_size`` patches (input zero-padded on the bottom/right to a
    multiple), linearly embedded by a strided convolution, then LayerNorm over channels."""

    def __init__(self, patch_size: int, in_channels: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, images: Tensor) -> Tensor:
        """Tensor[B, C_in, H, W] -> Tensor[B, embed_dim, ceil(H/p), ceil(W/p)]."""
        p = self.patch_size
        height, width = images.shape[-2:]
        images = F.pad(
            images, (0, (p - width % p) % p, 0, (p - height % p) % p)
        )  # no branch: see PatchMerging
        x = self.proj(images)
        batch, channels, out_h, out_w = x.shape
        x = self.norm(x.flatten(2).transpose(1, 2))  # [B, h*w, C]
        return x.transpose(1, 2).reshape(batch, channels, out_h, out_w)


class SwinTransformer(Backbone):
    """Patch embedding and four :class:`SwinStage` s; returns the stages in ``out_features``,
    each normalised by its own LayerNorm (``norm{i}`` for ``stage{i+2}``).

    Args:
        out_features: subset of ``stage2``..``stage5``.
        in_channels: image channels.
        embed_dim: channels of stage2; each later stage doubles them.
        depths: blocks per stage.
        num_heads: attention heads per stage.
        window_size: side of the attention window.
        mlp_ratio: MLP hidden width relative to the channels.
        drop_path_rate: stochastic depth, rising linearly from 0 (first block) to this rate.
        patch_size: side of the input patches (stride of stage2).
        frozen_stages: -1 freezes nothing, 0 or 1 the patch embedding, k >= 2 also the first
            k - 1 stages (the official ``frozen_stages``, set from ``MODEL.BACKBONE.FREEZE_AT``).
        merge_order: channel layout of the patch mergings (see :class:`PatchMerging`):
            ``"official"`` or ``"unfold"`` (mmdetection's Swin).
    """

    def __init__(
        self,
        out_features: Sequence[str],
        *,
        in_channels: int = 3,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.2,
        patch_size: int = 4,
        frozen_stages: int = -1,
        merge_order: str = "official",
    ) -> None:
        super().__init__()
        if len(depths) != len(num_heads):
            raise ValueError(f"depths {list(depths)} and num_heads {list(num_heads)} differ in length")
        names = STAGE_NAMES[: len(depths)]
        unknown = [f for f in out_features if f not in names]
        if unknown or not out_features:
            raise ValueError(f"Swin outputs must be a non-empty subset of {list(names)}, got {out_features}")
        self._out_features = [name for name in names if name in out_features]
        self.patch_embed = PatchEmbed(patch_size, in_channels, embed_dim)
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.num_features = [embed_dim * 2**i for i in range(len(depths))]
        self.layers = nn.ModuleList()
        for i, (depth, heads) in enumerate(zip(depths, num_heads, strict=True)):
            first = sum(depths[:i])
            self.layers.append(
                SwinStage(
                    self.num_features[i],
                    depth,
                    heads,
                    window_size,
                    mlp_ratio,
                    drop_path=rates[first : first + depth],
                    downsample=i < len(depths) - 1,
                    merge_order=merge_order,
                )
            )
        self._shapes = {
            name: ShapeSpec(self.num_features[i], patch_size * 2**i) for i, name in enumerate(names)
        }
        for i, name in enumerate(names):
            if name in self._out_features:
                self.add_module(f"norm{i}", nn.LayerNorm(self.num_features[i]))
        self.frozen_stages = frozen_stages
        self._freeze()

    def _freeze(self) -> None:
        frozen: list[nn.Module] = []
        if self.frozen_stages >= 0:
            frozen.append(self.patch_embed)
        if self.frozen_stages >= 2:
            frozen.extend(self.layers[: self.frozen_stages - 1])
        for module in frozen:
            for p in module.parameters():
                p.requires_grad_(False)

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {name: self._shapes[name] for name in self._out_features}

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """Tensor[B, C_in, H, W] -> {``stage{i+2}``: Tensor[B, embed_dim * 2**i, ~H / 2**(i+2),
        ~W / 2**(i+2)]}; sizes round up at every halving (ceil)."""
        x = self.patch_embed(images)  # [B, C, h, w]
        height, width = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)  # [B, h*w, C]
        outputs: dict[str, Tensor] = {}
        last = STAGE_NAMES.index(self._out_features[-1])
        for i, stage in enumerate(self.layers[: last + 1]):
            assert isinstance(stage, SwinStage)
            x = stage(x, height, width)
            name = STAGE_NAMES[i]
            if name in self._out_features:
                out = getattr(self, f"norm{i}")(x)
                outputs[name] = (
                    out.view(-1, height, width, self.num_features[i]).permute(0, 3, 1, 2).contiguous()
                )
            if i < last:
                assert stage.downsample is not None  # every stage but the last merges
                x = stage.downsample(x, height, width)
                height, width = (height + 1) // 2, (width + 1) // 2
        return outputs


def build_swin(
    *,
    out_features: Sequence[str],
    in_channels: int = 3,
    embed_dim: int = 96,
    depths: Sequence[int] = (2, 2, 6, 2),
    num_heads: Sequence[int] = (3, 6, 12, 24),
    window_size: int = 7,
    mlp_ratio: float = 4.0,
    drop_path_rate: float = 0.2,
    ape: bool = False,
    out_norm: bool = True,
    frozen_stages: int = -1,
    merge_order: str = "official",
) -> SwinTransformer:
    """Build the Swin backbone as the official ``build_swint_backbone`` does from ``MODEL.SWINT``.

    ``ape`` (absolute position embedding) is not supported. ``out_norm``: the official code
    ignores ``MODEL.SWINT.OUT_NORM`` and always normalises the outputs; we refuse False rather
    than build a model that differs from what the same config builds there.
    """
    if ape:
        raise ValueError("MODEL.SWINT.APE = True (absolute position embedding) is not supported")
    if not out_norm:
        raise ValueError(
            "MODEL.SWINT.OUT_NORM = False is not supported: the official implementation ignores it "
            "and always applies the per-output LayerNorms; set it to True"
        )
    return SwinTransformer(
        out_features,
        in_channels=in_channels,
        embed_dim=embed_dim,
        depths=depths,
        num_heads=num_heads,
        window_size=window_size,
        mlp_ratio=mlp_ratio,
        drop_path_rate=drop_path_rate,
        frozen_stages=frozen_stages,
        merge_order=merge_order,
    )
