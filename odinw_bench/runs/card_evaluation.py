"""The zero-shot AP a pre-trained model's card reports: its weights evaluated on the demo suite, as ``run`` does.

``python -m odinw_bench pretrain`` calls :func:`evaluate_zero_shot` when training ends and writes the result into
``model_card.json`` (``zero_shot``) and ``MODEL_CARD.md``. Every run is an ordinary zero-shot ``run`` of the
weights file (``--checkpoint``), so its record and leaderboard row land under ``<out>/zero_shot/`` and anyone can
repeat one with the command the card prints. Example::

    figure = evaluate_zero_shot("out/glip-nano.safetensors", model="glip-nano", output="out/zero_shot")
    figure["mean_ap"], figure["tasks"]["demo_playroom"]["ap"]      # AP x 100
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: The suite a shipped model's card reports: the built-in tasks, whose data needs no download.
CARD_SUITE = "demo_suite"


def evaluate_zero_shot(weights: str | Path, *, model: str, output: str | Path, suite: str = CARD_SUITE,
                       data_root: str | Path | None = None, progress: bool = False) -> dict[str, Any]:
    """Zero-shot AP (x 100) of ``weights`` on every task of ``suite``, each scored on its zero-shot split.

    Args:
        weights: The ``.safetensors`` file ``pretrain`` wrote.
        model: The preset the weights belong to (``glip-nano``).
        output: Results folder of the runs (records, predictions, leaderboard).
        suite: A task suite of the registry.
        data_root: Where the suite's data lives (default: as ``run``).
        progress: Show progress bars.

    Returns:
        ``{"suite", "split", "tasks": {task: {"ap", "split", "command"}}, "mean_ap"}``.
    """
    from odinw_bench.runs.arguments import parse_run_args
    from odinw_bench.runs.request import requests_from_args
    from odinw_bench.runs.runner import run_request

    argv = ["--task", suite, "--shots", "0", "--model", model, "--checkpoint", str(weights),
            "--output", str(output), *(["--data-root", str(data_root)] if data_root else []),
            *([] if progress else ["--no-progress"])]
    tasks: dict[str, dict[str, Any]] = {}
    for request in requests_from_args(parse_run_args(argv)):
        record = run_request(request).record
        ap = round(100.0 * float(record["metrics"]["AP"]), 2)
        command = (f"python -m odinw_bench run --task {request.task.name} --shots 0 --model {model} "
                   f"--split {request.split}")
        tasks[request.task.name] = {"ap": ap, "split": request.split, "command": command}
    mean = round(sum(t["ap"] for t in tasks.values()) / len(tasks), 2)
    splits = sorted({t["split"] for t in tasks.values()})
    return {"suite": suite, "split": splits[0] if len(splits) == 1 else splits, "tasks": tasks, "mean_ap": mean}
