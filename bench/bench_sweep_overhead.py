"""Per-cell overhead of a sweep: what a fresh worker pays once, and what later cells of the same worker pay.

Usage:
    python bench/bench_sweep_overhead.py                       # demo task, glip-micro from a saved safetensors file
    python bench/bench_sweep_overhead.py --cells 6 --model glip-t --checkpoint glip_tiny.safetensors \\
        --task aquarium --data-root DATASET/odinw

Phases:
- process start + imports: a new Python process importing what a cell needs (torch, Lightning, the GLIP port,
  the data module). Every submitit job pays it; a local worker pays it once.
- per cell, zero-shot cells (evaluation only, so the overhead is not hidden behind training), run in one process
  in the way a sweep worker runs them (``run_request`` with a :class:`~odinw_bench.runs.cache.RunCache`):
  checkpoint read, task indexing (train/val/test splits), test evaluation, and the whole cell.
- the same later cells without a cache, for comparison.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

IMPORTS = ("import torch, pytorch_lightning, odinw_bench.cli, odinw_bench.runs.runner, odinw_bench.training.datamodule, "
           "odinw_bench.runs.inference, odinw_bench.models.glip.backend")


def time_process_start(repeat: int) -> float:
    """Median wall seconds of a fresh interpreter importing a cell's modules."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", IMPORTS], check=True, env=dict(os.environ))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def save_micro_checkpoint(path: Path) -> Path:
    from safetensors.torch import save_file

    from odinw_bench.models.glip.backend import GLIPBackend

    backend = GLIPBackend.from_preset("glip-micro")
    save_file({k: v.contiguous() for k, v in backend.model.state_dict().items()}, str(path))
    return path


def make_timed_cache():
    """A RunCache that records how long each checkpoint read and split lookup took (hits included)."""
    from odinw_bench.runs.cache import RunCache

    class TimedCache(RunCache):
        def __init__(self):
            super().__init__()
            self.spent = {"checkpoint": 0.0, "split": 0.0}

        def state_dict(self, path, trust=False):
            t0 = time.perf_counter()
            try:
                return super().state_dict(path, trust)
            finally:
                self.spent["checkpoint"] += time.perf_counter() - t0

        def split(self, task, split, data_root):
            t0 = time.perf_counter()
            try:
                return super().split(task, split, data_root)
            finally:
                self.spent["split"] += time.perf_counter() - t0

    return TimedCache()


def requests(args: argparse.Namespace, checkpoint: Path | None, data_root: Path, out: Path) -> list:
    from odinw_bench.runs.arguments import parse_run_args
    from odinw_bench.runs.request import requests_from_args

    argv = ["--task", args.task, "--shots", "0", "--model", args.model, "--data-root", str(data_root),
            "--output", str(out), "--no-progress", "--seed", *[str(s) for s in range(1, args.cells + 1)]]
    if checkpoint is not None:
        argv[argv.index("--no-progress"):argv.index("--no-progress")] = ["--checkpoint", str(checkpoint)]
    return requests_from_args(parse_run_args(argv))


def run_cells(reqs: list, cache) -> list[dict]:
    from odinw_bench.runs.runner import run_request

    rows = []
    for req in reqs:
        before = dict(cache.spent) if cache is not None else None
        t0 = time.perf_counter()
        outcome = run_request(req, cache=cache)
        total = time.perf_counter() - t0
        row = {"total": total, "eval": outcome.record["timings"].get("test_s", float("nan"))}
        if cache is not None:
            row.update({k: cache.spent[k] - before[k] for k in before})
        rows.append(row)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=4, help="cells run in one worker (default: 4)")
    parser.add_argument("--task", default="demo")
    parser.add_argument("--model", default="glip-micro")
    parser.add_argument("--checkpoint", default=None, help="weights (default: a freshly saved glip-micro file)")
    parser.add_argument("--data-root", default=None, help="data root (default: a temporary demo folder)")
    parser.add_argument("--repeat", type=int, default=3, help="process starts timed (median)")
    args = parser.parse_args()

    import logging

    import torch

    logging.basicConfig(level=logging.ERROR)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data_root = Path(args.data_root) if args.data_root else tmp / "data"
        if args.task == "demo":
            from odinw_bench.data.synthetic import ensure_demo_data

            ensure_demo_data(data_root)
        checkpoint = Path(args.checkpoint) if args.checkpoint else save_micro_checkpoint(tmp / "micro.safetensors")
        size_mb = checkpoint.stat().st_size / 2**20
        start = time_process_start(args.repeat)
        cached = run_cells(requests(args, checkpoint, data_root, tmp / "cached"), make_timed_cache())
        uncached = run_cells(requests(args, checkpoint, data_root, tmp / "uncached"), None)
    print_report(args, start, size_mb, cached, uncached)
    return 0


def print_report(args, start: float, size_mb: float, cached: list[dict], uncached: list[dict]) -> None:
    def ms(value: float) -> str:
        return f"{1000 * value:9.1f}"

    later = cached[1:] or cached
    print(f"odinw_bench sweep overhead (python {platform.python_version()}, {os.cpu_count()} CPUs, "
          f"torch threads {os.environ.get('OMP_NUM_THREADS', '1')}); task {args.task}, model {args.model}, "
          f"checkpoint {size_mb:.1f} MB, {args.cells} zero-shot cells in one worker")
    print(f"process start + imports (median of {args.repeat}): {ms(start)} ms")
    print(f"{'per cell, ms':<28}{'first':>9}{'later':>9}")
    for key, label in (("checkpoint", "checkpoint read"), ("split", "task indexing (3 splits)"),
                       ("eval", "test evaluation"), ("total", "whole cell")):
        print(f"{label:<28}{ms(cached[0][key])}{ms(statistics.median(r[key] for r in later))}")
    no_cache = statistics.median(r["total"] for r in (uncached[1:] or uncached))
    print(f"{'whole cell without cache':<28}{ms(uncached[0]['total'])}{ms(no_cache)}")


if __name__ == "__main__":
    raise SystemExit(main())
