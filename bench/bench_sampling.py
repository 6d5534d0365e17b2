"""Benchmark: reading a 20k-box ODinW-style annotation file and drawing every k-shot sample from it.

Run:
    .venv/bin/python bench/bench_sampling.py            # prints the timings
    .venv/bin/python bench/bench_sampling.py --strict   # exit 1 when over the 1 s target

It writes a synthetic annotation JSON (no images) and GLIP-style prepared few-shot files to a temporary folder, then
times ``read_split`` and ``sample_kshot`` for shots 1/3/5/10 x seeds 3/30/300 with both samplers. Each phase is
run ``--repeat`` times and the best time is reported. Target: load + all sampling under 1 second.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
import warnings
from pathlib import Path

from odinw_bench.data.coco import read_split
from odinw_bench.data.sampling import (
    DEFAULT_SEEDS,
    PREPARED_SHOTS,
    SAMPLERS,
    ShortfallWarning,
    glip_kshot_ids,
    sample_kshot,
)
from odinw_bench.tasks.spec import CategorySpec, SplitSpec, TaskSpec

TARGET_SECONDS = 1.0


def make_annotations(n_images: int, n_boxes: int, n_categories: int, seed: int = 0) -> dict:
    """A COCO dict shaped like a large ODinW train split: skewed category frequencies, some empty images."""
    rng = random.Random(seed)
    images = [
        {"id": i, "file_name": f"img_{i:06d}_jpg.rf.{i:08x}.jpg", "width": 640, "height": 480} for i in range(n_images)
    ]
    weights = [1.0 / (c + 1) for c in range(n_categories)]
    annotations = []
    for ann_id in range(n_boxes):
        image_id = rng.randrange(n_images)
        w, h = rng.uniform(0.5, 200), rng.uniform(0.5, 200)
        x, y = rng.uniform(-20, 620), rng.uniform(-20, 460)  # some boxes overflow the image
        category = rng.choices(range(1, n_categories + 1), weights)[0]
        annotations.append(
            {"id": ann_id, "image_id": image_id, "category_id": category, "bbox": [x, y, w, h], "area": w * h,
             "segmentation": [], "iscrowd": 0}  # fmt: skip
        )
    categories = [{"id": c, "name": f"category {c}", "supercategory": "things"} for c in range(1, n_categories + 1)]
    return {"images": images, "annotations": annotations, "categories": categories}


def write_dataset(root: Path, data: dict) -> TaskSpec:
    """Write the annotation file and the prepared few-shot files; return a task that points at them."""
    train = root / "bench" / "train"
    train.mkdir(parents=True)
    ann_file = train / "annotations_without_background.json"
    ann_file.write_text(json.dumps(data))
    split = read_split(ann_file, train)
    for shots in PREPARED_SHOTS:
        for seed in DEFAULT_SEEDS:
            subset = split.subset(glip_kshot_ids(split, shots, seed)).to_coco_dict()
            (train / f"fewshot_train_shot{shots}_seed{seed}.json").write_text(json.dumps(subset))
    return TaskSpec(
        name="bench",
        display_name="Bench",
        root="bench",
        categories=[CategorySpec(id=c["id"], name=c["name"]) for c in data["categories"]],
        splits={"train": SplitSpec(ann_file="train/annotations_without_background.json", img_dir="train")},
        fewshot={"train": "train/fewshot_train_shot{shots}_seed{seed}.json"},
    )


def best_of(repeat: int, fn):
    """Run ``fn`` ``repeat`` times; return (best wall seconds, best CPU seconds of this process, last result).

    CPU time is reported too because wall time on a shared machine mostly measures the neighbours.
    """
    best_wall, best_cpu, result = float("inf"), float("inf"), None
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    return best_wall, best_cpu, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--boxes", type=int, default=20000)
    parser.add_argument("--categories", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--strict", action="store_true", help="exit 1 when load + sampling exceeds the target")
    args = parser.parse_args(argv)

    warnings.simplefilter("ignore", ShortfallWarning)  # rare categories run short at 10 shots, as in ODinW
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        task = write_dataset(root, make_annotations(args.images, args.boxes, args.categories))
        ann_file, img_dir = task.split_files("train", root)
        size_mb = ann_file.stat().st_size / 1e6
        t_load = best_of(args.repeat, lambda: read_split(ann_file, img_dir, task.categories))
        split = t_load[2]
        grid = [(k, s) for k in PREPARED_SHOTS for s in DEFAULT_SEEDS]

        def draw_all(sampler: str) -> list:
            return [sample_kshot(split, k, s, sampler, task=task, data_root=root) for k, s in grid]

        times = {sampler: best_of(args.repeat, lambda sampler=sampler: draw_all(sampler)) for sampler in SAMPLERS}
    rows = [("read_split", t_load)] + [(f"sample_kshot {name} ({len(grid)} samples)", t) for name, t in times.items()]
    total_wall = sum(t[0] for _, t in rows)
    total_cpu = sum(t[1] for _, t in rows)
    print(f"odinw_bench sampling benchmark (python {platform.python_version()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}, best of {args.repeat})")  # fmt: skip
    print(f"data: {args.images} images, {split.stats['n_boxes_in_file']} boxes, {args.categories} categories, "
          f"{size_mb:.1f} MB JSON")  # fmt: skip
    print(f"{'':<36}{'wall ms':>9}{'cpu ms':>9}")
    for label, (wall, cpu, _) in rows:
        print(f"{label:<36}{wall * 1e3:9.1f}{cpu * 1e3:9.1f}")
    verdict = "OK" if total_wall < TARGET_SECONDS else "OVER TARGET"
    print(f"{'total load + sampling':<36}{total_wall * 1e3:9.1f}{total_cpu * 1e3:9.1f}"
          f"   (target < {TARGET_SECONDS * 1e3:.0f} ms wall: {verdict})")  # fmt: skip
    total = total_wall
    return 1 if args.strict and total >= TARGET_SECONDS else 0


if __name__ == "__main__":
    sys.exit(main())
