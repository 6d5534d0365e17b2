"""A deterministic, synthetic ODinW-style dataset: the offline ``demo`` task and the tests' data.

Example:
    >>> root = ensure_demo_data("~/.cache/odinw_bench/data")     # -> .../demo, written once
    >>> write_synthetic_export(tmp_path / "export", n_train=12)   # any size, for tests

The export has the layout of an ODinW zip (a Roboflow COCO export plus GLIP's files): ``train/``, ``valid/`` and
``test/``, each with its images, the raw ``_annotations.coco.json`` (with Roboflow's id-0 supercategory
placeholder), ``annotations_without_background.json`` (without it), and prepared few-shot files
``train/fewshot_train_shot{k}_seed{s}.json`` / ``valid/fewshot_val_shot{k}_seed{s}.json`` for k in 1/3/5/10 and
seeds 3/30/300, drawn with GLIP's k-shot rule; :mod:`odinw_bench.data.export_writer` writes them (the demo suite,
:mod:`odinw_bench.data.demo_suite`, shares it).

Each category has its own shape and colour on a noisy background, so a small detector can learn them:
apple = red disc, banana = yellow elongated ellipse, cherry = pair of small dark-red discs, lemon = yellow-green
oval. With ``quirks=True`` the train split also carries the oddities real ODinW exports have: a grayscale PNG, an
RGBA PNG, a JPEG with an EXIF orientation tag, an image without boxes, a file name with spaces, a box overflowing
the image, a degenerate box, and non-contiguous annotation ids (1-based).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
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

# Bump when the generated files change, so cached demo data is regenerated (2: annotation ids start at 1).
GENERATOR_VERSION = 2
#: The recipe name the fruit generator records in its marker (a task YAML names it by an empty synthetic_recipe).
FRUIT_RECIPE = "fruit"
DEMO_CATEGORIES: tuple[dict, ...] = (
    {"id": 1, "name": "apple", "supercategory": "fruit"},
    {"id": 2, "name": "banana", "supercategory": "fruit"},
    {"id": 3, "name": "cherry", "supercategory": "fruit"},
    {"id": 4, "name": "lemon", "supercategory": "fruit"},
)
# Train-image index of each quirk (quirks=True needs n_train > the largest).
QUIRK_INDEX = {"grayscale": 0, "rgba": 1, "exif": 2, "no_boxes": 3, "spaces": 4, "overflow": 5, "degenerate": 6}
EXIF_ORIENTATION = 6  # "rotate 90° clockwise to display": the stored pixels are the displayed image turned back

# Per-category look: RGB colour, width range in pixels, height / width ratio.
_LOOKS = {
    "apple": ((205, 35, 35), (18, 34), 1.0),
    "banana": ((240, 215, 50), (38, 58), 0.34),
    "cherry": ((115, 0, 25), (20, 28), 0.5),
    "lemon": ((185, 225, 60), (22, 32), 0.72),
}
_FALLBACK_COLOURS = ((40, 90, 220), (230, 120, 20), (150, 60, 200), (20, 170, 160), (240, 240, 240))


def write_synthetic_export(
    out_dir: str | Path,
    *,
    seed: int = 0,
    n_train: int = 24,
    n_valid: int = 8,
    n_test: int = 8,
    image_size: tuple[int, int] = (160, 128),
    categories: Sequence[dict] = DEMO_CATEGORIES,
    quirks: bool = True,
) -> Path:
    """Write a Roboflow-style ODinW export to ``out_dir`` (same arguments -> same JSON and image bytes).

    Args:
        out_dir: Destination folder (created; existing files with the same names are replaced).
        seed: Generator seed.
        n_train: Train images.
        n_valid: Validation images.
        n_test: Test images.
        image_size: ``(width, height)`` of every image (as displayed).
        categories: ``[{"id", "name", "supercategory"}]``; ids must be >= 1 (0 is Roboflow's placeholder).
        quirks: Add the ODinW oddities listed in the module docstring to the train split.

    Returns:
        ``out_dir`` as a Path.
    """
    import numpy as np

    categories = [dict(c) for c in categories]
    if any(c["id"] < 1 for c in categories):
        raise ValueError("category ids must be >= 1; id 0 is the Roboflow placeholder")
    if quirks and n_train <= max(QUIRK_INDEX.values()):
        raise ValueError(f"quirks=True needs n_train > {max(QUIRK_INDEX.values())}")
    out_dir = Path(out_dir)
    counts = {"train": n_train, "valid": n_valid, "test": n_test}
    for offset, (folder, fewshot_name) in enumerate(SPLIT_FOLDERS):
        rng = np.random.default_rng([seed, offset])  # one stream per split: sizes of one split never shift another
        split_dir = out_dir / folder
        split_dir.mkdir(parents=True, exist_ok=True)
        split_quirks = quirks and folder == "train"
        coco = _write_split_images(split_dir, folder, counts[folder], image_size, categories, split_quirks, rng)
        write_split_files(split_dir, coco, categories, fewshot_name, version=str(GENERATOR_VERSION))
    logger.info("wrote synthetic export to %s", out_dir)
    return out_dir


def ensure_demo_data(data_root: str | Path) -> Path:
    """Generate the ``demo`` task's data under ``<data_root>/demo`` unless an up-to-date copy is there.

    The export is written to a temporary folder and renamed into place, so a crash never leaves a half-written
    dataset, and concurrent callers (parallel tests) end up with one complete copy (see
    :func:`~odinw_bench.data.export_writer.ensure_generated`).

    Returns:
        The ``demo`` folder.

    Raises:
        UserError: If ``data_root`` cannot be written.
    """
    target = Path(data_root).expanduser() / "demo"
    marker = {"generator_version": GENERATOR_VERSION, "recipe": FRUIT_RECIPE, "seed": 0}
    # write_synthetic_export is looked up when called, so tests can replace it.
    return ensure_generated(target, marker, lambda folder: write_synthetic_export(folder), what="the demo data")


def _write_split_images(split_dir, folder, n_images, image_size, categories, quirks, rng) -> dict:
    """Render and save one split's images; returns ``{"images": [...], "annotations": [...]}``."""
    images, annotations = [], []
    quirk_at = {i: q for q, i in QUIRK_INDEX.items()} if quirks else {}
    next_ann_id = 0
    for index in range(n_images):
        quirk = quirk_at.get(index)
        canvas, boxes = _render_image(index, image_size, categories, quirk, rng)
        stem = f"{folder} fruit {index:03d}" if quirk == "spaces" else f"{folder}_{index:03d}"
        file_name = stem + (".png" if quirk in ("grayscale", "rgba") else ".jpg")
        encoded = _encode(canvas, quirk)
        atomic_write_bytes(split_dir / file_name, encoded)
        # As displayed: the EXIF image's stored pixels are turned, its JSON size is not.
        images.append(coco_image(index, file_name, image_size))
        for category_id, bbox in boxes:
            # Non-contiguous ids (gaps of 0-2), as exports merged or edited in Roboflow have; 1-based, as COCO's
            # own files are (pycocotools never matches a ground-truth box whose id is 0).
            next_ann_id += 1 + (int(rng.integers(0, 3)) if quirks else 0)
            annotations.append(coco_box(next_ann_id, index, category_id, bbox))
    return {"images": images, "annotations": annotations}


def _render_image(index, image_size, categories, quirk, rng):
    """One displayed image with 1-3 objects; returns the PIL image and ``[(category_id, [x, y, w, h])]``."""
    import numpy as np
    from PIL import Image, ImageDraw

    width, height = image_size
    base = rng.integers(70, 150, size=3)
    noise = rng.normal(0.0, 16.0, size=(height, width, 3))
    canvas = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(canvas)
    boxes: list[tuple[int, list[int]]] = []
    n_objects = 0 if quirk == "no_boxes" else int(rng.integers(1, 4))
    for k in range(n_objects):
        # The first object cycles through the categories so that every split covers all of them.
        cat_pos = (index % len(categories)) if k == 0 else int(rng.integers(0, len(categories)))
        category = categories[cat_pos]
        taken = [b for _, b in boxes]
        box = _place_box(category["name"], cat_pos, image_size, taken, rng, overflow=quirk == "overflow" and k == 0)
        if box is None:
            continue
        _draw_object(draw, category["name"], cat_pos, box, rng)
        boxes.append((category["id"], box))
    if quirk == "degenerate" and boxes:
        # A 1 px wide slip of the annotation tool (GLIP treats w <= 1 as empty), on a category the image already
        # has: GLIP's k-shot rule counts the categories of every annotation, degenerate ones included.
        x, y = int(rng.integers(0, width - 2)), int(rng.integers(0, height - 12))
        boxes.append((boxes[0][0], [x, y, 1, 10]))
    return canvas, boxes


def _look(name: str, cat_pos: int):
    return _LOOKS.get(name, (_FALLBACK_COLOURS[cat_pos % len(_FALLBACK_COLOURS)], (20, 36), 0.8))


def _place_box(name, cat_pos, image_size, taken, rng, *, overflow=False) -> list[int] | None:
    """A box for one object that overlaps the others little; overflowing the right edge when asked."""
    width, height = image_size
    _, (w_min, w_max), ratio = _look(name, cat_pos)
    for _ in range(30):
        w = int(rng.integers(w_min, w_max + 1))
        h = max(4, round(w * ratio))
        if name == "banana" and rng.random() < 0.5:
            w, h = h, w  # upright bananas too
        w, h = min(w, width - 1), min(h, height - 1)
        x = width - w // 2 if overflow else int(rng.integers(0, width - w + 1))
        y = int(rng.integers(0, height - h + 1))
        box = [x, y, w, h]
        if all(_iou(box, other) < 0.1 for other in taken):
            return box
    return None


def _iou(a: list[int], b: list[int]) -> float:
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def _draw_object(draw, name: str, cat_pos: int, box: list[int], rng) -> None:
    """Draw one object filling ``box`` (pixels x..x+w-1, y..y+h-1)."""
    colour, _, _ = _look(name, cat_pos)
    jitter = rng.integers(-12, 13, size=3)
    fill = tuple(int(min(255, max(0, c + j))) for c, j in zip(colour, jitter))
    x, y, w, h = box
    x1, y1 = x + w - 1, y + h - 1
    if name == "cherry":  # two small discs side by side (or stacked when upright)
        d = min(w, h)
        draw.ellipse([x, y, x + d - 1, y + d - 1], fill=fill)
        draw.ellipse([x1 - d + 1, y1 - d + 1, x1, y1], fill=fill)
    elif name in _LOOKS:
        draw.ellipse([x, y, x1, y1], fill=fill)
    else:
        draw.rectangle([x, y, x1, y1], fill=fill)


def _encode(canvas, quirk: str | None) -> bytes:
    """Encode one image as its quirk asks: JPEG by default, grayscale / RGBA PNG, or EXIF-rotated JPEG."""
    from PIL import Image

    if quirk not in ("grayscale", "rgba", "exif"):
        return jpeg_bytes(canvas)
    buffer = io.BytesIO()
    if quirk == "grayscale":
        canvas.convert("L").save(buffer, format="PNG")
    elif quirk == "rgba":
        stored = canvas.convert("RGBA")
        stored.putalpha(230)
        stored.save(buffer, format="PNG")
    else:
        # Store the pixels turned 90° counter-clockwise; a viewer honouring the tag turns them back.
        exif = Image.Exif()
        exif[0x0112] = EXIF_ORIENTATION
        canvas.transpose(Image.Transpose.ROTATE_90).save(buffer, format="JPEG", quality=92, exif=exif.tobytes())
    return buffer.getvalue()
