"""GLIP's image preprocessing: resize rule, BGR x255 normalisation, zero-padded batching, train flips.

Every step reproduces the official ``data/transforms`` arithmetic so the model sees bit-identical inputs:

- the short side becomes ``min_size`` and the long side ``int(min_size * long / short)`` (truncation), unless that
  exceeds ``max_size``, in which case ``min_size`` is first lowered to ``int(round(max_size * short / long))``;
- the resize is torchvision's functional resize on the PIL image (PIL bilinear, antialiased);
- ToTensor (/255), channels reversed to BGR, x255, then ``(x - mean) / std`` (the BGR mean/std of GLIP's
  pretrain configs, not maskrcnn_benchmark's defaults);
- batches are padded with 0 (the mean colour after normalisation) at the bottom/right to a multiple of 32.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from PIL import Image

logger = logging.getLogger(__name__)

PIXEL_MEAN_BGR = (103.530, 116.280, 123.675)
PIXEL_STD_BGR = (57.375, 57.120, 58.395)
TRAIN_MIN_SIZES = (480, 560, 640, 720, 800)
# Pixel-index box convention of maskrcnn_benchmark (x2 is the last covered pixel): flips subtract 1.
FLIP_TO_REMOVE = 1


def resize_size(width: int, height: int, min_size: int, max_size: int | None) -> tuple[int, int]:
    """GLIP's ``Resize.get_size`` for one chosen short side.

    Args:
        width: Original width.
        height: Original height.
        min_size: Target short side.
        max_size: Cap on the long side (None for no cap).

    Returns:
        (new_width, new_height). Example: 451x300 at min 288 -> (432, 288); 640x427 -> (431, 288).
    """
    size = min_size
    if max_size is not None:
        short, long = float(min(width, height)), float(max(width, height))
        if long / short * size > max_size:
            size = int(round(max_size * short / long))
    if (width <= height and width == size) or (height <= width and height == size):
        return width, height
    if width < height:
        return size, int(size * height / width)
    return int(size * width / height), size


def resize_image(image: Image.Image, min_size: int, max_size: int | None) -> Image.Image:
    """Resize a PIL image with GLIP's rule (PIL bilinear through torchvision, antialiased).

    Args:
        image: PIL image (converted to RGB if it is not).
        min_size: Target short side.
        max_size: Cap on the long side.

    Returns:
        The resized RGB PIL image.
    """
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    if image.mode != "RGB":
        # The official datasets open every image with .convert("RGB") (grayscale/RGBA files exist in ODinW).
        image = image.convert("RGB")
    new_w, new_h = resize_size(image.width, image.height, min_size, max_size)
    return TF.resize(image, [new_h, new_w], interpolation=InterpolationMode.BILINEAR, antialias=True)


def to_normalized_tensor(image: Image.Image) -> torch.Tensor:
    """ToTensor -> BGR -> x255 -> normalise, in the official order of operations.

    Args:
        image: RGB PIL image of size (w, h).

    Returns:
        Float32 tensor (3, h, w), BGR channel order.
    """
    from torchvision.transforms import functional as TF

    # /255 then x255 is not an exact round trip in float32; keeping the same steps keeps bit parity.
    tensor = TF.to_tensor(image)[[2, 1, 0]] * 255
    return TF.normalize(tensor, mean=list(PIXEL_MEAN_BGR), std=list(PIXEL_STD_BGR))


def glip_test_transform(image: Image.Image, min_size: int = 800,
                        max_size: int | None = 1333) -> tuple[torch.Tensor, tuple[int, int]]:
    """Test-time transform: resize, then normalise.

    Args:
        image: PIL image.
        min_size: ``INPUT.MIN_SIZE_TEST``.
        max_size: ``INPUT.MAX_SIZE_TEST``.

    Returns:
        (tensor (3, h, w), (h, w)) for the resized image.
    """
    resized = resize_image(image, min_size, max_size)
    return to_normalized_tensor(resized), (resized.height, resized.width)


def resize_boxes(boxes: torch.Tensor, old_size_wh: tuple[int, int], new_size_wh: tuple[int, int]) -> torch.Tensor:
    """Scale xyxy boxes by the per-axis size ratio (``BoxList.resize``: a plain ratio, no +1 correction).

    Args:
        boxes: (N, 4) xyxy in pixels of the old image.
        old_size_wh: (w, h) of the old image.
        new_size_wh: (w, h) of the new image.

    Returns:
        (N, 4) float boxes in pixels of the new image.
    """
    ratio_w = float(new_size_wh[0]) / float(old_size_wh[0])
    ratio_h = float(new_size_wh[1]) / float(old_size_wh[1])
    scale = boxes.new_tensor([ratio_w, ratio_h, ratio_w, ratio_h])
    return boxes * scale


def hflip_boxes(boxes: torch.Tensor, width: int) -> torch.Tensor:
    """Mirror xyxy boxes horizontally with GLIP's pixel-index rule (``BoxList.transpose``).

    x1' = w - x2 - 1 and x2' = w - x1 - 1; y is unchanged.

    Args:
        boxes: (N, 4) xyxy.
        width: Image width w.

    Returns:
        (N, 4) flipped boxes.
    """
    import torch

    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack((width - x2 - FLIP_TO_REMOVE, y1, width - x1 - FLIP_TO_REMOVE, y2), dim=-1)


def glip_train_transform(image: Image.Image, boxes: torch.Tensor, min_sizes: Sequence[int] = TRAIN_MIN_SIZES,
                         max_size: int | None = 1333, flip_prob: float = 0.5,
                         rng: random.Random | None = None) -> tuple[torch.Tensor, tuple[int, int], torch.Tensor]:
    """Training transform: random short side from ``min_sizes``, horizontal flip, normalise.

    Args:
        image: PIL image.
        boxes: (N, 4) xyxy boxes in pixels of ``image``.
        min_sizes: Candidate short sides (``AUGMENT.MULT_MIN_SIZE_TRAIN``), one drawn per call.
        max_size: ``INPUT.MAX_SIZE_TRAIN``.
        flip_prob: Probability of a horizontal flip (``AUGMENT.FLIP_PROB_TRAIN``).
        rng: Source of randomness (the ``random`` module's global generator if None, as GLIP).

    Returns:
        (tensor (3, h, w), (h, w), boxes (N, 4) in pixels of the transformed image).
    """
    from torchvision.transforms import functional as TF

    rng = rng if rng is not None else random
    old_size = image.size
    resized = resize_image(image, rng.choice(list(min_sizes)), max_size)
    boxes = resize_boxes(boxes, old_size, resized.size)
    if rng.random() < flip_prob:
        resized = TF.hflip(resized)
        boxes = hflip_boxes(boxes, resized.width)
    return to_normalized_tensor(resized), (resized.height, resized.width), boxes


def batch_images(images: Sequence[torch.Tensor],
                 size_divisible: int = 32) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Zero-pad images at the bottom/right into one batch (``to_image_list``).

    Args:
        images: (3, h_i, w_i) tensors.
        size_divisible: The padded height and width are the batch maxima rounded up to a multiple of this
            (0 for no rounding).

    Returns:
        (batch (B, 3, Hp, Wp), [(h_i, w_i)] unpadded sizes).
    """
    if not images:
        raise ValueError("batch_images needs at least one image")
    channels = max(img.shape[0] for img in images)
    height = max(img.shape[1] for img in images)
    width = max(img.shape[2] for img in images)
    if size_divisible > 0:
        height = int(math.ceil(height / size_divisible) * size_divisible)
        width = int(math.ceil(width / size_divisible) * size_divisible)
    batch = images[0].new_zeros((len(images), channels, height, width))
    for img, slot in zip(images, batch):
        slot[: img.shape[0], : img.shape[1], : img.shape[2]].copy_(img)
    return batch, [(int(img.shape[1]), int(img.shape[2])) for img in images]
