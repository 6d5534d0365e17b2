"""Training speed of each regime: optimisation steps per second on glip-micro (and glip-t with --models).

Usage:
    python bench/bench_regimes.py                          # glip-micro, CPU, batch 4 of 160x128 demo-size images
    python bench/bench_regimes.py --models glip-t --device cuda --size 800 --batch 4
    python bench/bench_regimes.py --epochs 0                 # without the linear-probe epochs (default: 20)

Each regime is applied as in a run (``apply_regime`` with FREEZE_CONV_BODY_AT 2, frozen modules in eval mode);
a step is forward + losses + backward + AdamW step. Frozen parts build no autograd graph, so linear probing and
prompt tuning should cost little more than a forward pass. Prints steps/s and the forward share of a step, for
the default (fast) model and for GLIP's reference computation (``--paths``), side by side in the same run.

With ``--epochs`` it then trains linear probes epoch by epoch over the same images (each epoch a new random resize,
flip and batching, as a run's data module draws them): ``linear-probe`` (GLIP's: the tower in train mode, computed
at every step) against ``linear-probe-cached`` (the tower in eval mode per image, computed once per image, resize and
flip, then served by the feature cache). It prints each epoch's seconds and the cache's misses, the median epoch
once nothing misses any more ("warm") and the whole fit's ratio.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from odinw_bench.models.glip.backend import GLIPBackend  # noqa: E402
from odinw_bench.models.glip.config import get_preset  # noqa: E402
from odinw_bench.models.glip.dyconv import set_deform_implementation  # noqa: E402
from odinw_bench.models.glip.feature_cache import FeatureCache  # noqa: E402
from odinw_bench.training.regimes import (  # noqa: E402
    apply_regime,
    count_parameters,
    get_regime,
    set_frozen_modules_eval,
)

NAMES = ["apple", "banana", "cherry", "lemon"]


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def setup_backend(preset: str, regime_name: str, device: str, size: int | None,
                  path: str = "fast") -> tuple[GLIPBackend, list]:
    """A GLIP backend (random weights) set up as a run sets the regime up, and the parameters it trains.

    ``size`` fixes the training short side (long side 1.6x); None keeps the preset's multi-scale sizes.
    """
    torch.manual_seed(0)
    cfg = get_preset(preset)
    if size is not None:
        cfg = cfg.replace(input=dataclasses.replace(cfg.input, min_size_train=(size,), max_size_train=int(size * 1.6)))
    backend = GLIPBackend(cfg).to(device)
    if path == "reference":  # GLIP's computation: captions padded to 256 tokens, torchvision's deformable kernels
        backend.model.trim_text = False
        set_deform_implementation(backend.model, "torchvision")
    backend.set_vocabulary(NAMES)
    regime = get_regime(regime_name)
    apply_regime(backend, regime, freeze_conv_body_at=2)
    backend.train()
    set_frozen_modules_eval(backend, regime, freeze_conv_body_at=2)
    if regime.cached_tower:
        backend.model.feature_cache = FeatureCache()
    return backend, [p for p in backend.parameters() if p.requires_grad]


def training_images(size: int | None, count: int) -> tuple[list, list]:
    """``count`` plain images (160x128, or 1.5·size x size) with one box each, and their targets."""
    w, h = (160, 128) if size is None else (int(size * 1.5), size)
    images = [Image.new("RGB", (w, h), (40 * i % 256, 120, 200)) for i in range(count)]
    targets = [{"boxes": [[10, 10, w // 2, h // 2]], "labels": [i % len(NAMES)]} for i in range(count)]
    return images, targets


def bench(preset: str, regime_name: str, device: str, size: int | None, batch: int, steps: int,
          path: str = "fast") -> dict:
    backend, params = setup_backend(preset, regime_name, device, size, path)
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    images, targets = training_images(size, batch)
    step_times, fwd_times = [], []
    rng = random.Random(0)
    for i in range(steps + 1):
        data = backend.preprocess(images, targets, train=True, rng=rng).to(device)
        _sync(device)
        t0 = time.perf_counter()
        loss = sum(backend.compute_losses(data).values())
        _sync(device)
        t1 = time.perf_counter()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        _sync(device)
        if i:  # the first step warms up
            step_times.append(time.perf_counter() - t0)
            fwd_times.append(t1 - t0)
    step = statistics.median(step_times)
    return {"steps_per_s": 1 / step, "forward_share": statistics.median(fwd_times) / step,
            "trainable": count_parameters(backend)[0], "input": tuple(data.images.shape[-2:])}


def bench_epochs(preset: str, device: str, size: int | None, n_images: int, batch: int, epochs: int) -> None:
    """Epoch seconds of linear-probe and linear-probe-cached on the same images, batches and draws."""
    gen = torch.Generator().manual_seed(0)
    w, h = (160, 128) if size is None else (int(size * 1.5), size)
    images = [Image.fromarray((torch.rand(h, w, 3, generator=gen) * 255).to(torch.uint8).numpy())
              for _ in range(n_images)]
    targets = [{"boxes": [[10, 10, w // 2, h // 2]], "labels": [i % len(NAMES)]} for i in range(n_images)]
    times: dict[str, list[float]] = {}
    misses: list[int] = []
    for regime in ("linear-probe", "linear-probe-cached"):
        backend, params = setup_backend(preset, regime, device, size)
        optimizer = torch.optim.AdamW(params, lr=1e-4)
        times[regime] = []
        for epoch in range(epochs):
            rng = random.Random(epoch)  # the same draws for both regimes
            order = rng.sample(range(n_images), n_images)
            before = backend.model.feature_cache.stats["misses"] if backend.model.feature_cache else 0
            _sync(device)
            t0 = time.perf_counter()
            for start in range(0, n_images, batch):
                chosen = order[start:start + batch]
                data = backend.preprocess([images[i] for i in chosen], [targets[i] for i in chosen], train=True,
                                          rng=rng).to(device)
                loss = sum(backend.compute_losses(data).values())
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            _sync(device)
            times[regime].append(time.perf_counter() - t0)
            if backend.model.feature_cache is not None:
                misses.append(backend.model.feature_cache.stats["misses"] - before)
    default, cached = times["linear-probe"], times["linear-probe-cached"]
    print(f"\nlinear-probe epochs: {preset}, {n_images} images, batch {batch}, {epochs} epochs")
    print(f"{'epoch':>5} {'default s':>10} {'cached s':>9} {'misses':>7}")
    for epoch in range(epochs):
        print(f"{epoch:>5} {default[epoch]:10.3f} {cached[epoch]:9.3f} {misses[epoch]:>7}")
    warm = [t for t, m in zip(cached, misses) if m == 0]
    default_epoch = statistics.median(default)
    if warm:
        print(f"warm epoch (no miss, {len(warm)} of {epochs}): {statistics.median(warm):.3f} s against "
              f"{default_epoch:.3f} s, {default_epoch / statistics.median(warm):.1f}x faster")
    else:
        print("no warm epoch: every epoch drew a new (image, resize, flip); run more --epochs")
    print(f"whole fit ({epochs} epochs): {sum(cached):.2f} s against {sum(default):.2f} s, "
          f"{sum(default) / sum(cached):.1f}x faster")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="glip-micro")
    parser.add_argument("--regimes", default="linear-probe,prompt,language,full")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=None, help="training short side (default: the preset's)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=20,
                        help="then train linear probes this many epochs, default vs cached tower (0: skip)")
    parser.add_argument("--images", type=int, default=8, help="images of the --epochs comparison")
    parser.add_argument("--paths", default="fast,reference",
                        help="fast (the default model: trimmed text, gather-based deformable convolution) and/or "
                        "reference (GLIP's padded text, torchvision's kernels), each regime in the same run")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} CPU threads, batch {args.batch}")
    print(f"{'model':<11} {'regime':<13} {'path':<10} {'input':<11} {'trainable':>12} {'steps/s':>8} {'fwd share':>9}")
    for preset in args.models.split(","):
        for regime in args.regimes.split(","):
            for path in args.paths.split(","):
                r = bench(preset, regime, args.device, args.size, args.batch, args.steps, path)
                print(f"{preset:<11} {regime:<13} {path:<10} {str(r['input']):<11} {r['trainable']:>12,} "
                      f"{r['steps_per_s']:8.2f} {r['forward_share']:9.0%}", flush=True)
        if args.epochs:
            bench_epochs(preset, args.device, args.size, args.images, args.batch, args.epochs)


if __name__ == "__main__":
    main()
