"""The visual vocabulary of the synthetic grounding corpus: named categories and how each one is drawn.

Every category has an English name whose words are whole BERT word pieces (``"traffic cone"``, ``"sea star"``), a
typical aspect ratio, a body colour (the one captions name) and a list of drawing parts (silhouette, colour, fill
pattern; see :mod:`odinw_bench.data.drawing`). No two categories share a word, and no name uses a word captions use
for sizes, colours or places, so a token of a caption belongs to one category at most. Example::

    from PIL import Image
    from odinw_bench.data.drawing import Style
    from odinw_bench.data.vocabulary import CATEGORIES, draw

    canvas = Image.new("RGB", (160, 128), (90, 90, 90))
    draw(CATEGORIES["traffic cone"], canvas, (20, 30, 24, 32))                      # its own look
    draw(CATEGORIES["sea star"], canvas, (80, 40, 30, 30), Style(outline_only=True))  # a domain-shifted look
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from odinw_bench.data.drawing import Part as P
from odinw_bench.data.drawing import Style, paste_object, styled_colour

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

#: Bump when any category's name or look changes: corpora record it, and weights trained on one name it.
VOCABULARY_VERSION = 1


@dataclass(frozen=True)
class Category:
    """A named category and its look.

    Attributes:
        name: The category's name, as captions write it.
        parts: Drawing parts, in drawing order, in the unit box.
        aspect: Typical height / width of its box.
        colour: The palette colour of its body (the one a caption names); default: the first part's colour.
    """

    name: str
    parts: tuple[P, ...]
    aspect: float = 1.0
    colour: str | None = None

    @property
    def body_colour(self) -> str:
        """Palette name of the body colour."""
        return self.colour or self.parts[0].colour

    def rgb(self, style: Style | None = None) -> tuple[int, int, int]:
        """The body colour under ``style``."""
        return styled_colour(self.body_colour, style or Style())


def _c(name: str, *parts: P, aspect: float = 1.0, colour: str | None = None) -> Category:
    return Category(name, tuple(parts), aspect, colour)


_LIST = (
    _c("traffic cone", P("trapezoid_up", "orange", (0.12, 0, 0.88, 0.9), "band", "white"),
       P("rect", "orange", (0, 0.86, 1, 1)), aspect=1.3),
    _c("sea star", P("star", "salmon", pattern="dots", accent="maroon")),
    _c("paper kite", P("diamond", "yellow", (0, 0, 1, 0.85), "quarters", "red"),
       P("rect", "darkgrey", (0.46, 0.8, 0.54, 1)), aspect=1.4),
    _c("post box", P("rounded", "red", (0, 0.15, 1, 1)), P("dome", "red", (0, 0, 1, 0.3)),
       P("rect", "black", (0.2, 0.35, 0.8, 0.45)), aspect=1.5),
    _c("life ring", P("ring", "white", pattern="quarters", accent="red")),
    _c("beach ball", P("disc", "yellow", pattern="vstripes", accent="blue")),
    _c("stop sign", P("octagon", "red", pattern="band", accent="white")),
    _c("pizza", P("triangle_down", "yellow", pattern="dots", accent="red"), P("rect", "tan", (0, 0, 1, 0.15)),
       aspect=1.2),
    _c("banana", P("crescent", "yellow"), aspect=0.7),
    _c("heart", P("heart", "magenta"), aspect=0.9),
    _c("arrow", P("arrow", "lime"), aspect=0.6),
    _c("cactus", P("rounded", "darkgreen", (0.35, 0, 0.65, 1), "dots", "lime"),
       P("rounded", "darkgreen", (0, 0.3, 0.4, 0.48)), P("rounded", "darkgreen", (0.6, 0.18, 1, 0.36)),
       aspect=1.3),
    _c("lemon", P("ellipse", "lime"), aspect=0.72),
    _c("tomato", P("disc", "red", (0, 0.12, 1, 1)), P("star", "green", (0.3, 0, 0.7, 0.3)), aspect=1.0),
    _c("pumpkin", P("ellipse", "orange", pattern="vstripes", accent="bronze"), aspect=0.8),
    _c("egg", P("ellipse", "cream"), aspect=1.3),
    _c("cookie", P("disc", "tan", pattern="dots", accent="brown")),
    _c("wreath", P("ring", "darkgreen", pattern="dots", accent="red")),
    _c("coin", P("disc", "gold", pattern="rings", accent="bronze")),
    _c("button", P("disc", "blue", pattern="holes", accent="navy")),
    _c("dice", P("rounded", "white", pattern="dots", accent="black")),
    _c("domino", P("rounded", "black", pattern="dots", accent="white"), aspect=2.0),
    _c("brick", P("rect", "brick", pattern="hstripes", accent="beige"), aspect=0.5),
    _c("chess board", P("rect", "white", pattern="checker", accent="black")),
    _c("envelope", P("rect", "cream"), P("triangle_down", "tan", (0, 0, 1, 0.55)), aspect=0.65),
    _c("book", P("rect", "navy"), P("rect", "white", (0.82, 0.04, 1, 0.96)), aspect=1.3),
    _c("gift", P("rect", "purple", (0, 0.18, 1, 1), "ribbon", "yellow"), P("bowtie", "yellow", (0.25, 0, 0.75, 0.22))),
    _c("battery", P("rect", "black", (0, 0, 0.9, 1), "halves", "gold"), P("rect", "silver", (0.9, 0.3, 1, 0.7)),
       aspect=0.5),
    _c("pencil", P("rect", "yellow", (0.18, 0, 0.9, 1)), P("triangle_left", "tan", (0, 0, 0.19, 1)),
       P("rect", "pink", (0.9, 0, 1, 1)), aspect=0.2),
    _c("umbrella", P("dome", "purple", (0, 0, 1, 0.55), "vstripes", "white"),
       P("rect", "darkgrey", (0.46, 0.5, 0.54, 1))),
    _c("mushroom", P("dome", "red", (0, 0, 1, 0.62), "dots", "white"), P("rect", "cream", (0.33, 0.58, 0.67, 1))),
    _c("pine tree", P("triangle", "darkgreen", (0, 0, 1, 0.85)), P("rect", "brown", (0.4, 0.82, 0.6, 1)),
       aspect=1.3),
    _c("leaf", P("lens", "green"), P("rect", "lime", (0.05, 0.46, 0.95, 0.54)), aspect=0.55),
    _c("cloud", P("cloud", "sky"), aspect=0.65),
    _c("flower", P("burst", "yellow"), P("disc", "brown", (0.3, 0.3, 0.7, 0.7))),
    _c("ice crystal", P("asterisk", "cyan"), aspect=1.1),
    _c("lightning bolt", P("bolt", "yellow"), aspect=1.5),
    _c("shield", P("shield", "silver", pattern="vband", accent="red"), aspect=1.2),
    _c("crown", P("crown", "gold", pattern="dots", accent="red"), aspect=0.75),
    _c("bell", P("dome", "bronze", (0.1, 0, 0.9, 0.8)), P("rect", "bronze", (0, 0.7, 1, 0.85)),
       P("disc", "darkgrey", (0.38, 0.8, 0.62, 1))),
    _c("key", P("ring", "silver", (0, 0, 0.4, 1)), P("rect", "silver", (0.36, 0.38, 1, 0.6)),
       P("rect", "silver", (0.72, 0.6, 0.82, 0.9)), P("rect", "silver", (0.88, 0.6, 1, 1)), aspect=0.45),
    _c("hammer", P("rect", "darkgrey", (0, 0, 1, 0.3)), P("rect", "brown", (0.4, 0.3, 0.6, 1)), aspect=1.1),
    _c("tent", P("triangle", "olive"), P("triangle", "darkgrey", (0.33, 0.45, 0.67, 1)), aspect=0.8),
    _c("house", P("rect", "beige", (0.1, 0.45, 0.9, 1)), P("triangle", "red", (0, 0, 1, 0.5)),
       P("rect", "brown", (0.42, 0.68, 0.58, 1)), colour="beige"),
    _c("boat", P("triangle", "white", (0.2, 0, 0.8, 0.7)), P("trapezoid", "brown", (0, 0.7, 1, 1))),
    _c("fish", P("ellipse", "teal", (0, 0, 0.75, 1), "hstripes", "cyan"), P("triangle_left", "teal", (0.7, 0.1, 1, 0.9)),
       P("disc", "white", (0.12, 0.28, 0.26, 0.5)), aspect=0.6),
    _c("butterfly", P("bowtie", "magenta", pattern="dots", accent="yellow"), P("rect", "black", (0.45, 0.1, 0.55, 0.9)),
       aspect=0.8),
    _c("beetle", P("disc", "red", pattern="dots", accent="black"), P("rect", "black", (0.47, 0, 0.53, 1))),
    _c("bee", P("ellipse", "yellow", pattern="vstripes", accent="black"), aspect=0.7),
    _c("barber pole", P("rect", "white", pattern="dstripes", accent="red"), aspect=2.5),
    _c("candy", P("disc", "magenta", (0, 0, 1, 0.62), "rings", "white"), P("rect", "white", (0.45, 0.6, 0.55, 1)),
       aspect=1.6),
    _c("balloon", P("ellipse", "blue", (0, 0, 1, 0.8)), P("triangle", "blue", (0.4, 0.78, 0.6, 0.88)),
       P("rect", "darkgrey", (0.48, 0.86, 0.52, 1)), aspect=1.4),
    _c("flag", P("rect", "darkgrey", (0, 0, 0.1, 1)), P("rect", "green", (0.1, 0, 1, 0.6), "halves", "white"),
       aspect=0.8, colour="green"),
    _c("magnet", P("ushape", "red"), P("rect", "silver", (0, 0, 0.33, 0.25)), P("rect", "silver", (0.67, 0, 1, 0.25))),
    _c("mug", P("ring", "white", (0.55, 0.15, 1, 0.7)), P("rect", "white", (0, 0, 0.78, 1), "band", "blue"),
       aspect=0.9),
    _c("bucket", P("ring", "darkgrey", (0.1, 0, 0.9, 0.55)), P("trapezoid", "blue", (0, 0.25, 1, 1)), colour="blue"),
    _c("clock", P("disc", "black"), P("disc", "white", (0.1, 0.1, 0.9, 0.9)), P("rect", "black", (0.46, 0.2, 0.54, 0.54)),
       P("rect", "black", (0.46, 0.46, 0.78, 0.54)), colour="white"),
    _c("target", P("disc", "red", pattern="rings", accent="white")),
    _c("wheel", P("ring", "darkgrey"), P("rect", "silver", (0.46, 0.05, 0.54, 0.95)),
       P("rect", "silver", (0.05, 0.46, 0.95, 0.54)), P("disc", "darkgrey", (0.36, 0.36, 0.64, 0.64))),
    _c("planet", P("disc", "purple", (0.22, 0, 0.78, 1)), P("ellipse", "tan", (0, 0.42, 1, 0.58)), aspect=0.7),
    _c("bottle", P("rounded", "green", (0, 0.35, 1, 1), "band", "cream"), P("rect", "green", (0.32, 0, 0.68, 0.4)),
       aspect=2.2),
    _c("candle", P("rect", "cream", (0.15, 0.28, 0.85, 1)), P("teardrop", "orange", (0.3, 0, 0.7, 0.3)), aspect=2.0),
    _c("cheese", P("right_triangle", "yellow", pattern="holes", accent="bronze"), aspect=0.7),
    _c("carrot", P("triangle_down", "orange", (0, 0.2, 1, 1), "hstripes", "bronze"),
       P("triangle", "green", (0.2, 0, 0.8, 0.25)), aspect=2.2),
    _c("snow hut", P("dome", "white", pattern="hstripes", accent="sky"), P("dome", "darkgrey", (0.36, 0.55, 0.64, 1)),
       aspect=0.6),
    _c("boot", P("boot", "brown"), aspect=1.1),
    _c("grapes", P("rect", "brown", (0.46, 0, 0.54, 0.15)), P("disc", "purple", (0, 0.1, 0.34, 0.4)),
       P("disc", "purple", (0.33, 0.1, 0.67, 0.4)), P("disc", "purple", (0.66, 0.1, 1, 0.4)),
       P("disc", "purple", (0.16, 0.4, 0.5, 0.7)), P("disc", "purple", (0.5, 0.4, 0.84, 0.7)),
       P("disc", "purple", (0.33, 0.7, 0.67, 1)), aspect=1.2, colour="purple"),
    _c("cherry", P("peak", "green", (0.15, 0, 0.85, 0.75)), P("disc", "maroon", (0, 0.55, 0.45, 1)),
       P("disc", "maroon", (0.55, 0.55, 1, 1)), colour="maroon"),
    _c("gem", P("gem", "cyan", pattern="halves", accent="sky"), aspect=0.8),
    _c("nut", P("hexagon", "silver"), P("disc", "darkgrey", (0.3, 0.3, 0.7, 0.7)), aspect=0.87),
    _c("cake", P("trapezoid", "pink", (0.1, 0.5, 0.9, 1), "vstripes", "white"), P("dome", "brown", (0, 0, 1, 0.55))),
    _c("toast", P("rounded", "brown"), P("rounded", "beige", (0.12, 0.12, 0.88, 0.88)), colour="beige"),
    _c("lamp", P("trapezoid_up", "yellow", (0.1, 0, 0.9, 0.55)), P("rect", "darkgrey", (0.45, 0.55, 0.55, 0.9)),
       P("rect", "darkgrey", (0.2, 0.88, 0.8, 1)), aspect=1.3),
    _c("window", P("rect", "white"), P("rect", "sky", (0.1, 0.1, 0.9, 0.9), "ribbon", "white"), colour="sky"),
    _c("ladder", P("rect", "brown", (0, 0, 0.16, 1)), P("rect", "brown", (0.84, 0, 1, 1)),
       *(P("rect", "tan", (0.16, v, 0.84, v + 0.08)) for v in (0.12, 0.36, 0.6, 0.84)), aspect=2.0),
    _c("spoon", P("ellipse", "silver", (0.2, 0, 0.8, 0.4)), P("rect", "silver", (0.43, 0.35, 0.57, 1)), aspect=2.2),
)

#: Every category by name, in a fixed order (the corpus numbers them 1..N in this order).
CATEGORIES: dict[str, Category] = {c.name: c for c in _LIST}


def draw(category: Category | str, canvas: Image.Image, box, style: Style | None = None, rng=None) -> np.ndarray:
    """Draw one object of ``category`` filling ``box = (x, y, w, h)`` of ``canvas`` (modified in place).

    Args:
        category: A :class:`Category` or the name of one in :data:`CATEGORIES`.
        canvas: A PIL ``RGB`` image.
        box: Integer pixel box; the object touches its four sides.
        style: Look changes (colour shift, outline only, texture, mirror); None is the category's own look.
        rng: ``numpy.random.Generator`` for textures (None: fixed).

    Returns:
        Boolean ``(h, w)`` array of the box's pixels the object covers.
    """
    if isinstance(category, str):
        category = CATEGORIES[category]
    return paste_object(canvas, category.parts, box, style, rng)
