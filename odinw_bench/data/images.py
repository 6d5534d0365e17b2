"""Loading dataset images as RGB, with a clear error for unreadable files.

Example:
    >>> image = load_rgb(split.images[0].path, expected_size=(split.images[0].width, split.images[0].height))

Evaluation calls :func:`load_rgb` and lets :class:`CorruptImageError` propagate: dropping a test image would change
AP. Training may use :class:`CorruptImageCounter`, which skips such images and counts them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from odinw_bench.errors import UserError

logger = logging.getLogger(__name__)

# Modes holding more than 8 bits per sample; PIL's convert("RGB") would clip them to 255 instead of rescaling.
_WIDE_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N", "F")


class CorruptImageError(UserError):
    """An image file that is missing or cannot be decoded."""


def load_rgb(path: str | Path, *, expected_size: tuple[int, int] | None = None):
    """Load an image as 8-bit RGB with its EXIF orientation applied.

    Grayscale, palette, RGBA (alpha dropped, as GLIP's ``convert('RGB')`` does), CMYK and 16-bit images are
    converted to RGB; 16-bit values are scaled to 8 bits rather than clipped.

    Args:
        path: The image file.
        expected_size: ``(width, height)`` from the annotation file. When the EXIF-rotated size does not match but
            the stored pixel size does, the annotations were made on the stored pixels (GLIP never applies EXIF
            orientation), so the orientation tag is ignored for this image.

    Returns:
        A ``PIL.Image.Image`` in mode ``"RGB"``, size ``(width, height)`` as displayed.

    Raises:
        CorruptImageError: If the file is missing or cannot be decoded; the message names the file.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as raw:
            raw.load()  # decode now, so truncated files fail here and not later in a worker
            image = ImageOps.exif_transpose(raw)
            if expected_size is not None and image.size != tuple(expected_size) and raw.size == tuple(expected_size):
                logger.debug("%s: EXIF orientation ignored, the annotations use the stored size", path)
                image = raw.copy()
    except FileNotFoundError:
        raise CorruptImageError("image file not found", path=path) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        # PIL reports truncated or garbled data as OSError, SyntaxError or ValueError depending on the codec.
        raise CorruptImageError(f"cannot decode the image ({err})", path=path) from None
    if expected_size is not None and image.size != tuple(expected_size):
        logger.warning("%s: image size %s differs from the annotation file's %s", path, image.size, expected_size)
    return _to_rgb(image)


def _to_rgb(image):
    """Convert any PIL mode to 8-bit RGB."""
    from PIL import Image

    if image.mode in _WIDE_MODES:
        import numpy as np

        values = np.asarray(image, dtype=np.float64)
        # 16-bit data: v / 257 maps 0..65535 onto 0..255. Mode "I"/"F" may hold either range, so look at the data.
        is_16bit = image.mode.startswith("I;16") or values.max(initial=0) > 255
        scale = 257.0 if is_16bit else 1.0
        gray = np.clip(np.rint(values / scale), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if image.mode != "RGB":
        return image.convert("RGB")
    return image


@dataclass
class CorruptImageCounter:
    """Loads training images, skipping and counting unreadable ones instead of failing the run.

    Each skip is also logged as a warning, which stays visible when the counter lives in a DataLoader worker
    process (whose counts are not sent back to the main process).

    Attributes:
        n_skipped: Number of images skipped so far.
        skipped: Paths of the skipped images (the first ``max_listed``).
        max_listed: How many paths to remember.
    """

    n_skipped: int = 0
    skipped: list[str] = field(default_factory=list)
    max_listed: int = 100

    def load(self, path: str | Path, *, expected_size: tuple[int, int] | None = None):
        """:func:`load_rgb`, or ``None`` (counted and logged) when the image cannot be read."""
        try:
            return load_rgb(path, expected_size=expected_size)
        except CorruptImageError as err:
            self.n_skipped += 1
            if len(self.skipped) < self.max_listed:
                self.skipped.append(str(path))
            logger.warning("skipping training image: %s", err)
            return None
