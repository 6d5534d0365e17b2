"""Procedural drawing of the visual vocabulary: silhouettes, fill patterns and styles, rendered with PIL.

An object is a list of :class:`Part` s (a silhouette in a sub-rectangle of the object's box, a colour and an
optional fill pattern); :func:`render_parts` rasterises them, supersampled so that 16 px objects keep their shape,
and :func:`paste_object` puts the result on a canvas. A :class:`Style` changes the look without changing the
category (hue shift, saturation, brightness, outline only, texture, mirror), which the demo tasks use for domain
shift. Example::

    from PIL import Image
    from odinw_bench.data.drawing import Part, Style, paste_object

    canvas = Image.new("RGB", (64, 64), (128, 128, 128))
    parts = (Part("disc", "red", pattern="dots", accent="black"),)
    mask = paste_object(canvas, parts, (8, 8, 32, 32), Style(hue_shift=120))   # a green dotted disc

Coordinates of a part's ``rect`` are fractions of the object's box: ``(x0, y0, x1, y1)`` in [0, 1].
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

#: Object colours by name (RGB); categories refer to these names.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40), "orange": (245, 130, 20), "yellow": (245, 215, 40), "lime": (165, 215, 50),
    "green": (40, 160, 60), "darkgreen": (20, 95, 40), "teal": (20, 150, 150), "cyan": (70, 205, 235),
    "blue": (40, 80, 210), "navy": (25, 35, 110), "purple": (130, 60, 190), "magenta": (210, 50, 170),
    "pink": (245, 150, 190), "brown": (125, 75, 35), "tan": (210, 170, 110), "cream": (245, 235, 200),
    "white": (248, 248, 248), "silver": (185, 190, 200), "grey": (135, 135, 135), "darkgrey": (65, 65, 65),
    "black": (20, 20, 20), "gold": (215, 170, 40), "salmon": (250, 128, 100), "beige": (225, 205, 160),
    "maroon": (120, 20, 40), "sky": (150, 200, 245), "olive": (120, 130, 40), "bronze": (180, 110, 50),
    "brick": (175, 65, 45),
}

#: Words a caption may use for a colour, and the rule :func:`colour_word` applies.
COLOUR_WORDS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "white", "gray", "black")


@dataclass(frozen=True)
class Part:
    """One piece of an object: a silhouette filling ``rect`` (fractions of the object's box).

    Attributes:
        shape: A key of :data:`SHAPES`.
        colour: A key of :data:`PALETTE`.
        rect: ``(x0, y0, x1, y1)`` in [0, 1] of the object's box.
        pattern: A key of :data:`PATTERNS` drawn in ``accent`` over the part, or None for a plain fill.
        accent: Pattern colour (a key of :data:`PALETTE`).
    """

    shape: str
    colour: str
    rect: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)
    pattern: str | None = None
    accent: str = "black"


@dataclass(frozen=True)
class Style:
    """How an object is rendered, beyond its category's identity.

    Attributes:
        hue_shift: Degrees added to every colour's hue.
        saturation: Factor on every colour's saturation.
        brightness: Factor on every colour's value (HSV).
        outline_only: Draw only a rim of the silhouette (a line drawing).
        texture: None, ``"noise"`` (per-pixel grain) or ``"hatch"`` (dark diagonal lines) over the object.
        texture_strength: Strength of the texture, 0..1.
        mirror: Flip the object left-right.
    """

    hue_shift: float = 0.0
    saturation: float = 1.0
    brightness: float = 1.0
    outline_only: bool = False
    texture: str | None = None
    texture_strength: float = 0.25
    mirror: bool = False


def styled_colour(name: str, style: Style) -> tuple[int, int, int]:
    """The RGB of palette colour ``name`` under ``style``'s hue, saturation and brightness changes."""
    r, g, b = (c / 255.0 for c in PALETTE[name])
    if style.hue_shift == 0.0 and style.saturation == 1.0 and style.brightness == 1.0:
        return PALETTE[name]
    h, s, v = colorsys.rgb_to_hsv(r, g, b)
    h = (h + style.hue_shift / 360.0) % 1.0
    s = min(1.0, max(0.0, s * style.saturation))
    v = min(1.0, max(0.0, v * style.brightness))
    return tuple(round(c * 255) for c in colorsys.hsv_to_rgb(h, s, v))


def colour_word(rgb: tuple[int, int, int]) -> str:
    """The plain English colour word (one of :data:`COLOUR_WORDS`) a person would use for ``rgb``."""
    h, s, v = colorsys.rgb_to_hsv(*(c / 255.0 for c in rgb))
    hue = h * 360.0
    if v < 0.25:
        return "black"
    if s < 0.2:
        return "white" if v > 0.8 else "gray"
    if hue < 15 or hue >= 340:
        return "pink" if s < 0.5 and v > 0.8 else "red"
    if hue < 45:
        return "brown" if v < 0.6 or s < 0.55 else "orange"
    if hue < 70:
        return "yellow"
    if hue < 165:
        return "green"
    if hue < 255:
        return "blue"
    if hue < 290:
        return "purple"
    return "pink"


# --- silhouettes: polygons in the unit square (normalised to touch all four sides), or drawing functions ------


def _normalised(points):
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, y0, dx, dy = min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)
    return tuple(((x - x0) / dx, (y - y0) / dy) for x, y in points)


def _star(n_points: int, inner: float):
    return _normalised([(math.cos(math.pi * k / n_points - math.pi / 2) * (1.0 if k % 2 == 0 else inner),
                         math.sin(math.pi * k / n_points - math.pi / 2) * (1.0 if k % 2 == 0 else inner))
                        for k in range(2 * n_points)])


def _regular(n_sides: int, turn: float):
    return _normalised([(math.cos(2 * math.pi * k / n_sides + turn), math.sin(2 * math.pi * k / n_sides + turn))
                        for k in range(n_sides)])


def _heart():
    return _normalised([(16 * math.sin(t) ** 3,
                         -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)))
                        for t in (2 * math.pi * k / 40 for k in range(40))])


def _teardrop():
    return _normalised([(math.sin(t) * math.sin(t / 2) ** 1.5, -math.cos(t))
                        for t in (2 * math.pi * k / 40 for k in range(40))])


def _lens():
    upper = [(k / 20, 0.5 - 0.5 * math.sin(math.pi * k / 20)) for k in range(21)]
    return tuple(upper + [(1 - x, 1 - y) for x, y in upper[1:-1]])


POLYGONS: dict[str, tuple[tuple[float, float], ...]] = {
    "rect": ((0, 0), (1, 0), (1, 1), (0, 1)),
    "triangle": ((0.5, 0), (1, 1), (0, 1)),
    "triangle_down": ((0, 0), (1, 0), (0.5, 1)),
    "triangle_left": ((0, 0.5), (1, 0), (1, 1)),
    "right_triangle": ((0, 1), (1, 0), (1, 1)),
    "diamond": ((0.5, 0), (1, 0.5), (0.5, 1), (0, 0.5)),
    "star": _star(5, 0.42),
    "burst": _star(12, 0.7),
    "hexagon": _regular(6, 0.0),
    "octagon": _regular(8, math.pi / 8),
    "cross": ((1 / 3, 0), (2 / 3, 0), (2 / 3, 1 / 3), (1, 1 / 3), (1, 2 / 3), (2 / 3, 2 / 3), (2 / 3, 1),
              (1 / 3, 1), (1 / 3, 2 / 3), (0, 2 / 3), (0, 1 / 3), (1 / 3, 1 / 3)),
    "arrow": ((0, 0.3), (0.55, 0.3), (0.55, 0), (1, 0.5), (0.55, 1), (0.55, 0.7), (0, 0.7)),
    "trapezoid": ((0, 0), (1, 0), (0.8, 1), (0.2, 1)),
    "trapezoid_up": ((0.25, 0), (0.75, 0), (1, 1), (0, 1)),
    "bowtie": ((0, 0), (0.5, 0.35), (1, 0), (1, 1), (0.5, 0.65), (0, 1)),
    "bolt": _normalised(((0.55, 0), (0.1, 0.55), (0.45, 0.55), (0.3, 1), (0.9, 0.4), (0.55, 0.4), (0.75, 0))),
    "shield": ((0, 0), (1, 0), (1, 0.5), (0.5, 1), (0, 0.5)),
    "crown": ((0, 1), (0, 0.15), (0.25, 0.55), (0.5, 0), (0.75, 0.55), (1, 0.15), (1, 1)),
    "gem": ((0.2, 0), (0.8, 0), (1, 0.35), (0.5, 1), (0, 0.35)),
    "boot": ((0, 0), (0.5, 0), (0.5, 0.55), (1, 0.7), (1, 1), (0, 1)),
    "peak": ((0.5, 0), (1, 1), (0.82, 1), (0.5, 0.3), (0.18, 1), (0, 1)),
    "heart": _heart(),
    "teardrop": _teardrop(),
    "lens": _lens(),
}


def _draw_shape(draw, shape: str, box: tuple[float, float, float, float]) -> None:
    """Draw silhouette ``shape`` filling ``box`` (pixels) on an ``L`` mask: 255 inside, 0 for holes."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    if shape in POLYGONS:
        draw.polygon([(x0 + u * w, y0 + v * h) for u, v in POLYGONS[shape]], fill=255)
    elif shape in ("disc", "ellipse"):
        draw.ellipse(box, fill=255)
    elif shape == "ring":
        draw.ellipse(box, fill=255)
        draw.ellipse((x0 + 0.27 * w, y0 + 0.27 * h, x1 - 0.27 * w, y1 - 0.27 * h), fill=0)
    elif shape == "rounded":
        draw.rounded_rectangle(box, radius=0.3 * min(w, h), fill=255)
    elif shape == "dome":  # the top half of an ellipse
        draw.pieslice((x0, y0, x1, y0 + 2 * h), 180, 360, fill=255)
    elif shape == "bowl":  # the bottom half of an ellipse
        draw.pieslice((x0, y0 - h, x1, y1), 0, 180, fill=255)
    elif shape == "crescent":
        draw.ellipse(box, fill=255)
        draw.ellipse((x0 + 0.3 * w, y0 - 0.15 * h, x1 + 0.3 * w, y1 - 0.25 * h), fill=0)
    elif shape == "cloud":
        draw.ellipse((x0, y0 + 0.35 * h, x0 + 0.5 * w, y1), fill=255)
        draw.ellipse((x0 + 0.2 * w, y0, x0 + 0.8 * w, y0 + 0.8 * h), fill=255)
        draw.ellipse((x0 + 0.5 * w, y0 + 0.3 * h, x1, y1), fill=255)
    elif shape == "ushape":
        draw.ellipse((x0, y0 + 0.2 * h, x1, y1), fill=255)
        draw.rectangle((x0, y0, x1, y0 + 0.6 * h), fill=255)
        draw.ellipse((x0 + 0.33 * w, y0 + 0.38 * h, x1 - 0.33 * w, y1 - 0.33 * h), fill=0)
        draw.rectangle((x0 + 0.33 * w, y0, x1 - 0.33 * w, y0 + 0.6 * h), fill=0)
    elif shape == "asterisk":
        cx, cy, t = (x0 + x1) / 2, (y0 + y1) / 2, max(1.0, 0.14 * min(w, h))
        for angle in (0, 60, 120):
            dx, dy = math.sin(math.radians(angle)) * w / 2, math.cos(math.radians(angle)) * h / 2
            draw.line((cx - dx, cy - dy, cx + dx, cy + dy), fill=255, width=round(t))
    else:
        raise KeyError(f"unknown shape {shape!r}")


SHAPES = frozenset(POLYGONS) | {"disc", "ellipse", "ring", "rounded", "dome", "bowl", "crescent", "cloud",
                                "ushape", "asterisk"}


# --- fill patterns, drawn in the accent colour inside a part's box --------------------------------------------


def _draw_pattern(draw, pattern: str, box, accent) -> None:
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0

    def rect(u0, v0, u1, v1):
        draw.rectangle((x0 + u0 * w, y0 + v0 * h, x0 + u1 * w, y0 + v1 * h), fill=accent)

    def dot(u, v, r):
        rr = r * min(w, h)
        draw.ellipse((x0 + u * w - rr, y0 + v * h - rr, x0 + u * w + rr, y0 + v * h + rr), fill=accent)

    if pattern == "hstripes":
        for k in range(4):
            rect(0, (2 * k + 1) / 9, 1, (2 * k + 2) / 9)
    elif pattern == "vstripes":
        for k in range(4):
            rect((2 * k + 1) / 9, 0, (2 * k + 2) / 9, 1)
    elif pattern == "dstripes":
        for k in range(-3, 4):
            u = k / 3.5
            draw.polygon([(x0 + (u + 0.0) * w, y1), (x0 + (u + 0.14) * w, y1),
                          (x0 + (u + 1.14) * w, y0), (x0 + (u + 1.0) * w, y0)], fill=accent)
    elif pattern == "dots":
        for u in (0.25, 0.5, 0.75):
            for v in (0.28, 0.5, 0.72):
                dot(u, v, 0.08)
    elif pattern == "holes":
        for u in (0.36, 0.64):
            for v in (0.36, 0.64):
                dot(u, v, 0.09)
    elif pattern == "checker":
        for i in range(4):
            for j in range(4):
                if (i + j) % 2:
                    rect(i / 4, j / 4, (i + 1) / 4, (j + 1) / 4)
    elif pattern == "band":
        rect(0, 0.36, 1, 0.64)
    elif pattern == "vband":
        rect(0.36, 0, 0.64, 1)
    elif pattern == "ribbon":
        rect(0, 0.42, 1, 0.58)
        rect(0.42, 0, 0.58, 1)
    elif pattern == "halves":
        rect(0, 0, 0.5, 1)
    elif pattern == "quarters":
        rect(0, 0, 0.5, 0.5)
        rect(0.5, 0.5, 1, 1)
    elif pattern == "rings":  # a bullseye: an accent ring and an accent centre
        inset = 0.14
        draw.ellipse((x0 + inset * w, y0 + inset * h, x1 - inset * w, y1 - inset * h), outline=accent,
                     width=max(1, round(0.13 * min(w, h))))
        dot(0.5, 0.5, 0.13)
    else:
        raise KeyError(f"unknown pattern {pattern!r}")


PATTERNS = frozenset({"hstripes", "vstripes", "dstripes", "dots", "holes", "checker", "band", "vband", "ribbon",
                      "halves", "quarters", "rings"})


# --- rendering ----------------------------------------------------------------------------------------------


def render_parts(parts, size: tuple[int, int], style: Style | None = None, rng=None):
    """Rasterise an object's parts at ``size = (width, height)`` pixels.

    Args:
        parts: The object's :class:`Part` s, drawn in order (later parts cover earlier ones).
        size: Width and height of the object's box in pixels (>= 1 each).
        style: Rendering style; None is the category's own look.
        rng: ``numpy.random.Generator`` for textures; None means a fixed seed (same pixels every call).

    Returns:
        ``(rgb, alpha)``: PIL images of ``size``, mode ``RGB`` and ``L`` (coverage 0..255).
    """
    from PIL import Image, ImageDraw, ImageFilter

    style = style or Style()
    width, height = size
    scale = max(2, math.ceil(64 / max(width, height)))  # supersample small objects: their shape must survive
    big = (width * scale, height * scale)
    layer = Image.new("RGB", big, styled_colour(parts[0].colour, style))
    alpha = Image.new("L", big, 0)
    for part in parts:
        u0, v0, u1, v1 = part.rect
        box = (u0 * big[0], v0 * big[1], u1 * big[0] - 1, v1 * big[1] - 1)
        part_mask = Image.new("L", big, 0)
        _draw_shape(ImageDraw.Draw(part_mask), part.shape, box)
        fill = Image.new("RGB", big, styled_colour(part.colour, style))
        if part.pattern is not None:
            _draw_pattern(ImageDraw.Draw(fill), part.pattern, box, styled_colour(part.accent, style))
        layer.paste(fill, (0, 0), part_mask)
        alpha.paste(255, (0, 0), part_mask)
    if style.outline_only:
        rim = max(3, 2 * (scale * max(1, min(width, height) // 12)) + 1)
        alpha = Image.fromarray(_minus(alpha, alpha.filter(ImageFilter.MinFilter(rim))))
    if style.mirror:
        layer, alpha = (im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for im in (layer, alpha))
    rgb = layer.resize(size, Image.Resampling.BOX)
    alpha = alpha.resize(size, Image.Resampling.BOX)
    if style.texture is not None:
        rgb = _textured(rgb, style, rng)
    return rgb, alpha


def _minus(a, b):
    import numpy as np

    return np.clip(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16), 0, 255).astype(np.uint8)


def _textured(rgb, style: Style, rng):
    import numpy as np
    from PIL import Image

    pixels = np.asarray(rgb, dtype=np.float32)
    if style.texture == "noise":
        rng = rng if rng is not None else np.random.default_rng(0)
        pixels = pixels + rng.normal(0.0, 255.0 * style.texture_strength / 2, size=pixels.shape[:2])[..., None]
    elif style.texture == "hatch":
        yy, xx = np.mgrid[: pixels.shape[0], : pixels.shape[1]]
        pixels = pixels * np.where((xx + yy) % 4 < 1, 1.0 - style.texture_strength * 2, 1.0)[..., None]
    else:
        raise KeyError(f"unknown texture {style.texture!r}")
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def paste_object(canvas: Image.Image, parts, box, style: Style | None = None, rng=None) -> np.ndarray:
    """Draw an object into ``box = (x, y, w, h)`` of ``canvas`` (modified in place).

    Returns:
        Boolean ``(h, w)`` array: the box's pixels the object covers (coverage at least one half).
    """
    import numpy as np

    x, y, w, h = (int(v) for v in box)
    rgb, alpha = render_parts(parts, (w, h), style, rng)
    canvas.paste(rgb, (x, y), alpha)
    return np.asarray(alpha) >= 128
