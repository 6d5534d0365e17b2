"""``python -m odinw_bench run``: fine-tune or evaluate a detector on one task with k-shot data."""

from __future__ import annotations

import argparse

HELP = "fine-tune or evaluate GLIP on a task (zero-shot, linear probe, prompt tuning, full) and record the result"

EPILOG = """\
examples:
  python -m odinw_bench run --task aquarium --shots 1                          # full fine-tuning, seed 3, glip-t
  python -m odinw_bench run --task aquarium --shots 0                          # zero-shot evaluation
  python -m odinw_bench run --task pothole --shots 3 --regime prompt --seed 3 30 300
  python -m odinw_bench run --task aquarium --shots 5 --regime linear-probe --checkpoint glip_tiny.pth \\
      --config glip_Swin_T_O365_GoldG.yaml optim.lr=2e-4 data.batch_size=2
  python -m odinw_bench run --task demo --shots 1 --model glip-micro           # offline, on built-in data
  python -m odinw_bench run --task aquarium --shots 1 --resume                 # continue an interrupted run

Regimes: zero-shot, linear-probe, prompt (GLIP language_prompt_v2), full, language (GLIP language_prompt_v1).
Trailing key=value pairs override the recipe (configs/glip_odinw.yaml), e.g. schedule.max_epochs=20.
Writes <output>/runs/<task>/<model>/<regime>/k<shots>_s<seed>_<id>.json (+ _predictions.json) and a row of
<output>/leaderboard.csv; fine-tuning checkpoints go to <output>/checkpoints/<id>/.
"""


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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", required=True, help="task name, suite (runs each task), or task YAML path")
    parser.add_argument("--shots", type=_shots, default=1, help="images per category: 0 (zero-shot), 1, 3, 5, 10 "
                        "or all (default: 1)")
    parser.add_argument("--seed", type=int, nargs="+", default=[3], help="seed(s) of sampling and training "
                        "(default: 3; GLIP uses 3 30 300)")
    parser.add_argument("--regime", default=None, help="zero-shot, linear-probe, prompt, full or language "
                        "(default: full, or zero-shot when --shots 0)")
    model = parser.add_argument_group("model")
    model.add_argument("--model", default=None, help="preset: glip-t (default), glip-t-a/b/c, glip-l, glip-micro")
    model.add_argument("--checkpoint", default=None, help="local .pth or .safetensors checkpoint")
    model.add_argument("--config", default=None, help="official GLIP YAML config (instead of --model)")
    model.add_argument("--trust-checkpoint", action="store_true", help="allow full unpickling of a .pth file")
    parser.add_argument("--data-root", default=None, help="ODinW folder (default: $ODINW_ROOT or DATASET/odinw)")
    parser.add_argument("--split", default=None, help="split to report (default: the task's test split)")
    parser.add_argument("--prompt", default=None, help="prompt variant of the task, e.g. odinw_35")
    parser.add_argument("--output", default="results", help="results folder (default: results)")
    parser.add_argument("--recipe", default=None, help="recipe YAML (default: configs/glip_odinw.yaml)")
    parser.add_argument("--devices", type=int, default=None,
                        help="GPUs for one run (Lightning DDP; GLIP's batch of 4 stays global)")
    parser.add_argument("--precision", default=None, help="Lightning precision (default: AMP on GPU, 32 on CPU)")
    parser.add_argument("--wandb", choices=("off", "offline", "online"), default=None,
                        help="W&B logging (default: off)")
    parser.add_argument("--resume", action="store_true", help="resume an interrupted run from its last checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides")


def run(args: argparse.Namespace) -> int:
    from odinw_bench.runner import requests_from_args, run_request, summary_table

    outcomes = [run_request(request) for request in requests_from_args(args)]
    print(summary_table(outcomes))
    return 0
