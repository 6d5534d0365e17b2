"""The demo suite: four small built-in synthetic ODinW-style tasks on which transfer from glip-nano is visible.

Each task is a recipe (:class:`DemoTaskRecipe`, data only): its categories and the look each is drawn with (a
category of the pre-training vocabulary, :mod:`odinw_bench.data.vocabulary`, or a new look of
:mod:`odinw_bench.data.demo_looks`), the backgrounds, instance style, clutter and object sizes of its scenes, and
its split sizes. Like ODinW's tasks they differ in how far they are from the pre-training data:

* ``demo_playroom``: seen categories under their own names, on floors the corpus never had, smaller (mild shift);
* ``demo_sketches``: seen categories drawn as grey pencil sketches on paper (strong style shift);
* ``demo_pantry``: seen foods, two under their own names and two renamed to words the corpus never uses (the
  task YAML's ``odinw_35`` prompt variant restores the descriptive names);
* ``demo_gadgets``: new looks under new names (nothing to transfer but the detector itself).

The export has the layout of the fruit ``demo`` task (:mod:`odinw_bench.data.synthetic`), written by the same
:mod:`odinw_bench.data.export_writer`. Example::

    recipe = demo_recipes()["demo_pantry"]
    write_demo_task(recipe, "out/demo_pantry")          # same recipe -> same bytes
    ensure_demo_task(recipe, data_root / "demo_pantry") # generated once, again when the recipe changes
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from odinw_bench.atomic import atomic_write_bytes
from odinw_bench.data.export_writer import (
    SPLIT_FOLDERS,
    coco_box,
    coco_image,
    ensure_generated,
    jpeg_bytes,
    write_split_files,
)

logger = logging.getLogger(__name__)

#: Bump when the generated files change for the same recipe (drawing or layout code): cached copies regenerate.
DEMO_SUITE_VERSION = 1


@dataclass(frozen=True)
class DemoCategory:
    """One category of a demo task.

    Attributes:
        name: Its name in the task's annotation files and default prompt.
        look: How it is drawn: a vocabulary category name, or a key of ``demo_looks.NEW_LOOKS``.
    """

    name: str
    look: str


@dataclass(frozen=True)
class DemoTaskRecipe:
    """How one demo task's data is generated (the same recipe always gives the same bytes).

    Attributes:
        name: The recipe's name (the task's name; task YAMLs name it in ``synthetic_recipe``).
        supercategory: The categories' supercategory (also Roboflow's id-0 placeholder name).
        categories: In label order (ids 1..N).
        backgrounds: Background kinds (keys of ``demo_looks.BACKGROUNDS``), one drawn per image.
        style: Instance style (a key of ``demo_looks.STYLES``).
        clutter: Clutter kind (a key of ``demo_looks.CLUTTER``).
        size_range: An object's long side, as a fraction of the image's short side (log-uniform).
        n_objects: Inclusive range of objects per image.
        n_clutter: Inclusive range of clutter marks per image.
        counts: Images in train, valid and test.
        image_size: ``(width, height)``.
        seed: Generator seed.
    """

    name: str
    supercategory: str
    categories: tuple[DemoCategory, ...]
    backgrounds: tuple[str, ...]
    style: str = "jitter"
    clutter: str = "corpus"
    size_range: tuple[float, float] = (0.15, 0.45)
    n_objects: tuple[int, int] = (2, 5)
    n_clutter: tuple[int, int] = (0, 3)
    counts: tuple[int, int, int] = (40, 16, 24)
    image_size: tuple[int, int] = (160, 128)
    seed: int = 0

    def coco_categories(self) -> list[dict]:
        """``[{"id", "name", "supercategory"}]`` in label order."""
        return [{"id": i, "name": c.name, "supercategory": self.supercategory}
                for i, c in enumerate(self.categories, start=1)]

    def sha256(self) -> str:
        """SHA-256 of every field: a cached copy made from another recipe is regenerated."""
        return hashlib.sha256(repr(dataclasses.astuple(self)).encode()).hexdigest()


def _cats(*pairs: tuple[str, str]) -> tuple[DemoCategory, ...]:
    return tuple(DemoCategory(name, look) for name, look in pairs)


def demo_recipes() -> dict[str, DemoTaskRecipe]:
    """The demo suite's recipes by name, in suite order (built on each call: nothing is global state)."""
    recipes = (
        # Seen categories, own names; floors the corpus never had, objects smaller than its 12-50 %.
        DemoTaskRecipe("demo_playroom", "toys",
                       _cats(("beach ball", "beach ball"), ("dice", "dice"), ("balloon", "balloon"), ("gift", "gift")),
                       backgrounds=("planks", "carpet", "polka"), size_range=(0.1, 0.3), seed=101),
        # Seen categories as grey pencil sketches (outline or hatching) on plain paper.
        DemoTaskRecipe("demo_sketches", "sketches",
                       _cats(("umbrella", "umbrella"), ("house", "house"), ("fish", "fish"),
                             ("pine tree", "pine tree")),
                       backgrounds=("paper",), style="sketch", clutter="pencil", size_range=(0.2, 0.5), seed=102),
        # Seen foods in the corpus's own scenes; tomato and egg renamed to words the corpus never uses.
        DemoTaskRecipe("demo_pantry", "food",
                       _cats(("carrot", "carrot"), ("solanum", "tomato"), ("cheese", "cheese"), ("ovum", "egg")),
                       backgrounds=("corpus",), n_clutter=(0, 4), seed=103),
        # New looks under new names, in the corpus's own scenes.
        DemoTaskRecipe("demo_gadgets", "gadgets",
                       _cats(("robot", "robot"), ("rocket", "rocket"), ("guitar", "guitar"), ("anchor", "anchor")),
                       backgrounds=("corpus",), size_range=(0.2, 0.5), n_clutter=(0, 4), seed=104),
    )
    return {recipe.name: recipe for recipe in recipes}


def write_demo_task(recipe: DemoTaskRecipe, out_dir: str | Path) -> Path:
    """Write ``recipe``'s export (train/valid/test, annotation and few-shot files) into ``out_dir``.

    Returns:
        ``out_dir`` as a Path.
    """
    import numpy as np

    out_dir = Path(out_dir)
    categories = recipe.coco_categories()
    for offset, (folder, fewshot_name) in enumerate(SPLIT_FOLDERS):
        rng = np.random.default_rng([recipe.seed, offset])  # one stream per split: sizes of one never shift another
        split_dir = out_dir / folder
        split_dir.mkdir(parents=True, exist_ok=True)
        coco = _write_split_images(recipe, split_dir, folder, recipe.counts[offset], rng)
        write_split_files(split_dir, coco, categories, fewshot_name, version=str(DEMO_SUITE_VERSION))
    logger.info("wrote demo task %s to %s", recipe.name, out_dir)
    return out_dir


def ensure_demo_task(recipe: DemoTaskRecipe, target: str | Path) -> Path:
    """Generate ``recipe``'s export in ``target`` unless a copy from this recipe and generator version is there.

    Written to a temporary folder and renamed into place (see
    :func:`~odinw_bench.data.export_writer.ensure_generated`).

    Raises:
        UserError: If the folder cannot be written.
    """
    marker = {"generator_version": DEMO_SUITE_VERSION, "recipe": recipe.name, "recipe_sha256": recipe.sha256()}
    return ensure_generated(Path(target).expanduser(), marker, lambda folder: write_demo_task(recipe, folder),
                            what=f"the {recipe.name} data")


def _write_split_images(recipe: DemoTaskRecipe, split_dir: Path, folder: str, n_images: int, rng) -> dict:
    """Render and save one split's images; returns ``{"images": [...], "annotations": [...]}``."""
    images, annotations = [], []
    for index in range(n_images):
        canvas, boxes = _render_image(recipe, index, rng)
        file_name = f"{folder}_{index:03d}.jpg"
        atomic_write_bytes(split_dir / file_name, jpeg_bytes(canvas))
        images.append(coco_image(index, file_name, recipe.image_size))
        for category_id, box in boxes:
            annotations.append(coco_box(len(annotations) + 1, index, category_id, list(box)))
    return {"images": images, "annotations": annotations}


def _render_image(recipe: DemoTaskRecipe, index: int, rng):
    """One image: a background, clutter, then objects; returns the PIL image and ``[(category_id, box)]``."""
    from PIL import Image

    from odinw_bench.data.demo_looks import BACKGROUNDS, CLUTTER, NEW_LOOKS, STYLES
    from odinw_bench.data.scenes import place_box
    from odinw_bench.data.vocabulary import CATEGORIES, draw

    width, height = recipe.image_size
    kind = recipe.backgrounds[int(rng.integers(0, len(recipe.backgrounds)))]
    canvas = Image.fromarray(BACKGROUNDS[kind](rng, width, height), "RGB")
    for _ in range(int(rng.integers(recipe.n_clutter[0], recipe.n_clutter[1] + 1))):
        CLUTTER[recipe.clutter](canvas, rng)
    boxes: list[tuple[int, tuple[int, int, int, int]]] = []
    for k in range(int(rng.integers(recipe.n_objects[0], recipe.n_objects[1] + 1))):
        # The first object cycles through the categories: every split has every category, train >= 10 times each.
        position = index % len(recipe.categories) if k == 0 else int(rng.integers(0, len(recipe.categories)))
        look_name = recipe.categories[position].look
        look = NEW_LOOKS[look_name] if look_name in NEW_LOOKS else CATEGORIES[look_name]
        box = place_box(rng, look, recipe.image_size, [b for _, b in boxes], recipe.size_range)
        if box is None:
            continue
        draw(look, canvas, box, STYLES[recipe.style](rng), rng)
        boxes.append((position + 1, box))
    return canvas, boxes
