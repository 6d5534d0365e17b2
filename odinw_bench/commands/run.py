"""``python -m odinw_bench run``: fine-tune or evaluate a detector on one task with k-shot data."""

from __future__ import annotations

import argparse

# The argument schema is shared with sweeps and their workers, so it lives beside the runner.
from odinw_bench.runs.arguments import add_run_arguments as add_arguments  # noqa: F401

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
  python -m odinw_bench run --task aquarium --shots 3 --regime prompt --search lr,wd    # lr / wd chosen on val

Regimes: zero-shot, linear-probe, prompt (GLIP language_prompt_v2), full, language (GLIP language_prompt_v1), and
linear-probe-cached: a linear probe whose tower runs in eval mode, per image, computed once and reused in every
epoch (faster; its records list these protocol differences); lora and lora-language: LoRA adapters (peft, rank 8)
on the attention projections of the language model and the fusion, or of the language model only; deep-prompt:
8 learnable text tokens prepended at every fusion layer (VPT-deep style), nothing else trains.
Trailing key=value pairs override the recipe (configs/glip_odinw.yaml), e.g. schedule.max_epochs=20.
Writes <output>/runs/<task>/<model>/<regime>/k<shots>_s<seed>_<id>.json (+ _predictions.json) and a row of
<output>/leaderboard.csv; fine-tuning checkpoints go to <output>/checkpoints/<id>/.
"""


def run(args: argparse.Namespace) -> int:
    from odinw_bench.runs.cache import RunCache
    from odinw_bench.runs.request import requests_from_args
    from odinw_bench.runs.runner import run_request, summary_table

    cache = RunCache()  # the seeds of one command share the checkpoint, the data and the frozen features
    try:
        outcomes = [run_request(request, cache=cache) for request in requests_from_args(args)]
    finally:
        cache.close()
    print(summary_table(outcomes))
    return 0
