"""The arguments of ``python -m odinw_bench run``: one definition for the CLI, sweeps and sweep workers.

``run`` adds them to its sub-parser; :mod:`odinw_bench.runs.sweep` and :mod:`odinw_bench.runs.launchers` turn a
cell's argument list into a namespace with :func:`parse_run_args`, so a cell means exactly what ``run`` would.
Only the standard library is imported here: ``--help`` stays fast. Example::

    from odinw_bench.runs.arguments import parse_run_args

    args = parse_run_args(["--task", "demo", "--shots", "1", "--model", "glip-micro"])
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import NoReturn

from odinw_bench.errors import UserError


class UsageError(UserError):
    """A command line that argparse refuses (unknown option, bad value, missing argument)."""


class OneLineErrorParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, not argparse's usage block followed by the message.

    It raises :class:`UsageError` (``<message> (see: <prog> --help)``), which the CLI prints as ``error: ...`` with
    exit code 2 like any bad input, and which a sweep worker records as the cell's error instead of exiting.
    Sub-parsers made by ``add_subparsers`` are of the same class, so every command behaves alike.
    """

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see: {self.prog} --help)")


def _shots(text: str) -> int | str:
    if text == "all":
        return "all"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"shots must be an integer >= 0 or 'all', got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"shots must be >= 0, got {value}")
    return value


#: How often a fit writes last.ckpt: a whole-model write each epoch would cost a short run a fifth of its time.
DEFAULT_CHECKPOINT_EVERY_S = 60.0


def seconds_value(text: str) -> float:
    """argparse type of a duration in seconds (a number >= 0)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds (a number >= 0), got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {text}")
    return value


def positive_int(text: str) -> int:
    """argparse type of a count >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text}")
    return value


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the arguments of one ``run`` (tasks, shots, seeds, regime, model, data, outputs, overrides)."""
    parser.add_argument("--task", required=True, help="task name, suite (runs each task), or task YAML path")
    parser.add_argument("--shots", type=_shots, default=1, help="images per category: 0 (zero-shot), 1, 3, 5, 10 "
                        "or all (default: 1)")
    parser.add_argument("--seed", type=int, nargs="+", default=[3], help="seed(s) of sampling and training "
                        "(default: 3; GLIP uses 3 30 300)")
    parser.add_argument("--regime", default=None, help="zero-shot, linear-probe, linear-probe-cached, prompt, "
                        "deep-prompt, full, language, lora or lora-language (default: full, or zero-shot when "
                        "--shots 0)")
    model = parser.add_argument_group("model")
    model.add_argument("--model", default=None, help="preset: glip-t (default), glip-t-a/b/c, glip-l, glip-nano "
                       "(pre-trained here, shipped), glip-micro (random weights)")
    model.add_argument("--checkpoint", default=None, help="local .pth or .safetensors checkpoint, or a "
                       "fine-tuning run's model_best.ckpt (LoRA adapters merged)")
    model.add_argument("--config", default=None, help="official GLIP YAML config (instead of --model)")
    model.add_argument("--trust-checkpoint", action="store_true", help="allow full unpickling of a .pth file")
    parser.add_argument("--data-root", default=None, help="ODinW folder (default: $ODINW_ROOT or DATASET/odinw)")
    parser.add_argument("--split", default=None, help="split to report (default: the task's test split; "
                        "zero-shot: its zero_shot_split, val as in GLIP)")
    parser.add_argument("--prompt", default=None, help="prompt variant of the task, e.g. odinw_35")
    parser.add_argument("--output", default="results", help="results folder (default: results)")
    parser.add_argument("--recipe", default=None, help="recipe YAML (default: configs/glip_odinw.yaml)")
    parser.add_argument("--devices", type=int, default=None,
                        help="GPUs for one run (Lightning DDP; GLIP's batch of 4 stays global)")
    parser.add_argument("--precision", default=None, help="Lightning precision (default: AMP on GPU, 32 on CPU)")
    parser.add_argument("--wandb", choices=("off", "offline", "online"), default=None,
                        help="W&B logging (default: off)")
    parser.add_argument("--resume", action="store_true", help="resume an interrupted run from its last checkpoint")
    parser.add_argument("--checkpoint-every", type=seconds_value, default=DEFAULT_CHECKPOINT_EVERY_S, metavar="SECONDS",
                        help="write the resume checkpoint (last.ckpt) at the end of an epoch once this many seconds "
                        f"passed since the last one (default: {DEFAULT_CHECKPOINT_EVERY_S:g}; 0: every epoch). A "
                        "kill loses at most this much training")
    parser.add_argument("--search", default=None, metavar="lr,wd",
                        help="search these on the val split before the final run: lr x 1/0.01/0.1/10/100 and weight "
                        "decay x 1/0 (wd), then lr x 10^-0.5 and 10^0.5 around the best; trials under "
                        "<output>/search/")
    parser.add_argument("--search-epochs", type=positive_int, default=4, metavar="N",
                        help="epochs of each search trial (default: 4)")
    parser.add_argument("--no-feature-cache", action="store_true",
                        help="compute frozen features at every pass instead of reusing them (the same results, "
                        "slower; for runs short of host memory)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides")


def parse_run_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse the arguments of one ``run`` (without the ``run`` word) as the CLI would.

    Raises:
        UsageError: Arguments ``run`` would refuse, as one line.
    """
    parser = OneLineErrorParser(prog="python -m odinw_bench run")
    add_run_arguments(parser)
    return parser.parse_args(list(argv))
