"""The visual step of a VLDyHead tower block: GLIP's ``DyConv``.

For every pyramid level l the block mixes three modulated deformable 3×3 convolutions (level l itself,
level l−1 at stride 2, level l+1 upsampled), weights them with scale-aware attention and applies a dynamic
ReLU. Parameter names mirror ``rpn/vldyhead.DyConv`` in the official code (``DyConv.{0,1,2}.conv``,
``DyConv.{0,1,2}.bn``, ``AttnConv.1``, ``offset``, ``relu.fc.{0,2}``) so official checkpoints load unchanged.

The modulated deformable convolution's offset layout (tap k = 3i+j: channel 2k is dy, 2k+1 is dx, mask channel k)
and bilinear boundary rule are those of GLIP's CUDA kernel. It runs as gathers and a matmul
(:mod:`odinw_bench.models.glip.deform_sampling`, several times faster on CPU, forward and backward);
``torchvision.ops.deform_conv2d`` is the reference path (:func:`set_deform_implementation`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import deform_conv2d

from odinw_bench.models.glip.deform_sampling import deform_conv2d_sampled

logger = logging.getLogger(__name__)

#: Offset channels of a 3×3 modulated deformable conv: a (dy, dx) pair per kernel tap.
OFFSET_CHANNELS = 18
#: Modulation-mask channels: one per kernel tap.
MASK_CHANNELS = 9
#: Implementations of the modulated deformable convolution: the fast default first, the reference second.
DEFORM_IMPLEMENTATIONS = ("sampled", "torchvision")


class HSigmoid(nn.Module):
    """Hard sigmoid ``ReLU6(x + 3) · h_max / 6`` (GLIP's ``h_sigmoid``)."""

    def __init__(self, h_max: float = 1.0) -> None:
        super().__init__()
        self.h_max = h_max

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(x + 3) * self.h_max / 6


class ModulatedDeformConv3x3(nn.Module):
    """Modulated deformable 3×3 convolution (DCNv2) with padding 1 and bias.

    Holds ``weight`` (out, in, 3, 3) and ``bias`` (out,) like GLIP's ``ModulatedDeformConv``, whose init it
    also follows (uniform ±1/sqrt(in·9), zero bias). ``implementation`` picks the kernel (not a weight, not
    saved): ``"sampled"`` (gathers + matmul with autograd, one ``grid_sample`` + matmul without) or
    ``"torchvision"`` (the reference).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.stride = stride
        self.implementation = DEFORM_IMPLEMENTATIONS[0]
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, 3, 3))
        self.bias = nn.Parameter(torch.empty(out_channels))
        bound = 1.0 / math.sqrt(in_channels * 9)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Apply the convolution.

        Args:
            x: (B, C_in, H, W) input.
            offset: (B, 18, H_out, W_out) sampling offsets.
            mask: (B, 9, H_out, W_out) modulation in [0, 1].

        Returns:
            (B, C_out, H_out, W_out).
        """
        device_type = x.device.type
        if torch.is_autocast_enabled(device_type):
            # GLIP's op is decorated custom_fwd(cast_inputs=float32): under AMP it runs and returns float32.
            with torch.autocast(device_type=device_type, enabled=False):
                return self._conv(x.float(), offset.float(), mask.float())
        return self._conv(x, offset, mask)

    def _conv(self, x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weight = self.weight.to(x.dtype)
        bias = self.bias.to(x.dtype)
        if self.implementation == "torchvision":
            return deform_conv2d(x, offset, weight, bias, stride=self.stride, padding=1, mask=mask)
        # Without autograd one fused grid_sample is fastest; training keeps the gathers (their backward is faster),
        # so a fit computes exactly what it computed before evaluation got its own kernel.
        sampler = "gather" if torch.is_grad_enabled() else "grid"
        return deform_conv2d_sampled(x, offset.to(x.dtype), weight, bias, self.stride, mask.to(x.dtype),
                                     sampler=sampler)


def set_deform_implementation(model: nn.Module, implementation: str) -> int:
    """Switch every modulated deformable convolution in ``model`` to ``implementation``.

    Args:
        model: Any module (a GLIP model, a backend's ``model``).
        implementation: ``"sampled"`` (default, fast) or ``"torchvision"`` (the reference kernels).

    Returns:
        How many convolutions were switched.

    Raises:
        ValueError: For an unknown implementation.
    """
    if implementation not in DEFORM_IMPLEMENTATIONS:
        raise ValueError(f"deformable convolution implementation must be one of {DEFORM_IMPLEMENTATIONS}, "
                         f"not {implementation!r}")
    convs = [m for m in model.modules() if isinstance(m, ModulatedDeformConv3x3)]
    for conv in convs:
        conv.implementation = implementation
    return len(convs)


class Conv3x3Norm(nn.Module):
    """3×3 convolution (deformable or plain) followed by GroupNorm, GLIP's ``Conv3x3Norm``.

    Keys: ``conv.weight``, ``conv.bias``, ``bn.weight``, ``bn.bias`` (``bn`` is a GroupNorm, eps 1e-5).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        deformable: bool = True,
        gn_groups: int | None = 16,
    ) -> None:
        super().__init__()
        self.deformable = deformable
        if deformable:
            self.conv: nn.Module = ModulatedDeformConv3x3(in_channels, out_channels, stride)
        else:
            self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1)
        self.bn = nn.GroupNorm(gn_groups, out_channels) if gn_groups else None

    def forward(
        self, x: torch.Tensor, offset: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, C_in, H, W) → (B, C_out, H_out, W_out); offset/mask are required when deformable."""
        x = self.conv(x, offset, mask) if self.deformable else self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return x


class DYReLU(nn.Module):
    """Dynamic ReLU (GLIP's ``layers/dyrelu.DYReLU`` with K2, bias, λ = 2, init a = (1, 0), b = (0, 0)).

    ``y = h_sigmoid(fc2(relu(fc1(avgpool(x)))))`` is split into (a1, b1, a2, b2);
    ``out = max(x·a1' + b1', x·a2' + b2')`` with a1' = 2(a1 − ½) + 1, a2' = 2(a2 − ½), b' = b − ½.
    Keys: ``fc.0`` (C → C/reduction), ``fc.2`` (C/reduction → 4C).
    """

    def __init__(self, channels: int, reduction: int = 4, lambda_a: float = 1.0) -> None:
        super().__init__()
        self.channels = channels
        self.lambda_a = lambda_a * 2
        self.init_a = (1.0, 0.0)
        self.init_b = (0.0, 0.0)
        squeeze = channels // reduction
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            nn.Linear(channels, squeeze),
            nn.ReLU(inplace=True),
            nn.Linear(squeeze, channels * 4),
            HSigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) → (B, C, H, W). The pool covers the whole map, batch padding included."""
        b, c = x.shape[:2]
        y = self.fc(self.avg_pool(x).view(b, c)).view(b, 4 * c, 1, 1)
        a1, b1, a2, b2 = torch.split(y, self.channels, dim=1)
        a1 = (a1 - 0.5) * self.lambda_a + self.init_a[0]
        a2 = (a2 - 0.5) * self.lambda_a + self.init_a[1]
        b1 = b1 - 0.5 + self.init_b[0]
        b2 = b2 - 0.5 + self.init_b[1]
        return torch.max(x * a1 + b1, x * a2 + b2)


def reuse_offsets_for_smaller_output(
    offset: torch.Tensor, mask: torch.Tensor, out_size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read level-l offsets and mask the way GLIP's CUDA kernel does for a smaller level-(l+1) output.

    The kernel never checks shapes: for each image it addresses the contiguous (18, H_l, W_l) offset buffer
    as if it were (18, h, w), so it uses the first 18·h·w values in row-major order (likewise the first
    9·h·w mask values). This is a reinterpretation of memory, not a spatial crop.

    Args:
        offset: (B, 18, H_l, W_l) offsets computed on level l.
        mask: (B, 9, H_l, W_l) modulation computed on level l.
        out_size: (h, w) output size of the conv that reuses them, h·w ≤ H_l·W_l.

    Returns:
        offset (B, 18, h, w) and mask (B, 9, h, w).
    """
    h, w = out_size
    batch, _, big_h, big_w = offset.shape
    if h * w > big_h * big_w:
        raise ValueError(f"cannot reuse offsets of a {big_h}x{big_w} map for a larger {h}x{w} output")
    offset = offset.contiguous().flatten(1)[:, : OFFSET_CHANNELS * h * w].view(batch, OFFSET_CHANNELS, h, w)
    mask = mask.contiguous().flatten(1)[:, : MASK_CHANNELS * h * w].view(batch, MASK_CHANNELS, h, w)
    return offset, mask


class DyConv(nn.Module):
    """One DyHead visual block over a feature pyramid (GLIP's ``DyConv``).

    ``DyConv.0`` (stride 1) convolves level l+1 and is upsampled (bilinear, align_corners=True) to level l,
    ``DyConv.1`` (stride 1) convolves level l, ``DyConv.2`` (stride 2) convolves level l−1. All three use the
    offsets/mask computed by ``offset`` on level l (``DyConv.0`` through
    :func:`reuse_offsets_for_smaller_output`).

    Args:
        in_channels: channels of the incoming maps.
        out_channels: channels of the outgoing maps.
        use_dyfuse: scale-aware attention (``AttnConv`` + ``h_sigmoid``); otherwise a plain mean.
        use_dyrelu: dynamic ReLU (``relu`` = DYReLU); otherwise ``nn.ReLU``.
        use_deform: modulated deformable convs with an ``offset`` conv; otherwise plain 3×3 convs.
        gn_groups: GroupNorm groups of each branch (None: no norm).
    """

    produces = ("visual",)

    def __init__(
        self,
        in_channels: int = 256,
        out_channels: int = 256,
        use_dyfuse: bool = True,
        use_dyrelu: bool = True,
        use_deform: bool = True,
        gn_groups: int | None = 16,
    ) -> None:
        super().__init__()
        self.DyConv = nn.ModuleList(
            Conv3x3Norm(in_channels, out_channels, stride, deformable=use_deform, gn_groups=gn_groups)
            for stride in (1, 1, 2)
        )
        if use_dyfuse:
            self.AttnConv = nn.Sequential(
                nn.AdaptiveAvgPool2d(1), nn.Conv2d(out_channels, 1, kernel_size=1), nn.ReLU(inplace=True)
            )
            self.h_sigmoid = HSigmoid()
        else:
            self.AttnConv = None
        self.relu = DYReLU(out_channels) if use_dyrelu else nn.ReLU()
        # Default Conv2d init (not zero), as in GLIP.
        self.offset = (
            nn.Conv2d(in_channels, OFFSET_CHANNELS + MASK_CHANNELS, kernel_size=3, padding=1) if use_deform else None
        )
        self._init_weights()

    def _init_weights(self) -> None:
        # GLIP re-initialises only nn.Conv2d instances here: plain branch convs and the attention conv.
        # The deformable convs keep their own uniform init.
        modules = list(self.DyConv.modules()) + (list(self.AttnConv.modules()) if self.AttnConv is not None else [])
        for module in modules:
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.01)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, inputs: dict) -> dict:
        """Tower interface: ``{"visual": [(B,C,Hl,Wl)]*levels, "lang": dict}`` → same keys, new visual maps."""
        return {"visual": self.forward_levels(inputs["visual"]), "lang": inputs["lang"]}

    def forward_levels(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Apply the block to every level.

        Args:
            features: per-level maps (B, C_in, H_l, W_l), finest first; each level is half the previous one
                (rounded up).

        Returns:
            Per-level maps (B, C_out, H_l, W_l).
        """
        outputs = []
        for level, feature in enumerate(features):
            offset = mask = None
            if self.offset is not None:
                offset_mask = self.offset(feature)
                offset = offset_mask[:, :OFFSET_CHANNELS]
                mask = offset_mask[:, OFFSET_CHANNELS:].sigmoid()
            branches = [self.DyConv[1](feature, offset, mask)]
            if level > 0:
                branches.append(self.DyConv[2](features[level - 1], offset, mask))
            if level < len(features) - 1:
                branches.append(self._upper_level_branch(features[level + 1], offset, mask, feature.shape[-2:]))
            outputs.append(self._combine(branches))
        return [self.relu(x) for x in outputs]

    def _upper_level_branch(
        self,
        coarser: torch.Tensor,
        offset: torch.Tensor | None,
        mask: torch.Tensor | None,
        size: Sequence[int],
    ) -> torch.Tensor:
        """DyConv.0 on level l+1 with the level-l offsets (flat prefix), upsampled to the level-l size."""
        if offset is not None:
            offset, mask = reuse_offsets_for_smaller_output(offset, mask, tuple(coarser.shape[-2:]))
        out = self.DyConv[0](coarser, offset, mask)
        # F.upsample_bilinear in GLIP, i.e. align_corners=True.
        return F.interpolate(out, size=tuple(size), mode="bilinear", align_corners=True)

    def _combine(self, branches: list[torch.Tensor]) -> torch.Tensor:
        """Mean of the branches, each weighted by its scale-aware attention when enabled."""
        stacked = torch.stack(branches)
        if self.AttnConv is None:
            return stacked.mean(dim=0)
        attention = self.h_sigmoid(torch.stack([self.AttnConv(branch) for branch in branches]))
        return (stacked * attention).mean(dim=0)
