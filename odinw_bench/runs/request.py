"""What one run is asked to do: a :class:`RunRequest`, built from ``run``'s arguments and checked before anything runs.

``python -m odinw_bench run``, sweeps and sweep workers all go through :func:`requests_from_args`, so a bad task,
regime, model, prompt, split or override, or missing data, is one error before any weights or data are
loaded. Example::

    from odinw_bench.runs.arguments import parse_run_args
    from odinw_bench.runs.request import requests_from_args

    requests = requests_from_args(parse_run_args(["--task", "demo", "--shots", "1", "--seed", "3", "30"]))
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from odinw_bench.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    from odinw_bench.tasks.spec import TaskSpec
    from odinw_bench.training.regimes import Regime
    from odinw_bench.training.run_config import RunConfig

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "glip-t"


@dataclass
class RunRequest:
    """Everything one run needs; ``config`` is the recipe with the command-line overrides merged in."""

    task: TaskSpec
    prompt_variant: str | None
    shots: int | str
    seed: int
    regime: Regime
    model: str | None
    checkpoint: Path | None
    official_config: Path | None
    trust_checkpoint: bool
    data_root: Path
    output: Path
    split: str
    config: RunConfig
    resume: bool = False
    progress: bool = True
    checkpoint_every_s: float = 60.0
    feature_cache: bool = True
    search: tuple[str, ...] = ()
    search_epochs: int = 4
    # Set by odinw_bench.runs.search once the trials have run: the trials and the values the final run uses.
    search_result: dict | None = None

    @property
    def model_name(self) -> str:
        return self.model or Path(self.official_config).stem


def requests_from_args(args: argparse.Namespace, *, check_data: bool = True) -> list[RunRequest]:
    """Check every argument before anything runs, and expand tasks × seeds into requests.

    A zero-shot result does not depend on the seed: one request per task, under the first seed given.

    Args:
        args: ``run``'s parsed arguments (:func:`odinw_bench.runs.arguments.parse_run_args`).
        check_data: Check that the splits a run reads are on disk (a sweep's dry run plans without data).

    Raises:
        UserError: For the first bad argument, or missing data (naming the command that gets it).
    """
    from odinw_bench.data.task_files import prepare_data_root, require_split_files
    from odinw_bench.runs.search_spec import parse_search
    from odinw_bench.tasks.registry import resolve_tasks
    from odinw_bench.training.regimes import get_regime

    _check_model_name(args)
    config = _run_config(args)
    model = None if args.config else (args.model or DEFAULT_MODEL)
    regime = get_regime(args.regime or ("zero-shot" if args.shots == 0 else "full"))
    if args.shots == 0 and regime.fit:
        raise UserError(f"--shots 0 is zero-shot: regime '{regime.name}' needs training data", field="--regime")
    search = parse_search(args.search)
    if search and not regime.fit:
        raise UserError(f"regime '{regime.name}' does not train: there is nothing to search", field="--search")
    seeds = list(args.seed) if regime.fit else list(args.seed)[:1]
    if len(seeds) < len(args.seed):
        logger.info("zero-shot does not depend on the seed: one run (seed %s) stands for %s", seeds[0], args.seed)
    requests = []
    for task, suite_variant in resolve_tasks(args.task):
        variant = args.prompt or suite_variant
        if variant not in (None, "default") and variant not in task.prompt_variants:
            raise UserError(f"task '{task.name}' has no prompt variant '{variant}' "
                            f"(known: default, {', '.join(task.prompt_variants) or 'none'})", field="--prompt")
        split = args.split or (task.test_split if regime.fit else task.zero_shot_split)  # GLIP: zero-shot on val
        if split not in task.splits:
            raise UserError(f"task '{task.name}' has no split '{split}'", field="--split")
        data_root = prepare_data_root(task, args.data_root)
        if check_data:  # before any model is built or downloaded; a zero-shot run reads only the split it scores
            require_split_files(task, ["train", task.val_split, split] if regime.fit else [split], data_root)
        for seed in seeds:
            requests.append(RunRequest(
                task=task, prompt_variant=variant, shots=args.shots, seed=seed, regime=regime, model=model,
                checkpoint=Path(args.checkpoint) if args.checkpoint else None,
                official_config=Path(args.config) if args.config else None,
                trust_checkpoint=args.trust_checkpoint, data_root=data_root, output=Path(args.output),
                split=split, config=config, resume=args.resume, progress=not args.no_progress,
                checkpoint_every_s=args.checkpoint_every, feature_cache=not args.no_feature_cache,
                search=search, search_epochs=args.search_epochs))
    return requests


def _check_model_name(args: argparse.Namespace) -> None:
    """An unknown model fails here, in milliseconds, not after torch is imported and data is generated (an
    ``hf:`` source reads its config.json only)."""
    from odinw_bench.models.catalog import resolve_model

    if args.model and args.config:
        raise UserError("give --model (a preset) or --config (an official GLIP YAML), not both", field="--config")
    if args.model:
        resolve_model(args.model)


def _run_config(args: argparse.Namespace) -> RunConfig:
    """The recipe with the flags that stand for recipe keys and the ``key=value`` overrides merged in."""
    from odinw_bench.training.run_config import load_run_config

    overrides = list(args.overrides)
    for flag, key in ((args.devices, "trainer.devices"), (args.precision, "trainer.precision"),
                      (args.wandb, "wandb.mode")):
        if flag is not None:
            overrides.append(f"{key}={flag}")
    return load_run_config(args.recipe, overrides)
