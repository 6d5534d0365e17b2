"""Swin Transformer v1 backbone as GLIP uses it (``SWINT-FPN-RETINANET``), in pure PyTorch.

Parameter and buffer names follow the official ``backbone.body.*`` keys (``patch_embed.proj``,
``layers.{i}.blocks.{j}.attn.qkv``, ``layers.{i}.blocks.{j}.attn.relative_position_index``,
``layers.{i}.downsample.reduction``, ``norm1``..``norm3``) so an official checkpoint loads after a prefix strip.

Numerical behaviour that matters for parity with the official code:

- padding to a multiple of the window happens *after* ``norm1``, so padded tokens are exact zeros and are
  attended to (they are never masked in unshifted windows);
- the shifted-window mask (-100 between regions) is built on the padded size;
- patch merging concatenates (even row, even col), (odd row, even col), (even row, odd col), (odd row, odd col);
- stage outputs are taken *before* merging and pass through ``norm{i}``; ``norm0`` is an Identity (no keys).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn
from torchvision.ops import StochasticDepth

logger = logging.getLogger(__name__)

# Added to attention logits between tokens of different shifted-window regions (official constant).
SHIFT_MASK_VALUE = -100.0


def relative_position_index(window_size: int) -> torch.Tensor:
    """Index into the relative-position bias table for every pair of tokens of a window.

    Args:
        window_size: Side W of the square window.

    Returns:
        Long tensor (W*W, W*W) with values in [0, (2W-1)^2).
    """
    coords = torch.stack(torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij"))
    coords = coords.flatten(1)  # (2, N): row then column of each token, row-major
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window_size - 1)  # (N, N, 2), >= 0
    return rel[..., 0] * (2 * window_size - 1) + rel[..., 1]


def window_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """Split a padded map into non-overlapping windows.

    Args:
        x: (B, Hp, Wp, C) with Hp, Wp multiples of ``window_size``.
        window_size: Side W of the window.

    Returns:
        (B * nW, W*W, C), windows ordered row-major within each image.
    """
    b, hp, wp, c = x.shape
    x = x.view(b, hp // window_size, window_size, wp // window_size, window_size, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size * window_size, c)


def window_merge(windows: torch.Tensor, window_size: int, hp: int, wp: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`.

    Args:
        windows: (B * nW, W*W, C).
        window_size: Side W of the window.
        hp: Padded height.
        wp: Padded width.

    Returns:
        (B, Hp, Wp, C).
    """
    c = windows.shape[-1]
    x = windows.view(-1, hp // window_size, wp // window_size, window_size, window_size, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, hp, wp, c)


def shifted_window_mask(hp: int, wp: int, window_size: int, shift: int, device=None) -> torch.Tensor:
    """Additive attention mask that keeps cyclically shifted regions from attending to each other.

    The regions are the three slices [0, -W), [-W, -s), [-s, end) per axis of the *padded* map, which is
    what the official code does (so padding and image content can share a region).

    Args:
        hp: Padded height (multiple of ``window_size``).
        wp: Padded width (multiple of ``window_size``).
        window_size: Side W of the window.
        shift: Shift s (W // 2).
        device: Device of the mask.

    Returns:
        Float tensor (nW, W*W, W*W) with 0 within a region and -100 across regions.
    """
    region = torch.zeros((1, hp, wp, 1), device=device)
    bounds = (slice(0, -window_size), slice(-window_size, -shift), slice(-shift, None))
    label = 0
    for rows in bounds:
        for cols in bounds:
            region[:, rows, cols, :] = label
            label += 1
    region_windows = window_partition(region, window_size).squeeze(-1)  # (nW, N)
    differs = region_windows.unsqueeze(1) != region_windows.unsqueeze(2)
    return torch.zeros(differs.shape, device=device).masked_fill(differs, SHIFT_MASK_VALUE)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows, with a learned relative-position bias.

    Args:
        dim: Channels C.
        window_size: Side W of the window.
        num_heads: Number of heads (C must be divisible by it).
    """

    def __init__(self, dim: int, window_size: int, num_heads: int):
        super().__init__()
        self.window_size = window_size
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        # Persistent: the official state dict carries it, so strict loading expects it.
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def position_bias(self) -> torch.Tensor:
        """Relative-position bias, (heads, W*W, W*W)."""
        n = self.window_size * self.window_size
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(n, n, self.num_heads).permute(2, 0, 1)

    def forward(self, windows: torch.Tensor, shift_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attend within each window.

        Args:
            windows: (B * nW, N, C) tokens, N = W*W, windows of one image contiguous.
            shift_mask: (nW, N, N) additive region mask for shifted blocks, or None.

        Returns:
            (B * nW, N, C).
        """
        bw, n, c = windows.shape
        qkv = self.qkv(windows).view(bw, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B*nW, heads, N, d)
        bias = self.position_bias().unsqueeze(0)  # (1, heads, N, N)
        if shift_mask is not None:
            num_windows = shift_mask.shape[0]
            # Window b*nW + w uses mask w: tile the per-window masks over the batch.
            bias = (bias + shift_mask.unsqueeze(1)).repeat(bw // num_windows, 1, 1, 1)
        # softmax(q k^T * scale + bias + mask) v: the official arithmetic, as one fused call.
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(bw, n, c))


class Mlp(nn.Module):
    """Linear -> exact GELU -> Linear (keys ``fc1``, ``fc2``)."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwinBlock(nn.Module):
    """One (shifted-)window transformer block with pre-norm residuals and stochastic depth.

    Args:
        dim: Channels C.
        num_heads: Attention heads.
        window_size: Side W of the window.
        shift_size: 0 for regular windows, W // 2 for shifted ones.
        mlp_ratio: Hidden width of the MLP relative to C.
        drop_path: Stochastic-depth probability (training only).
    """

    def __init__(self, dim: int, num_heads: int, window_size: int, shift_size: int, mlp_ratio: float,
                 drop_path: float):
        super().__init__()
        self.window_size = window_size
        self.shift_size = shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads)
        self.drop_path = StochasticDepth(drop_path, mode="row")
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, shift_mask: torch.Tensor) -> torch.Tensor:
        """Apply the block.

        Args:
            x: (B, H, W, C).
            shift_mask: (nW, N, N) mask for the padded size of this stage (used only if shifted).

        Returns:
            (B, H, W, C).
        """
        b, h, w, c = x.shape
        ws = self.window_size
        # Pad after the norm so padded tokens are exactly zero, as in the official block.
        y = F.pad(self.norm1(x), (0, 0, 0, (ws - w % ws) % ws, 0, (ws - h % ws) % ws))
        hp, wp = y.shape[1:3]
        if self.shift_size > 0:
            y = torch.roll(y, shifts=(-self.shift_size, -self.shift_size), dims=(1, 2))
        y = self.attn(window_partition(y, ws), shift_mask if self.shift_size > 0 else None)
        y = window_merge(y, ws, hp, wp)
        if self.shift_size > 0:
            y = torch.roll(y, shifts=(self.shift_size, self.shift_size), dims=(1, 2))
        x = x + self.drop_path(y[:, :h, :w, :])
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2x2 space-to-depth, LayerNorm(4C) and a bias-free Linear(4C -> 2C).

    Args:
        dim: Input channels C.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Halve the resolution.

        Args:
            x: (B, H, W, C).

        Returns:
            (B, ceil(H/2), ceil(W/2), 2C); odd sizes are zero-padded at the bottom/right first.
        """
        h, w = x.shape[1:3]
        x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        # Official concatenation order: (even row, even col), (odd row, even col), (even, odd), (odd, odd).
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


class SwinStage(nn.Module):
    """A stage of blocks (alternating regular/shifted windows) followed by optional patch merging."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, mlp_ratio: float,
                 drop_paths: Sequence[float], downsample: bool, use_checkpoint: bool = False):
        super().__init__()
        self.window_size = window_size
        self.use_checkpoint = use_checkpoint
        self.blocks = nn.ModuleList(
            SwinBlock(dim, num_heads, window_size, 0 if j % 2 == 0 else window_size // 2, mlp_ratio, drop_paths[j])
            for j in range(depth)
        )
        # None (not Identity) for the last stage: the official model has no keys there.
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the blocks.

        Args:
            x: (B, H, W, C).

        Returns:
            (stage output (B, H, W, C), input of the next stage (B, ceil(H/2), ceil(W/2), 2C) or the output).
        """
        ws = self.window_size
        hp, wp = -(-x.shape[1] // ws) * ws, -(-x.shape[2] // ws) * ws
        shift_mask = shifted_window_mask(hp, wp, ws, ws // 2, device=x.device)
        for block in self.blocks:
            if self.use_checkpoint and self.training and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(block, x, shift_mask, use_reentrant=False)
            else:
                x = block(x, shift_mask)
        return x, (self.downsample(x) if self.downsample is not None else x)


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection (Conv2d k=s=patch) and LayerNorm over channels."""

    def __init__(self, patch_size: int, embed_dim: int, in_chans: int = 3):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed patches.

        Args:
            x: (B, 3, H, W); zero-padded at the bottom/right to a multiple of the patch size.

        Returns:
            (B, ceil(H/p), ceil(W/p), embed_dim), channels last.
        """
        p = self.patch_size
        x = F.pad(x, (0, (p - x.shape[-1] % p) % p, 0, (p - x.shape[-2] % p) % p))
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class SwinTransformer(nn.Module):
    """Swin Transformer v1 (no absolute position embedding) returning C2..C5.

    Swin-T: ``SwinTransformer(96, (2, 2, 6, 2), (3, 6, 12, 24), 7, drop_path_rate=0.2)``;
    Swin-L: ``SwinTransformer(192, (2, 2, 18, 2), (6, 12, 24, 48), 12, drop_path_rate=0.4)``.

    Args:
        embed_dim: Channels C of the first stage (stages have C, 2C, 4C, 8C).
        depths: Blocks per stage.
        num_heads: Attention heads per stage.
        window_size: Window side.
        mlp_ratio: MLP hidden width relative to the channels.
        drop_path_rate: Largest stochastic-depth probability; block k of n gets rate * k / (n - 1).
        patch_size: Patch side of the stem.
        out_norm: Whether stage i's output gets a LayerNorm ``norm{i}``; GLIP's RETINANET arch has none for
            stage 0 (an Identity, so no ``norm0`` keys).
        frozen_stages: As GLIP's ``FREEZE_CONV_BODY_AT``: >= 0 freezes the stem, >= 2 also stages
            0..frozen_stages-2; frozen parts get ``requires_grad=False`` and stay in eval mode (so no drop path).
            -1 freezes nothing.
        use_checkpoint: Gradient checkpointing of every block of the trainable stages (training only).
    """

    def __init__(self, embed_dim: int, depths: Sequence[int], num_heads: Sequence[int], window_size: int,
                 mlp_ratio: float = 4.0, drop_path_rate: float = 0.0, patch_size: int = 4,
                 out_norm: Sequence[bool] = (False, True, True, True), frozen_stages: int = -1,
                 use_checkpoint: bool = False):
        super().__init__()
        if len(depths) != len(num_heads) or len(depths) != len(out_norm):
            raise ValueError(f"depths {depths}, num_heads {num_heads}, out_norm {out_norm} must have equal length")
        self.frozen_stages = frozen_stages
        self.out_channels = [embed_dim * 2**i for i in range(len(depths))]
        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.layers = nn.ModuleList()
        for i, depth in enumerate(depths):
            start = sum(depths[:i])
            self.layers.append(SwinStage(
                self.out_channels[i], depth, num_heads[i], window_size, mlp_ratio, rates[start:start + depth],
                downsample=i < len(depths) - 1, use_checkpoint=use_checkpoint and i > frozen_stages - 1,
            ))
        for i, channels in enumerate(self.out_channels):
            self.add_module(f"norm{i}", nn.LayerNorm(channels) if out_norm[i] else nn.Identity())
        self.apply(_init_linear_and_norm)
        self._freeze_stages()

    def _frozen_modules(self) -> list[nn.Module]:
        modules = [self.patch_embed] if self.frozen_stages >= 0 else []
        return modules + list(self.layers[: max(self.frozen_stages - 1, 0)])

    def _freeze_stages(self) -> None:
        for module in self._frozen_modules():
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True) -> SwinTransformer:
        """Set the mode, keeping frozen stages in eval mode (as the official backbone does)."""
        super().train(mode)
        self._freeze_stages()
        return self

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Compute the stage features.

        Args:
            x: (B, 3, H, W) normalised BGR images, padded.

        Returns:
            [c2, c3, c4, c5], each (B, C_i, H/2^(i+2), W/2^(i+2)) (ceil), NCHW contiguous.
        """
        x = self.patch_embed(x)
        outputs = []
        for i, stage in enumerate(self.layers):
            out, x = stage(x)
            outputs.append(getattr(self, f"norm{i}")(out).permute(0, 3, 1, 2).contiguous())
        return outputs


def _init_linear_and_norm(module: nn.Module) -> None:
    # Swin's initialisation; only matters for training from scratch, checkpoints overwrite it.
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
