"""Evaluation passes with and without the frozen-feature cache, per regime, on the same weights and images.

Usage:
    python bench/bench_eval_cache.py                             # glip-nano, CPU, 8 demo-size images, 12 passes
    python bench/bench_eval_cache.py --model glip-t --size 800 --images 2 --passes 3 --device cuda

A fine-tuning run evaluates val after every epoch; with the cache (``GLIP.feature_cache``, on in every run) the
stages a regime freezes are computed in the first pass only. Prints, per regime, the seconds of all passes with and
without the cache, the speed-up, and whether every pass gave bitwise the same detections both ways.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from odinw_bench.models.glip.backend import GLIPBackend, load_glip  # noqa: E402
from odinw_bench.models.glip.feature_cache import FeatureCache  # noqa: E402
from odinw_bench.training.regimes import apply_regime, get_regime  # noqa: E402

NAMES = ["teddy bear", "toy car", "red ball", "blue cup", "lamp", "book"]


def _images(count: int, size: int | None) -> list[Image.Image]:
    gen = torch.Generator().manual_seed(0)
    w, h = (160, 128) if size is None else (int(size * 1.5), size)
    return [Image.fromarray((torch.rand(h, w, 3, generator=gen) * 255).to(torch.uint8).numpy()) for _ in range(count)]


def _passes(backend: GLIPBackend, batches: list, passes: int, device: str) -> tuple[float, list]:
    outputs = []
    start = time.perf_counter()
    for _ in range(passes):
        outputs.append([backend.predict(batch) for batch in batches])
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, outputs


def _same(a: list, b: list) -> bool:
    return all(torch.equal(x.scores, y.scores) and torch.equal(x.boxes, y.boxes)
               for pa, pb in zip(a, b) for da, db in zip(pa, pb) for x, y in zip(da, db))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="glip-nano", help="preset (glip-nano loads its shipped weights)")
    parser.add_argument("--regimes", default="zero-shot,linear-probe,prompt,full")
    parser.add_argument("--images", type=int, default=8, help="val images (default: 8, a demo task's val)")
    parser.add_argument("--passes", type=int, default=12, help="evaluations (default: 12, the demo's epochs)")
    parser.add_argument("--size", type=int, default=None, help="short side of the images (default: demo size)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    print(f"{'model':10s}  {'regime':12s}  {'images':>6s}  {'passes':>6s}  {'no cache s':>10s}  {'cache s':>8s}  "
          f"{'speed-up':>8s}  identical")
    for regime in args.regimes.split(","):
        torch.manual_seed(0)
        backend = load_glip(args.model) if args.model == "glip-nano" else GLIPBackend.from_preset(args.model)
        backend.set_vocabulary(NAMES)
        apply_regime(backend, get_regime(regime))
        backend = backend.to(args.device).eval()
        batches = [backend.preprocess([im]).to(args.device) for im in _images(args.images, args.size)]
        with torch.no_grad():
            backend.predict(batches[0])  # warm-up
            plain_s, plain = _passes(backend, batches, args.passes, args.device)
            backend.model.feature_cache = FeatureCache()
            cached_s, cached = _passes(backend, batches, args.passes, args.device)
        print(f"{args.model:10s}  {regime:12s}  {args.images:6d}  {args.passes:6d}  {plain_s:10.2f}  {cached_s:8.2f}  "
              f"{plain_s / cached_s:7.1f}x  {_same(plain, cached)}")


if __name__ == "__main__":
    main()
