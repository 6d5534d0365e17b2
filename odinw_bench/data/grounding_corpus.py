"""The synthetic grounding corpus GLIP-nano pre-trains on: writing one, and reading one back.

A corpus is a folder with ``corpus.json`` and ``images/<file_name>`` (PNG, RGB). ``corpus.json`` (format
``odinw_bench-grounding-corpus``, version 1) holds ``generator`` (name, version, seed, settings), ``categories``
(the vocabulary, ids 1..N), ``images``, ``annotations`` (``bbox = [x, y, w, h]`` in pixels) and ``captions``: per
image one detection prompt and a few grounding phrases, each listing the annotations it grounds with the character
spans (end exclusive) of the words naming them. Every annotation is grounded by at least one caption of its image.
Example::

    from odinw_bench.data.corpus_reader import caption_token_map, read_corpus
    from odinw_bench.data.grounding_corpus import write_corpus

    write_corpus("corpus", n_images=1000, seed=0)          # same arguments -> byte-identical files
    corpus = read_corpus("corpus")                          # validated; UserError naming the field otherwise
    for caption in corpus.captions_of(corpus.images[0].id):
        caption.text, caption_token_map(caption)            # {annotation id: [token indices]}

The reader lives in :mod:`odinw_bench.data.corpus_reader`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import uuid
from pathlib import Path

from odinw_bench.atomic import atomic_write_bytes
from odinw_bench.data.corpus_reader import (
    CORPUS_FILE,
    FORMAT_NAME,
    FORMAT_VERSION,
    IMAGES_DIR,
)
from odinw_bench.errors import UserError

logger = logging.getLogger(__name__)

GENERATOR_NAME = "odinw_bench.synthetic-grounding"
#: Bump when the generated files change for the same arguments (scenes, captions or vocabulary).
GENERATOR_VERSION = 1


def write_corpus(
    out_dir: str | Path,
    n_images: int,
    seed: int,
    image_size: tuple[int, int] = (160, 128),
    *,
    n_objects: tuple[int, int] = (2, 6),
    n_negatives: tuple[int, int] = (3, 10),
    grounding_per_image: int = 2,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Generate a corpus into ``out_dir`` (same arguments -> byte-identical ``corpus.json`` and images).

    The corpus is written into a temporary folder beside ``out_dir`` and renamed into place, so a crash never
    leaves a half-written corpus. Image ``i`` depends only on ``(seed, i)``: a larger corpus extends a smaller one.

    Args:
        out_dir: The corpus folder to create.
        n_images: Number of images (>= 1).
        seed: Generator seed.
        image_size: ``(width, height)`` of every image.
        n_objects: Inclusive range of objects per image.
        n_negatives: Inclusive range of absent category names per detection prompt.
        grounding_per_image: Grounding phrases per image.
        overwrite: Replace an existing ``out_dir``; otherwise an existing one is an error.
        progress: Show a progress bar over the images.

    Returns:
        ``out_dir`` as a Path.

    Raises:
        UserError: If ``out_dir`` exists (without ``overwrite``) or cannot be written, or an argument is invalid.
    """
    out_dir = Path(out_dir).expanduser()
    _check_arguments(n_images, image_size, n_objects, n_negatives, grounding_per_image)
    if out_dir.exists() and not overwrite:
        raise UserError("already exists; choose another folder or overwrite it", path=out_dir)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    except OSError as err:
        raise UserError(f"cannot write the corpus: {err.strerror or err}", path=out_dir) from None
    try:
        settings = {"image_size": list(image_size), "n_objects": list(n_objects), "n_negatives": list(n_negatives),
                    "grounding_per_image": grounding_per_image}
        corpus = _generate(tmp, n_images, seed, settings, progress)
        atomic_write_bytes(tmp / CORPUS_FILE, (json.dumps(corpus, separators=(",", ":")) + "\n").encode("utf-8"))
        if out_dir.exists():  # overwrite: move the old corpus aside first, so the rename below cannot fail on it
            stale = out_dir.parent / f".{out_dir.name}.stale-{uuid.uuid4().hex}"
            os.rename(out_dir, stale)
            shutil.rmtree(stale, ignore_errors=True)
        os.rename(tmp, out_dir)
    except OSError as err:
        raise UserError(f"cannot write the corpus: {err.strerror or err}", path=out_dir) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("wrote a grounding corpus of %d images to %s", n_images, out_dir)
    return out_dir


def _check_arguments(n_images, image_size, n_objects, n_negatives, grounding_per_image) -> None:
    if n_images < 1:
        raise UserError(f"must be >= 1, got {n_images}", field="n_images")
    if min(image_size) < 32:
        raise UserError(f"must be at least 32 x 32 pixels, got {tuple(image_size)}", field="image_size")
    if not 1 <= n_objects[0] <= n_objects[1]:
        raise UserError(f"must be a range 1 <= low <= high, got {tuple(n_objects)}", field="n_objects")
    if not 0 <= n_negatives[0] <= n_negatives[1]:
        raise UserError(f"must be a range 0 <= low <= high, got {tuple(n_negatives)}", field="n_negatives")
    if grounding_per_image < 0:
        raise UserError(f"must be >= 0, got {grounding_per_image}", field="grounding_per_image")


def _generate(folder: Path, n_images: int, seed: int, settings: dict, progress: bool = False) -> dict:
    """Render every image into ``folder/images`` and return the ``corpus.json`` content."""
    import numpy as np
    from tqdm.auto import tqdm

    from odinw_bench.data.captions import detection_caption, grounding_caption
    from odinw_bench.data.scenes import render_scene
    from odinw_bench.data.vocabulary import CATEGORIES, VOCABULARY_VERSION

    categories = list(CATEGORIES.values())
    category_ids = {c.name: index for index, c in enumerate(categories, start=1)}
    names = list(category_ids)
    image_size = tuple(settings["image_size"])
    images, annotations, captions = [], [], []
    (folder / IMAGES_DIR).mkdir()
    for index in tqdm(range(1, n_images + 1), desc="corpus", unit="img", disable=not progress, leave=False):
        rng = np.random.default_rng([seed, index])  # one stream per image: image i never depends on the count
        scene = render_scene(rng, categories, image_size, n_objects=tuple(settings["n_objects"]))
        file_name = f"{index:06d}.png"
        scene.image.save(folder / IMAGES_DIR / file_name, format="PNG")
        images.append({"id": index, "file_name": file_name, "width": image_size[0], "height": image_size[1]})
        first_ann = len(annotations) + 1
        for offset, obj in enumerate(scene.objects):
            annotations.append({"id": first_ann + offset, "image_id": index,
                                "category_id": category_ids[obj.category.name], "bbox": list(obj.box)})
        scene_captions = [detection_caption(scene, names, rng, tuple(settings["n_negatives"]))]
        if scene.objects:
            scene_captions += [grounding_caption(scene, rng, image_size)
                               for _ in range(settings["grounding_per_image"])]
        for caption in scene_captions:
            boxes = [{"annotation_id": first_ann + obj_index, "spans": [list(s) for s in spans]}
                     for obj_index, spans in caption.boxes]
            captions.append({"id": len(captions) + 1, "image_id": index, "kind": caption.kind,
                             "text": caption.text, "boxes": boxes})
    generator = {"name": GENERATOR_NAME, "version": GENERATOR_VERSION, "seed": seed,
                 "vocabulary_version": VOCABULARY_VERSION, **settings}
    return {"format": FORMAT_NAME, "version": FORMAT_VERSION, "generator": generator,
            "categories": [{"id": i, "name": n} for n, i in category_ids.items()],
            "images": images, "annotations": annotations, "captions": captions}
