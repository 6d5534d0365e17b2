"""Synthetic scenes for grounding pre-training: a background, clutter, and several named objects.

:func:`render_scene` draws one image from a random generator: a flat, gradient, noise or striped background, a
few distractor shapes that belong to no category, then 2-6 objects of the vocabulary at varied scales, placed so
that each is at most partly hidden by the ones drawn after it. Each object gets a small per-instance style jitter
(:func:`instance_style`) so that no two instances are identical, within bounds that keep categories apart.
The pieces (:func:`draw_background`, :func:`draw_distractor`, :func:`place_box`) are public for the demo tasks
(:mod:`odinw_bench.data.demo_suite`), which compose their own scenes from them. Example::

    import numpy as np
    from odinw_bench.data.scenes import render_scene
    from odinw_bench.data.vocabulary import CATEGORIES

    scene = render_scene(np.random.default_rng(0), list(CATEGORIES.values()), (160, 128))
    scene.image.save("scene.png"); [(o.category.name, o.box) for o in scene.objects]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from odinw_bench.data.drawing import Style
from odinw_bench.data.vocabulary import Category, draw

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

BACKGROUNDS = ("flat", "gradient", "noise", "stripes")
#: Most of an object's box another object may cover (objects drawn later cover earlier ones).
MAX_OCCLUDED = 0.4
#: Per-instance jitter bounds: hue (degrees), saturation and brightness factors.
HUE_JITTER, SATURATION_JITTER, BRIGHTNESS_JITTER = 8.0, (0.85, 1.1), (0.85, 1.1)
_MIN_SIDE = 6  # px: the short side of a thin object (pencil) never goes below this
_PLACEMENT_TRIES = 25


@dataclass(frozen=True)
class SceneObject:
    """One drawn object.

    Attributes:
        category: What it is.
        box: ``(x, y, w, h)`` integer pixels; the object touches all four sides.
        style: The instance's style (jitter around the category's own look).
        order: Drawing order (0 first); a later object covers an earlier one where they overlap.
    """

    category: Category
    box: tuple[int, int, int, int]
    style: Style
    order: int


@dataclass(frozen=True)
class Scene:
    """A rendered image and its objects (in drawing order)."""

    image: Image.Image
    objects: tuple[SceneObject, ...]


def instance_style(rng: np.random.Generator) -> Style:
    """A random style within the per-instance jitter bounds (the category's look, slightly varied)."""
    return Style(
        hue_shift=float(rng.uniform(-HUE_JITTER, HUE_JITTER)),
        saturation=float(rng.uniform(*SATURATION_JITTER)),
        brightness=float(rng.uniform(*BRIGHTNESS_JITTER)),
        mirror=bool(rng.random() < 0.5),
    )


def render_scene(
    rng: np.random.Generator,
    categories: Sequence[Category],
    image_size: tuple[int, int],
    *,
    n_objects: tuple[int, int] = (2, 6),
    n_distractors: tuple[int, int] = (0, 5),
    size_range: tuple[float, float] = (0.12, 0.5),
) -> Scene:
    """Draw one scene.

    Args:
        rng: The scene's random generator (the same state gives the same pixels and objects).
        categories: Categories to draw from.
        image_size: ``(width, height)``.
        n_objects: Inclusive range of objects placed (fewer when the image has no room left).
        n_distractors: Inclusive range of clutter shapes.
        size_range: Range of an object's long side, as a fraction of the image's short side (log-uniform).

    Returns:
        The image and its objects.
    """
    from PIL import Image

    width, height = image_size
    canvas = Image.fromarray(draw_background(rng, width, height), "RGB")
    for _ in range(int(rng.integers(n_distractors[0], n_distractors[1] + 1))):
        draw_distractor(canvas, rng)
    objects: list[SceneObject] = []
    for _ in range(int(rng.integers(n_objects[0], n_objects[1] + 1))):
        if objects and rng.random() < 0.15:  # sometimes a second instance of a category already there
            category = objects[int(rng.integers(0, len(objects)))].category
        else:
            category = categories[int(rng.integers(0, len(categories)))]
        box = place_box(rng, category, image_size, [o.box for o in objects], size_range)
        if box is None:
            continue
        style = instance_style(rng)
        draw(category, canvas, box, style, rng)
        objects.append(SceneObject(category, box, style, len(objects)))
    return Scene(canvas, tuple(objects))


def draw_background(rng, width: int, height: int):
    """An ``(height, width, 3)`` uint8 background of a random kind of :data:`BACKGROUNDS`."""
    import numpy as np

    kind = BACKGROUNDS[int(rng.integers(0, len(BACKGROUNDS)))]
    first, second = rng.integers(30, 226, size=(2, 3)).astype(np.float32)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    if kind == "flat":
        pixels = np.broadcast_to(first, (height, width, 3))
    elif kind == "gradient":
        angle = rng.uniform(0, 2 * math.pi)
        t = xx * math.cos(angle) + yy * math.sin(angle)
        t = (t - t.min()) / max(1e-6, float(t.max() - t.min()))
        pixels = first + t[..., None] * (second - first)
    elif kind == "noise":
        pixels = first + rng.normal(0.0, rng.uniform(8, 30), size=(height, width, 1)).astype(np.float32)
    else:  # stripes at a random angle and period
        angle = rng.uniform(0, math.pi)
        period = rng.uniform(6, 24)
        phase = (xx * math.cos(angle) + yy * math.sin(angle)) / period
        pixels = np.where((phase % 1.0 < 0.5)[..., None], first, second)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def draw_distractor(canvas, rng) -> None:
    """Clutter that is no category: an irregular blob, a line or an arc in a random colour."""
    import numpy as np
    from PIL import ImageDraw

    pen = ImageDraw.Draw(canvas)
    width, height = canvas.size
    colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
    cx, cy = float(rng.uniform(0, width)), float(rng.uniform(0, height))
    radius = float(rng.uniform(3, 0.15 * min(width, height)))
    kind = int(rng.integers(0, 3))
    if kind == 0:
        n = int(rng.integers(5, 9))
        angles = np.sort(rng.uniform(0, 2 * math.pi, size=n))
        radii = rng.uniform(0.4, 1.0, size=n) * radius
        pen.polygon([(cx + r * math.cos(a), cy + r * math.sin(a)) for a, r in zip(angles, radii)], fill=colour)
    elif kind == 1:
        angle = rng.uniform(0, math.pi)
        dx, dy = math.cos(angle) * radius * 2, math.sin(angle) * radius * 2
        pen.line((cx - dx, cy - dy, cx + dx, cy + dy), fill=colour, width=int(rng.integers(1, 4)))
    else:
        start = float(rng.uniform(0, 360))
        pen.arc((cx - radius, cy - radius, cx + radius, cy + radius), start, start + float(rng.uniform(60, 270)),
                fill=colour, width=int(rng.integers(1, 4)))


def place_box(rng, category: Category, image_size, taken, size_range) -> tuple[int, int, int, int] | None:
    """A box for ``category`` that leaves every earlier box at most :data:`MAX_OCCLUDED` covered, or None.

    Args:
        rng: Random generator.
        category: What is placed (its ``aspect`` shapes the box).
        image_size: ``(width, height)``.
        taken: Boxes ``(x, y, w, h)`` drawn before, in drawing order.
        size_range: Range of the long side, as a fraction of the image's short side (log-uniform).
    """
    import numpy as np

    width, height = image_size
    short = min(width, height)
    for _ in range(_PLACEMENT_TRIES):
        aspect = category.aspect * math.exp(rng.uniform(-0.15, 0.15))
        thinness = min(aspect, 1.0 / aspect)
        low = max(size_range[0] * short, _MIN_SIDE / thinness)
        high = max(low, size_range[1] * short)
        long_side = math.exp(rng.uniform(math.log(low), math.log(high)))
        w, h = (long_side / aspect, long_side) if aspect >= 1 else (long_side, long_side * aspect)
        w, h = round(min(w, width)), round(min(h, height))
        x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
        box = (x, y, w, h)
        if _occlusion_ok(box, taken, (height, width), np):
            return box
    return None


def _occlusion_ok(box, taken, shape, np) -> bool:
    """Whether adding ``box`` on top keeps every earlier box at most :data:`MAX_OCCLUDED` covered."""
    covered = np.zeros(shape, dtype=bool)
    x, y, w, h = box
    covered[y:y + h, x:x + w] = True
    # Walk from the top-most earlier box down: each is covered by the union of everything drawn after it.
    for bx, by, bw, bh in reversed(taken):
        if covered[by:by + bh, bx:bx + bw].mean() > MAX_OCCLUDED:
            return False
        covered[by:by + bh, bx:bx + bw] = True
    return True
