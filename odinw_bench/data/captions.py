"""Captions of a synthetic scene, both kinds GLIP pre-trains on, with the character spans of every box.

* A detection caption is a GLIP prompt: the names of the categories present plus negatives (names of categories
  absent from the image, which ground nothing), shuffled and joined by ``". "``; every object is grounded by the
  span of its category's name.
* A grounding caption is a short phrase about one or two objects, with words read off the scene: a size word
  from the object's size in the image, a colour word from the colour it was drawn in, and a relation from where
  the two boxes are (``"a small red tomato to the left of the gray key"``, ``"the large yellow bee at the top
  right"``). Each named object's span is its noun phrase without the article (``"small red tomato"``).

Example::

    caption = detection_caption(scene, names, rng)
    caption.text, caption.boxes    # 'bee. key. tomato', ((object index, ((start, end),)), ...)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from odinw_bench.data.drawing import colour_word
from odinw_bench.data.prompts import join_entries

if TYPE_CHECKING:
    import numpy as np

    from odinw_bench.data.scenes import Scene, SceneObject

#: Words grounding captions use besides category names (no category name contains one of them).
SIZE_WORDS = ("small", "large")
PLACE_WORDS = ("top", "bottom", "left", "right", "middle", "above", "below", "front", "behind", "next")
#: An object's long side under / over this fraction of the image's short side is "small" / "large".
SMALL_BELOW, LARGE_ABOVE = 0.18, 0.36


@dataclass(frozen=True)
class SceneCaption:
    """A caption and the objects it grounds.

    Attributes:
        kind: ``"detection"`` or ``"grounding"``.
        text: The caption.
        boxes: ``(object index in scene.objects, ((start, end), ...))`` per grounded object; ends exclusive.
    """

    kind: str
    text: str
    boxes: tuple[tuple[int, tuple[tuple[int, int], ...]], ...]


def detection_caption(
    scene: Scene, vocabulary: Sequence[str], rng: np.random.Generator, n_negatives: tuple[int, int] = (3, 10)
) -> SceneCaption:
    """The GLIP detection prompt of ``scene``: present names plus negatives from ``vocabulary``, shuffled.

    Args:
        scene: The scene.
        vocabulary: Every category name the negatives may be drawn from.
        rng: Random generator.
        n_negatives: Inclusive range of the number of negatives (fewer if the vocabulary runs out).
    """
    present = sorted({o.category.name for o in scene.objects})
    absent = [name for name in vocabulary if name not in present]
    n_neg = min(len(absent), int(rng.integers(n_negatives[0], n_negatives[1] + 1)))
    negatives = [absent[i] for i in rng.choice(len(absent), size=n_neg, replace=False)] if n_neg else []
    names = present + negatives
    names = [names[i] for i in rng.permutation(len(names))]
    caption = join_entries([("", name, "") for name in names], ". ")
    span_of = dict(zip(names, caption.spans))
    boxes = tuple((index, (span_of[obj.category.name],)) for index, obj in enumerate(scene.objects))
    return SceneCaption("detection", caption.text, boxes)


def grounding_caption(scene: Scene, rng: np.random.Generator, image_size: tuple[int, int]) -> SceneCaption:
    """A phrase about one or two objects of ``scene`` (at least one object), its words read off the scene."""
    n = len(scene.objects)
    first = int(rng.integers(0, n))
    template = int(rng.integers(0, 3)) if n > 1 else 2
    pieces: list[tuple[str, int | None]] = []  # (text, object index whose noun phrase it is)
    if template == 2:
        pieces += [("the ", None), (_noun_phrase(scene.objects[first], image_size), first),
                   (" " + _region(scene.objects[first].box, image_size), None)]
    else:
        second = int(rng.choice([i for i in range(n) if i != first]))
        a, b = scene.objects[first], scene.objects[second]
        np_a, np_b = _noun_phrase(a, image_size), _noun_phrase(b, image_size)
        if template == 0:
            pieces += [(_article(np_a), None), (np_a, first), (f" {_relation(a, b)} the ", None), (np_b, second)]
        else:
            pieces += [(_article(np_a), None), (np_a, first), (" and " + _article(np_b), None), (np_b, second)]
    text, spans = "", {}
    for piece, index in pieces:
        if index is not None:
            spans.setdefault(index, []).append((len(text), len(text) + len(piece)))
        text += piece
    return SceneCaption("grounding", text, tuple((i, tuple(s)) for i, s in spans.items()))


def _article(noun_phrase: str) -> str:
    return "an " if noun_phrase[0] in "aeiou" else "a "


def size_word(box: tuple[int, int, int, int], image_size: tuple[int, int]) -> str | None:
    """``"small"``, ``"large"`` or None, from the box's long side relative to the image's short side."""
    relative = max(box[2], box[3]) / min(image_size)
    if relative < SMALL_BELOW:
        return "small"
    if relative > LARGE_ABOVE:
        return "large"
    return None


def _noun_phrase(obj: SceneObject, image_size: tuple[int, int]) -> str:
    """``"[size] colour name"``: the colour word is that of the colour the object was drawn in."""
    words = [size_word(obj.box, image_size), colour_word(obj.category.rgb(obj.style)), obj.category.name]
    return " ".join(w for w in words if w)


def _region(box: tuple[int, int, int, int], image_size: tuple[int, int]) -> str:
    """Where the box's centre is: ``"at the top left"``, ``"at the bottom"``, ``"in the middle"``..."""
    x, y, w, h = box
    column = ("left", None, "right")[min(2, int(3 * (x + w / 2) / image_size[0]))]
    row = ("top", None, "bottom")[min(2, int(3 * (y + h / 2) / image_size[1]))]
    words = [word for word in (row, column) if word]
    return "at the " + " ".join(words) if words else "in the middle"


def _relation(a: SceneObject, b: SceneObject) -> str:
    """Where ``a`` is relative to ``b``: in front of / behind when they overlap, else the dominant direction."""
    ax, ay, aw, ah = a.box
    bx, by, bw, bh = b.box
    overlap_x = min(ax + aw, bx + bw) - max(ax, bx)
    overlap_y = min(ay + ah, by + bh) - max(ay, by)
    if overlap_x > 0 and overlap_y > 0:
        return "in front of" if a.order > b.order else "behind"
    dx = (ax + aw / 2) - (bx + bw / 2)
    dy = (ay + ah / 2) - (by + bh / 2)
    if max(overlap_x, overlap_y) > -4 and min(overlap_x, overlap_y) > -4:
        return "next to"  # touching, or almost
    if abs(dx) >= abs(dy):
        return "to the left of" if dx < 0 else "to the right of"
    return "above" if dy < 0 else "below"
