"""How long a zero-shot ODinW-13 sweep of a GLIP model takes on one device, from synthetic images of ODinW's sizes.

Usage:
    python bench/bench_zero_shot_sweep.py                                  # glip-t, CPU, 2 images per size
    python bench/bench_zero_shot_sweep.py --device cuda --dtype bf16 --per-size 20
    python bench/bench_zero_shot_sweep.py --device cuda --dtype bf16 --all  # every image of every split

A zero-shot run scores each task's zero-shot split one image at a time (GLIP's TEST.IMS_PER_BATCH 1): decode,
resize to short side 800 (long side at most 1333), forward, post-process. Its cost per image depends on the
resized shape, so this script times ``--per-size`` synthetic images (random pixels, random weights) of each
distinct input shape (after the resize) through ``backend.preprocess`` and ``backend.predict`` (``torch.inference_mode``, autocast with
``--dtype bf16``), and projects each task's time as its image count times the per-image time of its shape. With
``--all`` it runs every image instead (no projection). Image counts and sizes come from
``bench/data/odinw13_zero_shot_splits.csv``, with their sources: the counts are GLIP's Table 9, the sizes partly
assumed (the datasets are not on this machine). Random weights make post-processing run at its 1000-candidate
cap per level, so its share is an upper bound. Each task's caption is its category names.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from odinw_bench.models.glip.backend import GLIPBackend  # noqa: E402
from odinw_bench.tasks.registry import resolve_tasks  # noqa: E402

SPLITS = Path(__file__).resolve().parent / "data" / "odinw13_zero_shot_splits.csv"


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_images(backend: GLIPBackend, size: tuple[int, int], count: int, device: str, dtype: str) -> list[float]:
    """Seconds per image of ``count`` random images of ``size`` (w, h), each alone, end to end."""
    gen = torch.Generator().manual_seed(size[0] * 7919 + size[1])
    autocast = torch.autocast(device.split(":")[0], dtype=torch.bfloat16) if dtype == "bf16" else contextlib.nullcontext()
    seconds = []
    for _ in range(count):
        pixels = (torch.rand(size[1], size[0], 3, generator=gen) * 255).to(torch.uint8).numpy()
        image = Image.fromarray(pixels)
        _sync(device)
        t0 = time.perf_counter()
        with torch.inference_mode(), autocast:
            detections = backend.predict(backend.preprocess([image]).to(device))
            _ = [d.boxes.float().cpu() for d in detections]
        _sync(device)
        seconds.append(time.perf_counter() - t0)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="glip-t")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--per-size", type=int, default=2, help="images timed per distinct size (after a warm-up)")
    parser.add_argument("--all", action="store_true", help="run every image of every split (no projection)")
    args = parser.parse_args()
    with open(SPLITS, newline="") as handle:
        rows = list(csv.DictReader(handle))
    torch.manual_seed(0)
    backend = GLIPBackend.from_preset(args.model).eval().to(args.device)
    gpu = f", {torch.cuda.get_device_name()}" if args.device.startswith("cuda") else ""
    print(f"torch {torch.__version__}, {args.model}, {args.device}{gpu}, {args.dtype}, "
          f"{torch.get_num_threads()} CPU threads; splits from {SPLITS.name}")
    per_shape: dict[tuple[int, ...], float] = {}  # by the resized, padded input shape: what the forward costs
    total, timed = 0.0, 0
    print(f"{'task':<24} {'split':<8} {'images':>6} {'size':>10} {'s/img':>7} {'task s':>9}  how")
    for row in rows:
        ((task, _),) = resolve_tasks(row["task"])
        backend.set_vocabulary(task.category_names, task.prompt_for(None))
        size, images = (int(row["width"]), int(row["height"])), int(row["images"])
        if args.all:
            seconds = time_images(backend, size, images, args.device, args.dtype)
            per_image, task_s, how = statistics.mean(seconds), sum(seconds), "measured, every image"
            timed += images
        else:
            shape = tuple(backend.preprocess([Image.new("RGB", size)]).images.shape[-2:])
            if shape not in per_shape:
                time_images(backend, size, 1, args.device, args.dtype)  # warm-up: this shape's first kernels
                per_shape[shape] = statistics.median(time_images(backend, size, args.per_size, args.device, args.dtype))
                timed += args.per_size
            per_image = per_shape[shape]
            task_s, how = per_image * images, f"projected from {shape[1]}x{shape[0]} inputs"
        total += task_s
        print(f"{row['task']:<24} {row['zero_shot_split']:<8} {images:>6} {f'{size[0]}x{size[1]}':>10} "
              f"{per_image:7.3f} {task_s:9.1f}  {how}", flush=True)
    count = sum(int(r["images"]) for r in rows)
    print(f"zero-shot ODinW-13: {count} images, {total / 60:.1f} min on one {args.device} ({timed} images timed); "
          "EgoHands and Vehicles counted at their val size, an upper bound for GLIP's minival")


if __name__ == "__main__":
    main()
