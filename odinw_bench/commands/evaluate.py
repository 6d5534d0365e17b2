"""``evaluate``: score a COCO results file against a task split with GLIP's COCO box AP."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HELP = "score a COCO results file (predictions JSON) against a task split: AP, AP50, AP75, per-category AP"
EPILOG = """\
examples:
  python -m odinw_bench evaluate --task aquarium --split test --predictions preds.json
  python -m odinw_bench evaluate --task aquarium --predictions preds.json --data-root DATASET/odinw --json
  python -m odinw_bench evaluate --task my_task.yaml --split val --predictions preds.json --output scores.json

The predictions file is a JSON list of COCO results: {"image_id", "category_id", "bbox": [x, y, w, h], "score"},
with the category ids of the task's annotation file. Values in the table are AP x 100; '-' marks a metric
with no ground truth (e.g. no small objects).
"""

# Rows of the summary table, in order.


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the command's options."""
    parser.add_argument("--task", required=True, metavar="TASK", help="task name (see `tasks`) or path to a task YAML")
    parser.add_argument(
        "--split", default=None, metavar="SPLIT", help="split to score against (default: the task's test split)"
    )
    parser.add_argument("--predictions", required=True, type=Path, metavar="FILE", help="COCO results JSON file")
    parser.add_argument("--data-root", default=None, metavar="DIR", help="folder holding the ODinW datasets")
    parser.add_argument("--json", action="store_true", help="print the scores as JSON instead of a table")
    parser.add_argument(
        "--output", type=Path, default=None, metavar="FILE", help="also write the scores as JSON to this file"
    )


def run(args: argparse.Namespace) -> int:
    """Load the task split and the predictions, score them, and report."""
    from odinw_bench.data.task_files import load_task_split
    from odinw_bench.errors import UserError
    from odinw_bench.results.evaluation import (
        evaluate_detections,
        format_eval_table,
        read_predictions,
    )
    from odinw_bench.tasks.registry import load_task, resolve_data_root

    task = load_task(args.task)
    split = args.split or task.test_split
    if split not in task.splits:
        known = ", ".join(sorted(task.splits))
        raise UserError(f"task '{task.name}' has no split '{split}' (known: {known})", field="--split")
    data_root = resolve_data_root(task, args.data_root)
    predictions = read_predictions(args.predictions)
    gt = load_task_split(task, split, data_root).to_coco_dict()
    result = evaluate_detections(gt, predictions, source=args.predictions)
    report = {
        "task": task.name,
        "task_version": task.version,
        "split": split,
        "predictions": str(args.predictions),
        **result.to_dict(),
    }
    if args.output is not None:
        _write_json(args.output, report)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_eval_table(f"{task.display_name} / {split}", result))
    return 0


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as JSON atomically."""
    from odinw_bench.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n")
    print(f"wrote {path}", file=sys.stderr)
