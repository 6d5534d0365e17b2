"""``evaluate``: score a COCO results file against a task split with GLIP's COCO box AP."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

HELP = "score a COCO results file (predictions JSON) against a task split: AP, AP50, AP75, per-category AP"
EPILOG = """\
examples:
  python -m odinw_bench evaluate --task aquarium --split test --predictions preds.json
  python -m odinw_bench evaluate --task aquarium --predictions preds.json --data-root DATASET/odinw --json
  python -m odinw_bench evaluate --task my_task.yaml --split val --predictions preds.json --output scores.json
  python -m odinw_bench evaluate --task aquarium --predictions preds.json --model-name my-detector   # + a run record
  python -m odinw_bench evaluate --task aquarium --predictions p.json --model-name my-detector --regime full \\
      --shots 5 --seed 30 --results results

The predictions file is a JSON list of COCO results: {"image_id", "category_id", "bbox": [x, y, w, h], "score"},
with the category ids of the task's annotation file. Values in the table are AP x 100; '-' marks a metric
with no ground truth (e.g. no small objects).

With --model-name the scores are also written as a run record under --results (with a copy of the predictions
and a leaderboard row), so `report` shows that model beside the runs of this harness. The record names the
scored file and its sha256 as its source; its checkpoint hash is empty. Scoring the same task, split, model,
regime, shots and seed again replaces that record.
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
    record = parser.add_argument_group("run record (for `report`)")
    record.add_argument("--model-name", default=None, metavar="NAME",
                        help="write a run record for this model, so `report` tables it beside the runs")
    record.add_argument("--regime", default=None, help="how the model was tuned: zero-shot (default with --shots 0),"
                        " linear-probe, prompt, full (default otherwise) or language")
    record.add_argument("--shots", default=None, metavar="K", help="images per category it was tuned on: 0 "
                        "(default), 1, 3, 5, 10 or all")
    record.add_argument("--seed", default=None, metavar="S", help="seed of its k-shot sample and training "
                        "(default: 3)")
    record.add_argument("--prompt", default=None, metavar="VARIANT", help="prompt variant it was given "
                        "(default: default)")
    record.add_argument("--results", type=Path, default=None, metavar="DIR", help="results folder of the record "
                        "(default: results)")


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

    identity = _record_identity(args)  # bad record options fail before anything is read
    task = load_task(args.task)
    split = args.split or task.test_split
    if split not in task.splits:
        known = ", ".join(sorted(task.splits))
        raise UserError(f"task '{task.name}' has no split '{split}' (known: {known})", field="--split")
    data_root = resolve_data_root(task, args.data_root)
    if identity is not None and identity["prompt"] != "default" and identity["prompt"] not in task.prompt_variants:
        raise UserError(f"task '{task.name}' has no prompt variant '{identity['prompt']}' "
                        f"(known: default, {', '.join(task.prompt_variants) or 'none'})", field="--prompt")
    started = time.time()
    predictions = read_predictions(args.predictions)
    gt = load_task_split(task, split, data_root).to_coco_dict()
    result = evaluate_detections(gt, predictions, source=args.predictions)
    if identity is not None:
        _write_record(args, identity, task, split, result, predictions, time.time() - started)
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


def _record_identity(args: argparse.Namespace) -> dict[str, Any] | None:
    """Model name, regime, shots, seed and prompt of the record to write; None without --model-name."""
    from odinw_bench.errors import UserError

    given = [flag for flag, value in (("--regime", args.regime), ("--shots", args.shots), ("--seed", args.seed),
                                      ("--prompt", args.prompt), ("--results", args.results)) if value is not None]
    if args.model_name is None:
        if given:
            raise UserError(f"{given[0]} describes the run record, which is written only with --model-name NAME",
                            field=given[0])
        return None
    if not args.model_name.strip():
        raise UserError("the model name is empty", field="--model-name")
    from odinw_bench.data.sampling import parse_shots

    try:
        shots = parse_shots(args.shots or "0")
    except UserError as err:
        raise UserError(err.message, field="--shots") from None
    regime = _regime(args.regime or ("zero-shot" if shots == 0 else "full"))
    if (shots == 0) != (regime == "zero-shot"):
        raise UserError(f"regime '{regime}' with --shots {shots}: zero-shot means shots 0, and shots 0 means "
                        "zero-shot", field="--regime")
    try:
        seed = int(args.seed or 3)
    except ValueError:
        raise UserError(f"expected an integer, got {args.seed!r}", field="--seed") from None
    return {"model_name": args.model_name.strip(), "regime": regime, "shots": shots, "seed": seed,
            "prompt": args.prompt or "default", "results": args.results or Path("results")}


def _regime(name: str) -> str:
    from odinw_bench.training.regimes import get_regime

    return get_regime(name).name


def _write_record(args, identity, task, split, result, predictions, duration_s: float) -> None:
    """The scores as a run record (with a copy of the predictions and a leaderboard row) under --results."""
    from odinw_bench.results.external import predictions_record, save_predictions_record

    record = predictions_record(
        task=task, split=split, result=result, predictions_file=args.predictions, model_name=identity["model_name"],
        regime=identity["regime"], shots=identity["shots"], seed=identity["seed"], prompt_variant=identity["prompt"],
        duration_s=duration_s)
    path, previous = save_predictions_record(identity["results"], record, predictions)
    replaced = ""
    if previous is not None:
        old = (previous.get("source") or {}).get("sha256")
        replaced = " (replaced the record of the same cell" + (f", scored from sha256 {old[:12]})" if old else ")")
    print(f"wrote run record {path}{replaced}; source {args.predictions} sha256 "
          f"{record['source']['sha256'][:12]}", file=sys.stderr)
