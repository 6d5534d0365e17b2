"""``python -m odinw_bench pretrain``: pre-train a small GLIP (glip-nano) on a synthetic grounding corpus."""

from __future__ import annotations

import argparse

HELP = "pre-train glip-nano from random weights on a grounding corpus; write safetensors weights and a model card"

EPILOG = """\
examples:
  python -m odinw_bench pretrain --corpus corpus/ --out pretrain/               # configs/glip_pretrain.yaml
  python -m odinw_bench pretrain --corpus corpus/ --out pretrain/ --resume      # continue an interrupted run
  python -m odinw_bench pretrain --corpus corpus/ --out quick/ schedule.max_steps=50 data.batch_size=4

Writes <out>/glip-nano.safetensors, <out>/model_card.json and <out>/MODEL_CARD.md at the end, then evaluates the
weights zero-shot on --eval-suite (records under <out>/zero_shot/) and writes that AP into the card; checkpoints go to
<out>/checkpoints/last.ckpt every schedule.checkpoint_every steps. Trailing key=value pairs override the recipe.
To ship the result, copy the weights and model_card.json into odinw_bench/resources/models/glip-nano/.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--corpus", required=True, help="grounding corpus folder (corpus.json + images/)")
    parser.add_argument("--out", required=True, help="output folder (weights, model card, checkpoints)")
    parser.add_argument("--model", default="glip-nano", help="GLIP preset to pre-train (default: glip-nano)")
    parser.add_argument("--recipe", default=None, help="recipe YAML on top of configs/glip_pretrain.yaml")
    parser.add_argument("--resume", action="store_true", help="continue from <out>/checkpoints/last.ckpt")
    parser.add_argument("--wandb", choices=("off", "offline", "online"), default=None,
                        help="W&B logging (default: the recipe's, off)")
    parser.add_argument("--eval-suite", default="demo_suite",
                        help="suite whose zero-shot AP the model card reports (default: demo_suite; none: skip)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar: one line per logged step")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides")


def run(args: argparse.Namespace) -> int:
    from odinw_bench.training.pretrain import run_pretraining

    overrides = list(args.overrides) + ([f"wandb.mode={args.wandb}"] if args.wandb else [])
    result = run_pretraining(args.corpus, args.out, model=args.model, resume=args.resume, recipe=args.recipe,
                             overrides=overrides, progress=not args.no_progress)
    card = result.card
    if args.eval_suite != "none":
        card = _add_zero_shot(args, result)
    print(f"{card['model']}: {card['steps']} steps in {card['wall_time_s'] / 60:.1f} min, final loss "
          f"{card['final_loss']}; wrote {result.weights_path} (sha256 {card['weights']['sha256'][:12]}...) and "
          f"{result.card_path}")
    if card.get("zero_shot"):
        figure = card["zero_shot"]
        per_task = ", ".join(f"{task} {t['ap']:.1f}" for task, t in figure["tasks"].items())
        print(f"zero-shot AP on {figure['suite']} ({figure['split']}): mean {figure['mean_ap']:.1f} ({per_task})")
    return 0


def _add_zero_shot(args: argparse.Namespace, result) -> dict:
    """Evaluate the new weights zero-shot on ``--eval-suite`` and write the figure into the card."""
    from pathlib import Path

    from odinw_bench.runs.card_evaluation import evaluate_zero_shot
    from odinw_bench.training.model_card import add_zero_shot

    figure = evaluate_zero_shot(result.weights_path, model=result.card["model"], suite=args.eval_suite,
                                output=Path(args.out) / "zero_shot", progress=not args.no_progress)
    return add_zero_shot(args.out, figure)
