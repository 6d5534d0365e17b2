"""GLIP's weights in a fine-tuning run's ``model_best.ckpt``, under GLIP's own names, LoRA adapters merged.

The run's Lightning module holds the backend as ``backend`` and GLIP as its ``model``, so every weight is saved as
``backend.model.<GLIP name>``. Prompt offsets and deep prompts are weights like any other (the backend recreates
them on load). LoRA adapters (``<layer>.base_layer.*``, ``<layer>.lora_A.<adapter>.weight``, ``lora_B``) are merged
as peft merges them, ``W + scaling * B @ A``, with the scaling the run saved (``hyper_parameters.lora_scaling``),
so the file loads into a plain GLIP with the run's detections.

Example:
    >>> state = run_checkpoint_state(torch.load("model_best.ckpt", weights_only=True), path)   # doctest: +SKIP
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from odinw_bench.errors import UserError

RUN_MODEL_PREFIX = "backend.model."
#: ``<layer>.lora_A.<adapter>.weight``: the adapted layer's name and the adapter's.
_LORA_A = re.compile(r"^(?P<layer>.+)\.lora_A\.(?P<adapter>[^.]+)\.weight$")
#: Written by a resume checkpoint (``training.slim_state.FROZEN_KEY``): its frozen weights are only named.
_SLIM_MARK = "odinw_frozen_parameters"


def run_checkpoint_state(loaded: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """GLIP's weights of a run's ``model_best.ckpt`` (a ``torch.load`` result), LoRA adapters merged.

    Raises:
        UserError: A resume checkpoint (``last.ckpt``), LoRA adapters without their saved scaling (a file of an
            older version), or no GLIP weight in it.
    """
    if _SLIM_MARK in loaded:
        raise UserError("a resume checkpoint holds only the trained weights: give the run's model_best.ckpt", path=path)
    state = {key[len(RUN_MODEL_PREFIX):]: value for key, value in (loaded.get("state_dict") or {}).items()
             if key.startswith(RUN_MODEL_PREFIX)}
    if not state:
        raise UserError(f"no GLIP weights under '{RUN_MODEL_PREFIX}' in this Lightning checkpoint", path=path)
    if any(".lora_" in key for key in state):
        scaling = (loaded.get("hyper_parameters") or {}).get("lora_scaling")
        if scaling is None:
            raise UserError("the run trained LoRA adapters but its file does not say their scaling (an older "
                            "version wrote it): evaluate them with the run itself", path=path)
        state = merge_lora(state, float(scaling))
    return state


def merge_lora(state: Mapping[str, Any], scaling: float) -> dict[str, Any]:
    """Fold every adapter into its layer: ``weight = base_layer.weight + scaling * lora_B @ lora_A`` (one adapter
    per layer, as ``DetectorBackend.enable_lora`` adds), ``bias = base_layer.bias``.

    Args:
        state: Weights with peft's names; not changed.
        scaling: LoRA's ``alpha / rank``.

    Returns:
        The weights a model without adapters has.
    """
    out = {key: value for key, value in state.items() if ".lora_" not in key and ".base_layer." not in key}
    for key in state:
        found = _LORA_A.match(key)
        if found is None:
            continue
        layer, adapter = found["layer"], found["adapter"]
        down, up = state[key], state[f"{layer}.lora_B.{adapter}.weight"]  # (r, in), (out, r)
        base = state[f"{layer}.base_layer.weight"]
        out[f"{layer}.weight"] = (base.float() + scaling * (up.float() @ down.float())).to(base.dtype)
        if f"{layer}.base_layer.bias" in state:
            out[f"{layer}.bias"] = state[f"{layer}.base_layer.bias"]
    return out
