"""A tiny grounding corpus (format version 1) for pre-training tests: 64x64 images of coloured rectangles."""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {"red block": (220, 30, 30), "blue block": (30, 60, 220), "green bar": (30, 180, 60)}


def make_corpus(folder: Path, n_images: int = 6, seed: int = 0, size: tuple[int, int] = (64, 64)) -> Path:
    """Write ``folder/corpus.json`` and ``folder/images/*.png``; each image has one detection and one grounding
    caption."""
    rng = random.Random(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    names = list(COLOURS)
    cats = [{"id": i + 1, "name": n} for i, n in enumerate(names)]
    images, anns, caps = [], [], []
    for image_id in range(1, n_images + 1):
        im = Image.new("RGB", size, (200, 200, 190))
        draw = ImageDraw.Draw(im)
        present = rng.sample(names, 2)
        ids = []
        for name in present:
            w, h = (rng.randint(16, 28), rng.randint(16, 28)) if name != "green bar" else (rng.randint(30, 40), 8)
            x, y = rng.randint(0, size[0] - 1 - w), rng.randint(0, size[1] - 1 - h)
            draw.rectangle([x, y, x + w - 1, y + h - 1], fill=COLOURS[name])
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": names.index(name) + 1,
                         "bbox": [x, y, w, h]})
            ids.append(len(anns))
        file_name = f"{image_id:04d}.png"
        im.save(folder / "images" / file_name)
        images.append({"id": image_id, "file_name": file_name, "width": size[0], "height": size[1]})
        prompt = ". ".join(names)
        caps.append({"id": len(caps) + 1, "image_id": image_id, "kind": "detection", "text": prompt,
                     "boxes": [{"annotation_id": a, "spans": [[prompt.index(n), prompt.index(n) + len(n)]]}
                               for a, n in zip(ids, present)]})
        text = f"a {present[0]} next to the {present[1]}"
        first, second = text.index(present[0]), text.rindex(present[1])
        caps.append({"id": len(caps) + 1, "image_id": image_id, "kind": "grounding", "text": text,
                     "boxes": [{"annotation_id": ids[0], "spans": [[first, first + len(present[0])]]},
                               {"annotation_id": ids[1], "spans": [[second, second + len(present[1])]]}]})
    corpus = {"format": "odinw_bench-grounding-corpus", "version": 1,
              "generator": {"name": "test-rectangles", "version": 1, "seed": seed},
              "categories": cats, "images": images, "annotations": anns, "captions": caps}
    (folder / "corpus.json").write_text(json.dumps(corpus), encoding="utf-8")
    return folder
