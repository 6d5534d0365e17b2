"""ATSS anchors of GLIP: one square anchor per feature-map location and FPN level.

GLIP builds its anchors with the Detectron rule, in the legacy "+1" pixel convention: the cell anchor of a level
with stride ``st`` and size ``s`` is centred on the first ``st x st`` pixel block, ``c = (st - 1) / 2``, and spans
``[c - (s - 1) / 2, c + (s - 1) / 2]`` on both axes (P3: stride 8, size 64 -> ``[-28, -28, 35, 35]``). The cell
anchor is shifted by ``(x * st, y * st)`` over the feature grid of the *padded* batch, row-major (y outer), which is
also how the head flattens its per-location outputs. All images of a batch therefore share one set of anchors.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

logger = logging.getLogger(__name__)

DEFAULT_ANCHOR_SIZES = (64, 128, 256, 512, 1024)
DEFAULT_ANCHOR_STRIDES = (8, 16, 32, 64, 128)
# Grid sizes whose anchors are kept: GLIP's 5 training sizes x a few aspect ratios, and the test sizes.
MAX_CACHED_GRIDS = 32


def cell_anchor(size: float, stride: int) -> torch.Tensor:
    """The square cell anchor of one level, Detectron "+1" convention.

    Args:
        size: Anchor side in pixels (GLIP: 8 x stride).
        stride: Feature-map stride of the level.

    Returns:
        (1, 4) float32 xyxy anchor centred on the first stride x stride block.
    """
    # Detectron enumerates aspect ratios on a [0, 0, st-1, st-1] base window: for ratio 1 the rounded width is the
    # stride itself and the scale is size / stride, so the anchor width is exactly `size`. Computed in float64 as
    # the official numpy code does, then stored as float32.
    centre = (stride - 1) / 2.0
    half = (float(size) - 1) / 2.0
    box = [centre - half, centre - half, centre + half, centre + half]
    return torch.tensor([box], dtype=torch.float64).float()


class AnchorGenerator(nn.Module):
    """One anchor per location on each FPN level (GLIP's ``make_anchor_generator_complex`` with ratio 1).

    The cell anchors are buffers named ``cell_anchors.{level}`` of shape (1, 4), so that an official state dict
    (``rpn.anchor_generator.cell_anchors.0`` ...) loads strictly.

    Args:
        sizes: Anchor size per level (P3..P7).
        strides: Stride per level (P3..P7).
    """

    def __init__(
        self,
        sizes: Sequence[float] = DEFAULT_ANCHOR_SIZES,
        strides: Sequence[int] = DEFAULT_ANCHOR_STRIDES,
    ):
        super().__init__()
        if len(sizes) != len(strides):
            raise ValueError(f"need one anchor size per stride, got sizes={sizes} strides={strides}")
        self.strides = tuple(int(s) for s in strides)
        self.cell_anchors = nn.Module()
        for level, (size, stride) in enumerate(zip(sizes, self.strides)):
            self.cell_anchors.register_buffer(str(level), cell_anchor(size, stride))
        # Anchors depend only on the grid sizes and the cell anchors: a run's evaluation (one input size per
        # image shape) and its training sizes reuse them. Keyed also by the buffers' version, so loaded or
        # changed cell anchors are never served stale; callers only read them.
        self._grids: OrderedDict[tuple, list[torch.Tensor]] = OrderedDict()

    @property
    def num_levels(self) -> int:
        return len(self.strides)

    def level_cell_anchor(self, level: int) -> torch.Tensor:
        """The (1, 4) cell anchor buffer of ``level``."""
        return getattr(self.cell_anchors, str(level))

    def forward(self, feature_shapes: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
        """Anchors over the padded feature grids.

        Args:
            feature_shapes: (H_l, W_l) of each level's feature map, P3 first (e.g. ``f.shape[-2:]``).

        Returns:
            One (H_l * W_l, 4) float32 xyxy tensor per level, row-major over (y, x), on the buffers' device.
        """
        if len(feature_shapes) != self.num_levels:
            raise ValueError(f"expected {self.num_levels} feature maps, got {len(feature_shapes)}")
        cells = [self.level_cell_anchor(level) for level in range(self.num_levels)]
        key = (tuple((int(h), int(w)) for h, w in feature_shapes),
               tuple((c.device, c.data_ptr(), c._version) for c in cells))
        if key in self._grids:
            self._grids.move_to_end(key)
            return list(self._grids[key])
        # Normal tensors even when the first call comes from inference mode: a training step reads them too.
        with torch.inference_mode(False):
            anchors = self._make(feature_shapes)
        self._grids[key] = anchors
        if len(self._grids) > MAX_CACHED_GRIDS:
            self._grids.popitem(last=False)
        return list(anchors)

    def _make(self, feature_shapes: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
        """The anchors of :meth:`forward`, computed."""
        anchors = []
        for level, ((height, width), stride) in enumerate(zip(feature_shapes, self.strides)):
            base = self.level_cell_anchor(level)
            shift_x = torch.arange(int(width), dtype=torch.float32, device=base.device) * stride
            shift_y = torch.arange(int(height), dtype=torch.float32, device=base.device) * stride
            grid_y, grid_x = torch.meshgrid(shift_y, shift_x, indexing="ij")
            shifts = torch.stack((grid_x, grid_y, grid_x, grid_y), dim=-1).reshape(-1, 4)
            anchors.append(shifts + base.to(torch.float32))
        return anchors
