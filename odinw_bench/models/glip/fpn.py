"""GLIP's feature pyramid (``backbone.fpn.*``): P3..P5 top-down from C3..C5, P6/P7 on top, DropBlock.

Key names follow the official module: ``fpn_inner2/3/4`` (1x1 lateral convs), ``fpn_layer2/3/4`` (3x3 output
convs) and ``top_blocks.p6`` / ``top_blocks.p7``. There is no norm and no activation (``USE_GN`` and
``USE_RELU`` are off in every GLIP config).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)


class DropBlock2D(nn.Module):
    """DropBlock with GLIP's semantics: one spatial mask per image, shared by all channels.

    Block centres are sampled with probability ``drop_prob / block_size**2``, grown to ``block_size`` squares
    by max pooling, and the kept activations are rescaled by (mask elements / kept elements) of the whole batch.
    Identity in eval mode or when ``drop_prob`` is 0.

    Args:
        drop_prob: Probability p used to derive the centre rate.
        block_size: Side of the dropped squares.
    """

    def __init__(self, drop_prob: float, block_size: int):
        super().__init__()
        self.drop_prob = drop_prob
        self.block_size = block_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Drop blocks.

        Args:
            x: (B, C, H, W).

        Returns:
            (B, C, H, W).
        """
        if not self.training or self.drop_prob == 0.0:
            return x
        gamma = self.drop_prob / self.block_size**2
        centres = (torch.rand((x.shape[0], 1, *x.shape[2:]), device=x.device) < gamma).to(x.dtype)
        dropped = F.max_pool2d(centres, self.block_size, stride=1, padding=self.block_size // 2)
        if self.block_size % 2 == 0:
            dropped = dropped[:, :, :-1, :-1]  # even kernels grow the map by one row and column
        keep = 1.0 - dropped
        # The official rescaling divides by the kept count; guard the (astronomically rare) all-dropped batch.
        return x * keep * (keep.numel() / keep.sum().clamp(min=1.0))

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}, block_size={self.block_size}"


class LastLevelP6P7(nn.Module):
    """P6 = conv3x3/s2 on P5 (on C5 if its width differs), P7 = conv3x3/s2 on ReLU(P6).

    Args:
        in_channels: Channels of the P6 input; equal to ``out_channels`` means P5 is used, as in GLIP.
        out_channels: Channels of P6 and P7.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.p6 = nn.Conv2d(in_channels, out_channels, 3, 2, 1)
        self.p7 = nn.Conv2d(out_channels, out_channels, 3, 2, 1)
        for conv in (self.p6, self.p7):
            _kaiming_uniform(conv)
        self.use_p5 = in_channels == out_channels

    def forward(self, c5: torch.Tensor, p5: torch.Tensor) -> list[torch.Tensor]:
        """Return [P6, P7], each (B, out_channels, ceil(H/2), ceil(W/2)) of its input."""
        p6 = self.p6(p5 if self.use_p5 else c5)
        return [p6, self.p7(F.relu(p6))]


class FPN(nn.Module):
    """Top-down pyramid over (C3, C4, C5) with nearest upsampling, plus P6/P7.

    Args:
        in_channels: Channels of (C3, C4, C5).
        out_channels: Channels of every pyramid level.
        drop_block_prob: DropBlock probability applied (training only) to the merged map before the output
            conv of every level except the coarsest (P4 and P3 for three inputs), as in GLIP.
        drop_block_size: DropBlock square size.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int, drop_block_prob: float = 0.0,
                 drop_block_size: int = 3):
        super().__init__()
        self.num_inputs = len(in_channels)
        # Official names count from the unused C2 slot: C3 -> 2, C4 -> 3, C5 -> 4.
        for index, channels in enumerate(in_channels, start=2):
            inner = nn.Conv2d(channels, out_channels, 1)
            layer = nn.Conv2d(out_channels, out_channels, 3, padding=1)
            for conv in (inner, layer):
                _kaiming_uniform(conv)
            self.add_module(f"fpn_inner{index}", inner)
            self.add_module(f"fpn_layer{index}", layer)
        self.top_blocks = LastLevelP6P7(out_channels, out_channels)
        self.drop_block = DropBlock2D(drop_block_prob, drop_block_size)

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Build the pyramid.

        Args:
            features: [c3, c4, c5], (B, C_i, H_i, W_i) with H_i halving per level.

        Returns:
            [p3, p4, p5, p6, p7], each (B, out_channels, H_l, W_l); P3..P5 keep the input sizes.
        """
        if len(features) != self.num_inputs:
            raise ValueError(f"FPN expects {self.num_inputs} feature maps, got {len(features)}")
        top = self.num_inputs + 1
        last = getattr(self, f"fpn_inner{top}")(features[-1])
        results = [getattr(self, f"fpn_layer{top}")(last)]
        for index in range(top - 1, 1, -1):
            lateral = getattr(self, f"fpn_inner{index}")(features[index - 2])
            if lateral.shape[-2:] != last.shape[-2:]:
                last = F.interpolate(last, size=lateral.shape[-2:], mode="nearest")
            last = lateral + last
            results.insert(0, getattr(self, f"fpn_layer{index}")(self.drop_block(last)))
        return results + self.top_blocks(features[-1], results[-1])


def _kaiming_uniform(conv: nn.Conv2d) -> None:
    # GLIP's conv_with_kaiming_uniform / LastLevelP6P7 init; checkpoints overwrite it.
    nn.init.kaiming_uniform_(conv.weight, a=1)
    nn.init.zeros_(conv.bias)
