"""``python -m odinw_bench demo``: the whole pipeline offline, on built-in synthetic data and ``glip-micro``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

HELP = "offline demo: synthetic ODinW-style task + glip-micro, zero-shot evaluation, record, leaderboard, report"

EPILOG = """\
examples:
  python -m odinw_bench demo                          # writes under results/ (record, predictions, leaderboard)
  python -m odinw_bench demo --output /tmp/demo --seed 30

glip-micro is a tiny randomly initialised GLIP, so its AP is near zero: the demo shows the pipeline, not a
number. Real numbers need the data (python -m odinw_bench download ...) and a GLIP checkpoint.
"""

DEMO_TASK = "demo"
DEMO_MODEL = "glip-micro"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", default="results", help="results folder (default: results)")
    parser.add_argument("--data-root", default=None, help="where the synthetic data lives (default: a cache folder)")
    parser.add_argument("--seed", type=int, default=3, help="seed of the model initialisation (default: 3)")
    parser.add_argument("--split", default=None, help="split to evaluate (default: the task's test split)")


def run(args: argparse.Namespace) -> int:
    import torch

    from odinw_bench.data.coco import load_task_split
    from odinw_bench.inference import evaluate_split
    from odinw_bench.models.glip.backend import GLIPBackend
    from odinw_bench.tasks import load_task, resolve_data_root

    started = time.time()
    task = load_task(DEMO_TASK)
    data_root = resolve_data_root(task, args.data_root)
    split_name = args.split or task.test_split
    split = load_task_split(task, split_name, data_root)
    print(f"task '{task.name}': {len(split.images)} {split_name} images of {', '.join(task.category_names)} "
          f"(data: {task.task_dir(data_root)})")

    torch.manual_seed(args.seed)
    backend = GLIPBackend.from_preset(DEMO_MODEL).eval()
    backend.set_vocabulary(task.category_names, task.prompt)
    print(f"model '{DEMO_MODEL}' (random weights), prompt: {backend.prompt.captions[0]!r}")
    result, predictions = evaluate_split(backend, split)
    _save_and_report(args, task, split_name, backend, result, predictions, time.time() - started)
    return 0


def _save_and_report(args, task, split_name, backend, result, predictions, duration) -> None:
    from odinw_bench.evaluation import format_eval_table, write_predictions
    from odinw_bench.leaderboard import append_leaderboard_row
    from odinw_bench.report import build_report, format_table
    from odinw_bench.results import make_record, make_run_id, record_path, write_record
    from odinw_bench.tasks import task_sha256

    config = {"model": backend.config.to_dict(), "init_seed": args.seed, "split": split_name, "batch_size": 1}
    run_id = make_run_id(task.name, task.version, DEMO_MODEL, None, "zero-shot", 0, args.seed, config)
    metrics = dict(result.metrics)
    metrics.update({f"AP-{name}": value for name, value in result.per_category.items()})
    record = make_record(
        run_id=run_id,
        task={"name": task.name, "version": task.version, "sha256": task_sha256(task),
              "display_name": task.display_name},
        split=split_name,
        prompt={"variant": "default", "captions": backend.prompt.captions},
        shots=0, seed=args.seed, regime="zero-shot",
        sample={"sampler": "none", "train_ids": [], "train_ids_hash": None, "train_count": 0,
                "val_ids": None, "val_ids_hash": None, "val_count": None, "shortfall": {}},
        model={"name": DEMO_MODEL, "checkpoint": None, "checkpoint_sha256": None},
        config=config, metrics=metrics,
        params={"trainable": 0, "total": sum(p.numel() for p in backend.parameters())},
        duration_s=duration,
    )
    out = Path(args.output)
    path = record_path(out, record)
    write_predictions(path.with_name(path.stem + "_predictions.json"), predictions)
    write_record(path, record)
    append_leaderboard_row(out / "leaderboard.csv", record)
    print()
    print(format_eval_table(f"{task.display_name} / {split_name} ({DEMO_MODEL}, zero-shot)", result))
    print()
    print(format_table(build_report([record], tasks=[task.name], allow_partial=True)))
    print(f"\nrecord: {path}\nleaderboard: {out / 'leaderboard.csv'}")
    print("glip-micro has random weights, so AP ~ 0 is expected. For real numbers: download the data and a "
          "GLIP checkpoint (see README).")

