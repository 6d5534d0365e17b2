"""A deterministic, synthetic ODinW-style dataset: the offline ``demo`` task and the tests' data.

Example:
    >>> root = ensure_demo_data("~/.cache/odinw_bench/data")     # -> .../demo, written once
    >>> write_synthetic_export(tmp_path / "export", n_train=12)   # any size, for tests

The export has the layout of an ODinW zip (a Roboflow COCO export plus GLIP's files): ``train/``, ``valid/`` and
``test/``, each with its images, the raw ``_annotations.coco.json`` (with Roboflow's id-0 supercategory
placeholder), ``annotations_without_background.json`` (without it), and prepared few-shot files
``train/fewshot_train_shot{k}_seed{s}.json`` / ``valid/fewshot_val_shot{k}_seed{s}.json`` for k in 1/3/5/10 and
seeds 3/30/300, drawn with GLIP's k-shot rule.

Each category has its own shape and colour on a noisy background, so a small detector can learn them:
apple = red disc, banana = yellow elongated ellipse, cherry = pair of small dark-red discs, lemon = yellow-green
oval. With ``quirks=True`` the train split also carries the oddities real ODinW exports have: a grayscale PNG, an
RGBA PNG, a JPEG with an EXIF orientation tag, an image without boxes, a file name with spaces, a box overflowing
the image, a degenerate box, and non-contiguous annotation ids (1-based).
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path

from odinw_bench.atomic import atomic_write_bytes
from odinw_bench.errors import UserError

logger = logging.getLogger(__name__)

# Bump when the generated files change, so cached demo data is regenerated (2: annotation ids start at 1).
GENERATOR_VERSION = 2
MARKER_NAME = ".odinw_bench_synthetic.json"
DEMO_CATEGORIES: tuple[dict, ...] = (
    {"id": 1, "name": "apple", "supercategory": "fruit"},
    {"id": 2, "name": "banana", "supercategory": "fruit"},
    {"id": 3, "name": "cherry", "supercategory": "fruit"},
    {"id": 4, "name": "lemon", "supercategory": "fruit"},
)
# (folder, name used in GLIP's few-shot file names); test has no prepared files in ODinW.
_FOLDERS = (("train", "train"), ("valid", "val"), ("test", None))
# Train-image index of each quirk (quirks=True needs n_train > the largest).
QUIRK_INDEX = {"grayscale": 0, "rgba": 1, "exif": 2, "no_boxes": 3, "spaces": 4, "overflow": 5, "degenerate": 6}
EXIF_ORIENTATION = 6  # "rotate 90° clockwise to display": the stored pixels are the displayed image turned back
_DATE = "2021-01-01T00:00:00+00:00"  # fixed, so the JSON bytes are reproducible

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
    for offset, (folder, fewshot_name) in enumerate(_FOLDERS):
        rng = np.random.default_rng([seed, offset])  # one stream per split: sizes of one split never shift another
        split_dir = out_dir / folder
        split_dir.mkdir(parents=True, exist_ok=True)
        split_quirks = quirks and folder == "train"
        coco = _write_split_images(split_dir, folder, counts[folder], image_size, categories, split_quirks, rng)
        _write_annotation_files(split_dir, coco, categories)
        if fewshot_name is not None:
            _write_fewshot_files(split_dir, fewshot_name)
    logger.info("wrote synthetic export to %s", out_dir)
    return out_dir


def ensure_demo_data(data_root: str | Path) -> Path:
    """Generate the ``demo`` task's data under ``<data_root>/demo`` unless an up-to-date copy is there.

    The export is written to a temporary folder and renamed into place, so a crash never leaves a half-written
    dataset, and concurrent callers (parallel tests) end up with one complete copy.

    Returns:
        The ``demo`` folder.

    Raises:
        UserError: If ``data_root`` cannot be written.
    """
    data_root = Path(data_root).expanduser()
    target = data_root / "demo"
    wanted = {"generator_version": GENERATOR_VERSION, "seed": 0}
    if _marker(target) == wanted:
        return target
    try:
        data_root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".demo.tmp-", dir=data_root))
    except OSError as err:
        raise UserError(f"cannot write the demo data: {err.strerror or err}", path=data_root) from None
    try:
        write_synthetic_export(tmp)
        atomic_write_bytes(tmp / MARKER_NAME, json.dumps(wanted, sort_keys=True).encode())
        if _marker(target) == wanted:  # another process finished first: keep its copy, readers may be using it
            return target
        if target.exists():  # an older generator version: move it aside, then delete it
            stale = data_root / f".demo.stale-{uuid.uuid4().hex}"
            os.rename(target, stale)
            shutil.rmtree(stale, ignore_errors=True)
        os.rename(tmp, target)
        logger.info("generated demo data in %s", target)
    except OSError as err:
        if _marker(target) != wanted:  # not a lost race against another process: a real failure
            raise UserError(f"cannot write the demo data: {err.strerror or err}", path=target) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _marker(folder: Path) -> dict | None:
    try:
        return json.loads((folder / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return None


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
        width, height = image_size  # as displayed: the EXIF image's stored pixels are turned, its JSON size is not
        images.append(
            {
                "id": index,
                "license": 1,
                "file_name": file_name,
                "height": height,
                "width": width,
                "date_captured": _DATE,
            }
        )
        for category_id, bbox in boxes:
            # Non-contiguous ids (gaps of 0-2), as exports merged or edited in Roboflow have; 1-based, as COCO's
            # own files are (pycocotools never matches a ground-truth box whose id is 0).
            next_ann_id += 1 + (int(rng.integers(0, 3)) if quirks else 0)
            annotations.append(
                {
                    "id": next_ann_id,
                    "image_id": index,
                    "category_id": category_id,
                    "bbox": bbox,
                    "area": bbox[2] * bbox[3],
                    "segmentation": [],
                    "iscrowd": 0,
                }
            )
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

    buffer = io.BytesIO()
    stored = canvas
    if quirk == "grayscale":
        stored = canvas.convert("L")
        stored.save(buffer, format="PNG")
    elif quirk == "rgba":
        stored = canvas.convert("RGBA")
        stored.putalpha(230)
        stored.save(buffer, format="PNG")
    elif quirk == "exif":
        # Store the pixels turned 90° counter-clockwise; a viewer honouring the tag turns them back.
        stored = canvas.transpose(Image.Transpose.ROTATE_90)
        exif = Image.Exif()
        exif[0x0112] = EXIF_ORIENTATION
        stored.save(buffer, format="JPEG", quality=92, exif=exif.tobytes())
    else:
        stored.save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def _write_annotation_files(split_dir: Path, coco: dict, categories: list[dict]) -> None:
    """Write the raw Roboflow file (with the id-0 placeholder) and GLIP's ``annotations_without_background``."""
    supercategory = categories[0].get("supercategory") or "objects"
    raw = {
        "info": {"description": "odinw_bench synthetic ODinW-style export", "version": str(GENERATOR_VERSION)},
        "licenses": [{"id": 1, "name": "CC BY 4.0", "url": "https://creativecommons.org/licenses/by/4.0/"}],
        "categories": [{"id": 0, "name": supercategory, "supercategory": "none"}] + categories,
        **coco,
    }
    clean = {**raw, "categories": categories}
    atomic_write_bytes(split_dir / "_annotations.coco.json", _json_bytes(raw))
    atomic_write_bytes(split_dir / "annotations_without_background.json", _json_bytes(clean))


def _write_fewshot_files(split_dir: Path, fewshot_name: str) -> None:
    """Write ``fewshot_{name}_shot{k}_seed{s}.json`` with GLIP's k-shot rule, as the official files are laid out."""
    from odinw_bench.data.coco import read_split
    from odinw_bench.data.sampling import DEFAULT_SEEDS, PREPARED_SHOTS, glip_kshot_ids

    split = read_split(split_dir / "annotations_without_background.json", split_dir)
    for shots in PREPARED_SHOTS:
        for seed in DEFAULT_SEEDS:
            chosen = split.subset(glip_kshot_ids(split, shots, seed)).to_coco_dict()
            path = split_dir / f"fewshot_{fewshot_name}_shot{shots}_seed{seed}.json"
            atomic_write_bytes(path, _json_bytes(chosen))


def _json_bytes(data: dict) -> bytes:
    return (json.dumps(data, indent=1) + "\n").encode("utf-8")
