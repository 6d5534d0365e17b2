"""The outputs of a pre-training: the weights (safetensors, fp16) and a model card (JSON and Markdown).

The card records what anyone needs to trust or reproduce the weights: the recipe, the corpus (version and
generator), the seed, the steps, the wall time, the hardware, the software versions and the weights file's
sha256, which :mod:`odinw_bench.models.glip.shipped` checks before loading shipped weights. Each file is written
atomically, weights first, so a card never describes weights that are not there.
"""

from __future__ import annotations

import json
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

CARD_JSON = "model_card.json"
CARD_MD = "MODEL_CARD.md"
CARD_FORMAT = "odinw_bench-model-card"


def save_weights(backend: Any, path: Path) -> dict[str, Any]:
    """Write ``backend.model``'s state dict (official GLIP names) as safetensors, floats in fp16; return facts."""
    import torch
    from safetensors.torch import save_file

    from odinw_bench.atomic import atomic_target
    from odinw_bench.models.glip.checkpoint import sha256_file

    state = {k: (v.detach().to(torch.float16) if v.is_floating_point() else v.detach()).contiguous().clone()
             for k, v in backend.model.state_dict().items()}
    with atomic_target(path) as tmp:
        # One metadata key only: safetensors writes metadata in hash-map order, so more keys would make the bytes
        # (and the sha256) of equal weights differ between writes. The card holds the rest.
        save_file(state, str(tmp), metadata={"format": "pt"})
    return {"file": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size, "dtype": "float16",
            "parameters": sum(p.numel() for p in backend.model.parameters())}


def hardware() -> dict[str, Any]:
    """The machine the pre-training ran on."""
    import os

    import torch

    info: dict[str, Any] = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def software() -> dict[str, str]:
    import pytorch_lightning as pl
    import torch

    from odinw_bench import __version__

    return {"python": platform.python_version(), "torch": torch.__version__, "pytorch_lightning": pl.__version__,
            "odinw_bench": __version__}


def write_model_outputs(out: Path, backend: Any, *, config: Any, recipe_path: Any, overrides: list[str],
                        corpus: dict, steps: int, wall_time_s: float, final_loss: float | None,
                        precision: str) -> tuple[Path, Path, dict]:
    """Write ``<model>.safetensors``, ``model_card.json`` and ``MODEL_CARD.md`` into ``out`` (atomically each).

    Returns:
        ``(weights path, card path, card)``.
    """
    from odinw_bench.atomic import atomic_write_text
    from odinw_bench.models.glip.shipped import weights_file_name

    name = backend.config.name
    weights_path = Path(out) / weights_file_name(name)
    weights = save_weights(backend, weights_path)
    card = {
        "format": CARD_FORMAT, "version": 1, "model": name, "weights": weights,
        "recipe": {"file": str(recipe_path) if recipe_path else "configs/glip_pretrain.yaml",
                   "overrides": overrides, "values": config.to_dict()},
        "corpus": corpus, "seed": config.seed, "steps": steps, "batch_size": config.data.batch_size,
        "wall_time_s": round(wall_time_s, 1), "final_loss": final_loss, "precision": str(precision),
        "hardware": hardware(), "software": software(), "model_config": backend.config.to_dict(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    card_path = Path(out) / CARD_JSON
    atomic_write_text(card_path, json.dumps(card, indent=2) + "\n")
    atomic_write_text(Path(out) / CARD_MD, render_markdown(card))
    return weights_path, card_path, card


def add_zero_shot(out: str | Path, figure: dict) -> dict:
    """Write ``figure`` (:func:`odinw_bench.runs.card_evaluation.evaluate_zero_shot`) into the card in ``out``.

    Both ``model_card.json`` and ``MODEL_CARD.md`` are rewritten atomically; the weights are not touched, so their
    sha256 still matches.

    Returns:
        The updated card.
    """
    from odinw_bench.atomic import atomic_write_text
    from odinw_bench.jsonio import read_json_file

    card_path = Path(out) / CARD_JSON
    card = read_json_file(card_path, what="model card")
    card["zero_shot"] = figure
    atomic_write_text(card_path, json.dumps(card, indent=2) + "\n")
    atomic_write_text(Path(out) / CARD_MD, render_markdown(card))
    return card


def _zero_shot_markdown(card: dict) -> str:
    """The card's zero-shot table, or nothing when the card has none."""
    figure = card.get("zero_shot")
    if not figure:
        return ""
    rows = "\n".join(f"| {task} | {t['ap']:.1f} | `{t['command']}` |" for task, t in figure["tasks"].items())
    return f"""
## Zero-shot AP on `{figure['suite']}` (split `{figure['split']}`, AP x 100)

| task | AP | reproduce |
|---|---:|---|
{rows}
| **mean** | **{figure['mean_ap']:.1f}** | |
"""


def render_markdown(card: dict) -> str:
    """The human-readable model card."""
    w, corpus, hw = card["weights"], card["corpus"], card["hardware"]
    gen = corpus.get("generator") or {}
    where = hw.get("gpu") or f"{hw['cpu_count']} CPU cores ({hw['processor']})"
    loss = "n/a" if card["final_loss"] is None else f"{card['final_loss']:.4f}"
    return f"""# {card['model']}

A small GLIP (Swin + FPN + BERT + VLDyHead, the code of `odinw_bench.models.glip`) pre-trained from random weights
by `python -m odinw_bench pretrain` on a synthetic grounding corpus. It is a teaching and testing model: it knows
only the corpus's categories and visual style, nothing of real photographs; its numbers are not GLIP's.

| | |
|---|---|
| weights | `{w['file']}`, {w['parameters']:,} parameters, {w['dtype']}, {w['bytes']:,} bytes |
| sha256 | `{w['sha256']}` |
| corpus | {gen.get('name', '?')} v{gen.get('version', '?')} (format v{corpus.get('version')}, generator seed {gen.get('seed', '?')}): {corpus.get('images')} images, {corpus.get('captions')} captions, {corpus.get('categories')} categories |
| recipe | `{card['recipe']['file']}` {' '.join(card['recipe']['overrides'])} |
| seed | {card['seed']} |
| steps | {card['steps']} (batch {card['batch_size']}) |
| final training loss | {loss} |
| wall time | {card['wall_time_s'] / 60:.1f} min on {where}, precision {card['precision']} |
| software | torch {card['software']['torch']}, Lightning {card['software']['pytorch_lightning']}, odinw_bench {card['software']['odinw_bench']} |
| created | {card['created']} |

`--model {card['model']}` loads these weights only if their sha256 matches `model_card.json`; without shipped
weights the preset starts from random weights (with a warning), as `glip-micro` does.
""" + _zero_shot_markdown(card)
