"""The evaluation images of a split, decoded once: every epoch's validation reads the same files.

A fine-tuning run evaluates its val split after every epoch (GLIP: up to 200 times). :class:`EvalImages` keeps the
decoded images of the split up to a memory bound, so only the first pass reads and decodes the files. With worker
processes each (persistent) worker keeps its own. The images are shared, never changed: GLIP's test transform
makes a resized copy.

Example::

    loader = DataLoader(EvalImages(split.images), batch_size=1, collate_fn=...)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from torch.utils.data import Dataset

from odinw_bench.data.images import load_rgb

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

    from odinw_bench.data.coco import CocoImage

#: Decoded bytes kept per dataset (and per worker): about 300 images of 1333x800, more than a few-shot val split.
DEFAULT_MAX_BYTES = 1 << 30


class EvalImages(Dataset):
    """Evaluation images in id order; items are ``(PIL image, image id)``. A corrupt image raises, naming it.

    Args:
        images: The split's images.
        max_bytes: Decoded RGB bytes kept for later passes; images beyond it are decoded at every pass.

    Attributes:
        decoded: How many times a file was read and decoded (the rest came from memory).
    """

    def __init__(self, images: Sequence[CocoImage], max_bytes: int = DEFAULT_MAX_BYTES):
        self.images = list(images)
        self.max_bytes = max_bytes
        self.decoded = 0
        self._kept: dict[int, Image.Image] = {}
        self._bytes = 0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple:
        image = self.images[index]
        rgb = self._kept.get(index)
        if rgb is None:
            rgb = load_rgb(image.path, expected_size=(image.width, image.height))
            self.decoded += 1
            size = rgb.width * rgb.height * len(rgb.getbands())
            if self._bytes + size <= self.max_bytes:
                self._kept[index] = rgb
                self._bytes += size
        return rgb, image.id
