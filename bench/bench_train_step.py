"""Training steps of GLIP-T and GLIP-L: throughput, peak memory, fp32 against bf16 autocast, and host syncs.

Usage:
    python bench/bench_train_step.py                                  # glip-micro, CPU, fp32 and bf16
    python bench/bench_train_step.py --models glip-t,glip-l --device cuda --size 800 --batch 2 --steps 10

A step is what a run's step is: the backend set up for the regime (trainable set, FREEZE_CONV_BODY_AT 2, GLIP's
frozen modules in eval mode), forward and losses under autocast when ``--dtypes`` says bf16 (Lightning's
``bf16-mixed``: the weights and the optimizer stay fp32), backward, AdamW. Per (model, regime, dtype) it prints the
median step time, images per second, the peak memory (CUDA: ``max_memory_allocated`` over the steps; CPU: the
process's peak RSS so far, which only grows) and the operators of one step that make a GPU wait for the host
(``odinw_bench.training.host_syncs``; on CUDA also what ``torch.cuda.set_sync_debug_mode`` reports).
"""

from __future__ import annotations

import argparse
import contextlib
import random
import resource
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from bench_regimes import setup_backend, training_images  # noqa: E402

from odinw_bench.training.host_syncs import HostSyncCounter  # noqa: E402


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def bench(preset: str, regime: str, device: str, dtype: str, size: int | None, batch: int, steps: int) -> dict:
    """Median step seconds, peak memory and host syncs of ``steps`` training steps (after one warm-up step)."""
    backend, params = setup_backend(preset, regime, device, size)
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    images, targets = training_images(size, batch)
    data = backend.preprocess(images, targets, train=True, rng=random.Random(0)).to(device)

    def step() -> None:
        autocast = (torch.autocast(device, dtype=torch.bfloat16) if dtype == "bf16" else contextlib.nullcontext())
        with autocast:
            loss = sum(backend.compute_losses(data).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step()  # warm-up: first kernels, the caption's tokens
    with HostSyncCounter() as syncs:
        step()
    cuda_syncs = _cuda_sync_warnings(step) if device == "cuda" else None
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        _sync(device)
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() if device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    seconds = statistics.median(times)
    return {"input": tuple(data.images.shape[-2:]), "step_s": seconds, "images_per_s": batch / seconds,
            "peak_GiB": peak / 2**30, "syncs": syncs.summary(), "cuda_syncs": cuda_syncs}


def _cuda_sync_warnings(step) -> int:
    """Syncs CUDA itself reports for one step (``set_sync_debug_mode("warn")``)."""
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="glip-micro")
    parser.add_argument("--regimes", default="full,prompt,linear-probe")
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=None, help="training short side (default: the preset's)")
    parser.add_argument("--batch", type=int, default=2, help="images per step (GLIP: 1 per GPU, 4 GPUs)")
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    gpu = f", {torch.cuda.get_device_name()}" if args.device == "cuda" else ""
    print(f"torch {torch.__version__}, device {args.device}{gpu}, {torch.get_num_threads()} CPU threads, "
          f"batch {args.batch}, median of {args.steps} steps")
    peak_kind = "GPU peak" if args.device == "cuda" else "max RSS"
    print(f"{'model':<11} {'regime':<13} {'dtype':<5} {'input':<12} {'step s':>8} {'img/s':>7} {peak_kind:>9}  "
          "host syncs per step")
    for preset in args.models.split(","):
        for regime in args.regimes.split(","):
            for dtype in args.dtypes.split(","):
                r = bench(preset, regime, args.device, dtype, args.size, args.batch, args.steps)
                syncs = ", ".join(f"{n}x {k}" for k, n in r["syncs"].items()) or "none"
                if r["cuda_syncs"] is not None:
                    syncs += f" (CUDA reports {r['cuda_syncs']})"
                print(f"{preset:<11} {regime:<13} {dtype:<5} {str(r['input']):<12} {r['step_s']:8.3f} "
                      f"{r['images_per_s']:7.2f} {r['peak_GiB']:7.2f}GiB  {syncs}", flush=True)


if __name__ == "__main__":
    main()
