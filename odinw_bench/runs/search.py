"""Learning-rate / weight-decay search on the validation split before the final run (``run --search lr,wd``).

ELEVATER, the benchmark ODinW comes from, searches these per dataset and shot count on val before its final runs;
GLIP's paper fixes them. The search here is small and documented:

1. a coarse log-spaced grid around the recipe's values (after the regime's own, e.g. prompt tuning's 0.05/0.25):
   lr x {1, 0.01, 0.1, 10, 100} (four decades) and, with ``wd``, weight decay x {1, 0} (0: no decay);
2. a refinement around the best lr: best x 10^-0.5 and best x 10^0.5 (with the best weight decay);
3. every trial is an ordinary run of ``--search-epochs`` epochs under ``<output>/search/<run id>/`` (its own
   records and leaderboard, never the main one; its checkpoints are deleted once its record is written), scored
   by its best **val** AP (``select/val_AP``), never test;
4. the final run uses the best values (the first trial wins ties, so the recipe's values win a tie) and records
   every trial, the chosen values and their val AP under ``search``.

A searched run's id names the search (parameters, epochs, grid), not the values it found, so a sweep knows it
before searching, and a rerun after a kill reuses every trial whose record exists.

Example::

    final = search_hyperparameters(request, cache, run_request)      # runs the trials
    run_request(final, cache)                           # the final run, with final.search_result in its record
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import shutil
from typing import TYPE_CHECKING, Any

from odinw_bench.errors import UserError
from odinw_bench.runs.search_spec import GRID, search_identity

if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable

    from odinw_bench.runs.cache import RunCache
    from odinw_bench.training.run_config import RunConfig

#: A run request (``odinw_bench.runs.request.RunRequest``), not imported: that module imports the search spec,
#: and importing it back here would close an import cycle.
RunRequest = Any

logger = logging.getLogger(__name__)

def with_values(config: RunConfig, **values: Any) -> RunConfig:
    """A copy of ``config`` with dotted ``section__key`` values set as if the user had given them."""
    out = copy.deepcopy(config)
    explicit = set(config.explicit_keys)
    for name, value in values.items():
        section, key = name.split("__")
        setattr(getattr(out, section), key, value)
        explicit.add(f"{section}.{key}")
    out._explicit = frozenset(explicit)
    return out


def _trial(req: RunRequest, lr: float, wd: float) -> RunRequest:
    from odinw_bench.runs.identity import run_identity

    config = with_values(req.config, optim__lr=lr, optim__weight_decay=wd, schedule__max_epochs=req.search_epochs)
    base_id = run_identity(req, fetch=False).run_id
    return dataclasses.replace(req, config=config, search=(), output=req.output / "search" / base_id,
                               progress=False, resume=False)


def _run_trial(trial: RunRequest, cache: RunCache | None, run: Callable) -> dict[str, Any]:
    """The trial's record: the existing one (a rerun after a kill), else a new run."""
    from odinw_bench.results.records import read_record
    from odinw_bench.runs.identity import run_identity

    run_id = run_identity(trial).run_id
    found = [p for p in trial.output.glob(f"runs/*/*/*/*_{run_id}.json")]
    for path in found:
        record = read_record(path)
        if record["status"] == "ok":
            return record
    record = run(trial, cache=cache).record
    # A trial is kept as its record: its weights (model_best.ckpt, as large as the model) have no use left.
    shutil.rmtree(trial.output / "checkpoints" / record["run_id"], ignore_errors=True)
    return record


def search_hyperparameters(req: RunRequest, cache: RunCache | None, run: Callable) -> RunRequest:
    """Run the trials of ``req``'s search and return the final request (best values, ``search_result`` set).

    Args:
        req: The searched request.
        cache: The process's run cache (trials share its features and splits).
        run: Runs one request and returns its outcome (``odinw_bench.runs.runner.run_request``).

    Raises:
        UserError: For a regime that does not train (nothing to search).
    """
    if not req.regime.fit:
        raise UserError(f"regime '{req.regime.name}' does not train: there is nothing to search", field="--search")
    base = req.config.resolved_for(req.regime, req.shots)["optim"]
    lrs = [base["lr"] * f for f in GRID["lr_factors"]] if "lr" in req.search else [base["lr"]]
    wds = [base["weight_decay"] * f for f in GRID["wd_factors"]] if "wd" in req.search else [base["weight_decay"]]
    grid = [(lr, wd) for lr in lrs for wd in dict.fromkeys(wds)]
    trials = [_score(req, lr, wd, cache, run) for lr, wd in grid]
    if "lr" in req.search:
        best = _best(trials)
        for exponent in GRID["refine_exponents"]:
            trials.append(_score(req, best["lr"] * math.pow(10.0, exponent), best["weight_decay"], cache, run))
    best = _best(trials)
    logger.info("search of %s: lr %.3g, weight decay %.3g (val AP %.4f over %d trials)", req.task.name,
                best["lr"], best["weight_decay"], best["val_AP"], len(trials))
    result = {**search_identity(req), "trials": trials,
              "chosen": {"lr": best["lr"], "weight_decay": best["weight_decay"]}, "chosen_val_AP": best["val_AP"]}
    config = with_values(req.config, optim__lr=best["lr"], optim__weight_decay=best["weight_decay"])
    return dataclasses.replace(req, config=config, search_result=result)


def _score(req: RunRequest, lr: float, wd: float, cache: RunCache | None, run: Callable) -> dict[str, Any]:
    from odinw_bench.results.schema import SELECT_VAL_AP

    record = _run_trial(_trial(req, lr, wd), cache, run)
    value = record["metrics"].get(SELECT_VAL_AP)
    return {"lr": lr, "weight_decay": wd, "val_AP": value, "run_id": record["run_id"]}


def _best(trials: list[dict[str, Any]]) -> dict[str, Any]:
    """The trial with the highest val AP; the first of equals (a trial without val AP never wins)."""
    return max(trials, key=lambda t: -math.inf if t["val_AP"] is None else t["val_AP"])
