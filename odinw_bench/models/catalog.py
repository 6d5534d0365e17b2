"""Model names: which backend runs a name, where its weights come from, and what identifies them.

Three kinds of names reach ``run --model`` and ``sweep --models``:

* GLIP presets (``glip-t``, ``glip-l``, ``glip-nano``, ...): the pure-PyTorch GLIP port;
* Hugging Face presets (``gdino-t``, ``gdino-b``, ``mm-gdino-t``, ``llmdet-t``, ``owlv2-b``, ``owlv2-l``): a
  published checkpoint run by its transformers class (:mod:`odinw_bench.models.hf.presets`,
  :mod:`odinw_bench.models.hf.owl_presets`);
* ``hf:<hub id or folder>``: any checkpoint of a supported transformers detector, e.g. a fine-tuned folder.

Reading a name needs no weights: a preset is data, ``hf:`` reads only ``config.json`` (from the folder, or the
Hugging Face cache; offline mode is honoured).

Example:
    >>> resolve_model("gdino-t").backend
    'grounding-dino'
    >>> resolve_model("glip-t").backend
    'glip'
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from odinw_bench.errors import UserError

HF_PREFIX = "hf:"
#: Config ``model_type`` -> the backend (``odinw_bench.models.base.BACKENDS`` key) that runs it.
HF_MODEL_TYPES = {"grounding-dino": "grounding-dino", "mm-grounding-dino": "grounding-dino", "owlv2": "owlv2"}


@dataclass(frozen=True)
class ModelRef:
    """What a model name stands for.

    Attributes:
        name: The name as given (the record's model name).
        backend: The backend that runs it (``glip``, ``grounding-dino`` or ``owlv2``).
        source: Hugging Face models: the hub id or folder of the weights; None for GLIP.
        preset: Hugging Face presets: the preset's values (resolution, scoring, pre-training data, sources).
    """

    name: str
    backend: str
    source: str | None = None
    preset: dict[str, Any] = field(default_factory=dict)

    @property
    def is_hf(self) -> bool:
        return self.backend != "glip"


def hf_presets() -> dict[str, dict[str, Any]]:
    """Every Hugging Face preset by name (built on call): Grounding DINO family and OWLv2."""
    from odinw_bench.models.hf.owl_presets import presets as owl_presets
    from odinw_bench.models.hf.presets import presets

    return {**presets(), **owl_presets()}


def resolve_model(name: str, *, local_files_only: bool | None = None) -> ModelRef:
    """The backend and weights source of a model name.

    Raises:
        UserError: An unknown name (with the closest known ones), or an ``hf:`` source that is not a supported
            detector (its ``config.json`` names the ``model_type``).
    """
    from odinw_bench.models.glip.config import list_presets

    if name.startswith(HF_PREFIX):
        source = name[len(HF_PREFIX):].strip()
        if not source:
            raise UserError("hf: needs a hub id or a folder, e.g. hf:IDEA-Research/grounding-dino-tiny",
                            field="--model")
        return ModelRef(name, hf_backend_of(source, local_files_only=local_files_only), source)
    hf = hf_presets()
    if name in hf:
        return ModelRef(name, HF_MODEL_TYPES[hf[name]["model_type"]], hf[name]["hub_id"], hf[name])
    glip = list_presets()
    if name.strip().lower().replace("_", "-") in glip:  # GLIP's own spelling rule (get_preset)
        return ModelRef(name, "glip")
    known = [*glip, *hf]
    close = difflib.get_close_matches(name.strip().lower(), known, n=1, cutoff=0.4)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise UserError(f"unknown model '{name}'; {hint}known: {', '.join(known)}, or hf:<hub id or folder>",
                    field="--model")


def hf_backend_of(source: str | Path, *, local_files_only: bool | None = None) -> str:
    """The backend of a Hugging Face checkpoint, from its ``config.json``'s ``model_type``.

    Raises:
        UserError: No readable config, or a ``model_type`` no backend runs.
    """
    from odinw_bench.models.hf.loading import read_config, resolve_offline

    config = read_config(source, resolve_offline(local_files_only))
    model_type = config.get("model_type")
    if model_type not in HF_MODEL_TYPES:
        raise UserError(f"model_type '{model_type}' is not a detector this harness runs (supported: "
                        f"{', '.join(HF_MODEL_TYPES)})", path=source, field="model_type")
    return HF_MODEL_TYPES[model_type]


def pretraining_includes_odinw(name: str) -> bool:
    """Whether a model's pre-training data included ODinW (its "zero-shot" ODinW numbers are not zero-shot)."""
    preset = hf_presets().get(name)
    return bool(preset and preset.get("pretraining_includes_odinw"))


def load_hf_backend(ref: ModelRef, weights: str | Path) -> Any:
    """The backend of a Hugging Face model with the weights of ``weights`` (a local folder), set up as its preset
    says (test resolution, prompt templates, scoring rule); an ``hf:`` model keeps the backend's defaults (the
    authors' evaluation: Grounding DINO 800/1333 and top-300 span-mean scoring, OWLv2 its processor's square, the
    7-template ensemble and top-300 scoring).

    Each backend gets only the loading options its preset names: Grounding DINO presets a resize
    (``shortest_edge``/``longest_edge``), OWLv2 presets their ``prompt_templates``.
    """
    from odinw_bench.models.base import load_backend

    preset = ref.preset
    options: dict[str, Any] = {key: preset[key] for key in ("shortest_edge", "longest_edge") if key in preset}
    if "prompt_templates" in preset:
        options["templates"] = tuple(preset["prompt_templates"])
    backend = load_backend(ref.backend).from_pretrained(weights, local_files_only=True, **options)
    if "score_rule" in preset:
        backend.configure_scoring(preset["score_rule"], topk=preset["topk"], threshold=preset["score_threshold"])
    return backend
