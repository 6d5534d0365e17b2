"""What the demo suite draws beyond the corpus: new-category looks, new backgrounds, a sketch style and pencil clutter.

The pre-training corpus (:mod:`odinw_bench.data.scenes`) never shows any of these; the demo tasks
(:mod:`odinw_bench.data.demo_suite`) use them for domain shift (backgrounds, style) and for categories the model
never saw (:data:`NEW_LOOKS`, composed from :class:`~odinw_bench.data.drawing.Part` shapes so that none looks
like a vocabulary category). Example::

    import numpy as np
    from PIL import Image
    from odinw_bench.data.demo_looks import BACKGROUNDS, NEW_LOOKS, sketch_style
    from odinw_bench.data.vocabulary import draw

    rng = np.random.default_rng(0)
    canvas = Image.fromarray(BACKGROUNDS["planks"](rng, 160, 128), "RGB")
    draw(NEW_LOOKS["robot"], canvas, (40, 30, 30, 42), sketch_style(rng))
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from odinw_bench.data.drawing import Part as P
from odinw_bench.data.drawing import Style
from odinw_bench.data.scenes import draw_background, draw_distractor, instance_style
from odinw_bench.data.vocabulary import Category

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

#: Looks of categories the corpus never has, by look name. Each is a multi-part figure unlike every vocabulary
#: category (the robot's head, body and legs; the rocket's nose, fins and window; the guitar's two bouts and neck;
#: the anchor's ring, stock and curved arms).
NEW_LOOKS: dict[str, Category] = {
    "robot": Category("robot", (
        P("rect", "silver", (0.25, 0.0, 0.75, 0.27)),
        P("rect", "teal", (0.1, 0.3, 0.9, 0.76)),
        P("rect", "yellow", (0.36, 0.42, 0.64, 0.6)),
        P("rect", "silver", (0.0, 0.34, 0.1, 0.66)),
        P("rect", "silver", (0.9, 0.34, 1.0, 0.66)),
        P("rect", "darkgrey", (0.2, 0.76, 0.4, 1.0)),
        P("rect", "darkgrey", (0.6, 0.76, 0.8, 1.0)),
        P("disc", "red", (0.33, 0.07, 0.46, 0.19)),
        P("disc", "red", (0.54, 0.07, 0.67, 0.19)),
    ), aspect=1.4, colour="teal"),
    "rocket": Category("rocket", (
        P("triangle", "red", (0.0, 0.55, 0.42, 0.9)),
        P("triangle", "red", (0.58, 0.55, 1.0, 0.9)),
        P("rounded", "white", (0.28, 0.14, 0.72, 0.88)),
        P("triangle", "red", (0.28, 0.0, 0.72, 0.22)),
        P("disc", "sky", (0.38, 0.32, 0.62, 0.46)),
        P("triangle_down", "orange", (0.36, 0.86, 0.64, 1.0)),
    ), aspect=2.2, colour="white"),
    "guitar": Category("guitar", (
        P("rect", "brown", (0.43, 0.06, 0.57, 0.5)),
        P("rect", "darkgrey", (0.36, 0.0, 0.64, 0.1)),
        P("ellipse", "orange", (0.14, 0.36, 0.86, 0.68)),
        P("ellipse", "orange", (0.0, 0.56, 1.0, 1.0)),
        P("disc", "black", (0.38, 0.6, 0.62, 0.76)),
        P("rect", "brown", (0.3, 0.86, 0.7, 0.9)),
    ), aspect=2.1, colour="orange"),
    "anchor": Category("anchor", (
        P("ring", "navy", (0.36, 0.0, 0.64, 0.2)),
        P("rect", "navy", (0.45, 0.17, 0.55, 0.96)),
        P("rect", "navy", (0.18, 0.27, 0.82, 0.35)),
        P("ushape", "navy", (0.04, 0.58, 0.96, 1.0)),
        P("triangle", "navy", (0.0, 0.48, 0.18, 0.66)),
        P("triangle", "navy", (0.82, 0.48, 1.0, 0.66)),
    ), aspect=1.2, colour="navy"),
}


# --- backgrounds: (rng, width, height) -> (height, width, 3) uint8 ------------------------------------------


def planks(rng, width: int, height: int):
    """A wooden floor: horizontal planks of slightly different browns, with grain and dark seams."""
    import numpy as np

    wood = rng.uniform([150, 95, 50], [200, 140, 85])
    plank = int(rng.integers(14, 23))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    row = (yy // plank).astype(int)
    shade = rng.uniform(0.8, 1.15, size=row.max() + 1)[row]
    grain = 1.0 + 0.06 * np.sin(xx / rng.uniform(3, 7) + 3.0 * np.sin(yy / rng.uniform(2, 5) + row))
    pixels = wood * (shade * grain)[..., None]
    pixels = pixels * np.where((yy % plank) < 1, 0.55, 1.0)[..., None]  # the seam between two planks
    for r in range(row.max() + 1):  # the butt joint of each plank row, staggered
        x = int(rng.integers(0, width))
        pixels[r * plank:(r + 1) * plank, x:x + 1] *= 0.6
    return np.clip(pixels + rng.normal(0, 4, size=(height, width, 1)), 0, 255).astype(np.uint8)


def carpet(rng, width: int, height: int):
    """A carpet: a two-tone checker (square or diagonal) of close, muted colours, with a woolly grain."""
    import numpy as np

    first = rng.uniform(60, 170, size=3)
    second = np.clip(first + rng.uniform(-45, 45, size=3), 0, 255)
    cell = rng.uniform(7, 16)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    if rng.random() < 0.5:  # diagonal checker
        xx, yy = (xx + yy) / math.sqrt(2), (xx - yy) / math.sqrt(2)
    checker = ((np.floor(xx / cell) + np.floor(yy / cell)) % 2)[..., None]
    pixels = first + checker * (second - first)
    return np.clip(pixels + rng.normal(0, 7, size=(height, width, 3)), 0, 255).astype(np.uint8)


def polka(rng, width: int, height: int):
    """Polka dots: small round dots of one colour on a pale fabric, on a staggered grid."""
    import numpy as np

    base = rng.uniform(150, 235, size=3)
    dot = np.clip(base + rng.choice([-1, 1]) * rng.uniform(50, 90, size=3), 0, 255)
    spacing = rng.uniform(11, 19)
    radius = rng.uniform(1.8, 3.5)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    shifted = xx + (np.floor(yy / spacing) % 2) * spacing / 2  # every other row half a step over
    du = (shifted % spacing) - spacing / 2
    dv = (yy % spacing) - spacing / 2
    inside = ((du * du + dv * dv) <= radius * radius)[..., None]
    pixels = np.where(inside, dot, base)
    return np.clip(pixels + rng.normal(0, 3, size=(height, width, 1)), 0, 255).astype(np.uint8)


def paper(rng, width: int, height: int):
    """Plain paper: an off-white sheet with a faint grain."""
    import numpy as np

    sheet = rng.uniform([236, 234, 222], [250, 248, 240])
    return np.clip(sheet + rng.normal(0, 3, size=(height, width, 1)), 0, 255).astype(np.uint8)


#: Background kinds a recipe may name: the corpus's own mix, and the kinds the corpus never had.
BACKGROUNDS = {"corpus": draw_background, "planks": planks, "carpet": carpet, "polka": polka, "paper": paper}


# --- per-instance styles: rng -> Style ------------------------------------------------------------------------


def sketch_style(rng: np.random.Generator) -> Style:
    """A pencil drawing: either a dark, nearly grey outline, or a desaturated silhouette shaded with hatching."""
    mirror = bool(rng.random() < 0.5)
    if rng.random() < 0.5:
        return Style(saturation=float(rng.uniform(0.1, 0.25)), brightness=float(rng.uniform(0.35, 0.5)),
                     outline_only=True, mirror=mirror)
    return Style(saturation=float(rng.uniform(0.15, 0.3)), brightness=float(rng.uniform(0.8, 0.95)),
                 texture="hatch", texture_strength=0.3, mirror=mirror)


#: Instance styles a recipe may name: the corpus's own small jitter, or the sketch look.
STYLES = {"jitter": instance_style, "sketch": sketch_style}


# --- clutter: (canvas, rng) -> None, drawn before the objects --------------------------------------------------


def pencil_stroke(canvas: Image.Image, rng) -> None:
    """Clutter on a sketch: a grey pencil line, arc or zigzag that belongs to no category."""
    from PIL import ImageDraw

    pen = ImageDraw.Draw(canvas)
    width, height = canvas.size
    grey = int(rng.integers(70, 170))
    colour = (grey, grey, grey)
    cx, cy = float(rng.uniform(0, width)), float(rng.uniform(0, height))
    size = float(rng.uniform(6, 0.25 * min(width, height)))
    kind = int(rng.integers(0, 3))
    if kind == 0:
        angle = rng.uniform(0, math.pi)
        dx, dy = math.cos(angle) * size, math.sin(angle) * size
        pen.line((cx - dx, cy - dy, cx + dx, cy + dy), fill=colour, width=1)
    elif kind == 1:
        start = float(rng.uniform(0, 360))
        pen.arc((cx - size, cy - size, cx + size, cy + size), start, start + float(rng.uniform(40, 200)),
                fill=colour, width=1)
    else:
        steps = int(rng.integers(3, 7))
        points = [(cx + k * size / steps, cy + (size / 4) * (1 if k % 2 else -1)) for k in range(steps + 1)]
        pen.line(points, fill=colour, width=1)


#: Clutter kinds a recipe may name: the corpus's random blobs, lines and arcs, or pencil strokes.
CLUTTER = {"corpus": draw_distractor, "pencil": pencil_stroke}
