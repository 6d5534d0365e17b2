"""Tuning regimes as data: which parameter groups of a backend train, and whether there is a fit at all.

The four ODinW regimes reproduce GLIP's ``SOLVER.TUNING_HIGHLEVEL_OVERRIDE`` (``tools/finetune.py``):

========== ===================== ==================================================================
regime      GLIP override          trains
========== ===================== ==================================================================
zero-shot   (no fine-tuning)       nothing; evaluation only
linear-probe ``linear_prob``       the 9 head tensors of GLIP's LINEAR_PROB rule (198,919 for GLIP-T)
prompt      ``language_prompt_v2`` only the zero-initialised per-position text offset (``tunable_linear``)
full        ``full``               everything but ``cls_logits`` and the stages frozen by FREEZE_CONV_BODY_AT
language    ``language_prompt_v1`` the BERT language backbone only
========== ===================== ==================================================================

``lora`` / ``lora-language`` (not GLIP regimes) train only LoRA adapters added by ``peft`` to the attention
projections of the language model and the fusion layers, or of the language model only. ``deep-prompt`` (not a
GLIP regime either) trains only learnable text tokens prepended at every fusion layer, in the manner of VPT-deep.

``linear-probe-cached`` trains what ``linear-probe`` trains, faster and not quite as GLIP: its tower runs in eval
mode (GLIP's ``linear_prob`` keeps the fusion's and BERT layers' dropout on) and each image alone, so the tower's
output is computed once per (image, resize, flip) and reused in every later epoch. Its records list both
differences under ``protocol_differences``; it is never compared with GLIP's published linear-probe numbers.

Example:
    >>> regime = get_regime("linear-probe")
    >>> trainable = apply_regime(backend, regime, freeze_conv_body_at=2)   # doctest: +SKIP
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from odinw_bench.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

#: The deep-prompt regime's learning rate: of the search grid 1e-4 .. 1 (``run --search lr``, 3-epoch trials), the
#: best mean val AP over the demo suite's 4 tasks at 3 shots with glip-nano (1e-2: 34.3, 0.1: 34.9, 1: 33.9).
DEEP_PROMPT_LR = 0.1

# Every group of the backend (``groups``), or every group the regime does not train (``eval_groups``).
ALL_GROUPS = "*"


@dataclass(frozen=True)
class Regime:
    """One tuning regime.

    Attributes:
        name: Our name (``zero-shot``, ``linear-probe``, ``prompt``, ``full``, ``language``).
        glip_name: The official ``TUNING_HIGHLEVEL_OVERRIDE`` it reproduces (recorded with results).
        fit: Whether the regime trains at all (zero-shot only evaluates).
        groups: Backend parameter groups (``DetectorBackend.parameter_groups``) that train; ``("*",)``: all.
            A backend's ``head`` group is what a linear probe trains (GLIP: its LINEAR_PROB rule's tensors).
        name_filter: If set, only parameters whose name contains one of these substrings train.
        eval_groups: Groups GLIP freezes *as modules* (``BACKBONE/FPN/RPN/LANGUAGE_BACKBONE.FREEZE``): they run
            in eval mode during training; ``("*",)``: every group the regime does not train. Linear probing
            freezes only backbone, FPN and language this way: the head tower keeps GLIP's train-mode dropout
            although none of its parameters train. Groups a backend does not have are ignored.
        prompt_tuning: Add the backend's prompt-tuning parameters first.
        cached_tower: Compute the frozen tower per image and reuse it across epochs
            (``DetectorBackend.set_cached_tower``).
        protocol_differences: How the regime departs from GLIP's (recorded with every result), empty if not.
        lora_groups: Parameter groups whose attention projections get LoRA adapters (``DetectorBackend.enable_lora``,
            through ``peft``); empty: no adapters.
        lora_rank, lora_alpha: The adapters' rank and scaling numerator (LoRA's ``r`` and ``alpha``).
        deep_prompt_tokens: Learnable text tokens added at every fusion layer
            (``DetectorBackend.enable_deep_prompts``); 0: none.
        lr: Learning-rate override of the recipe (GLIP's prompt tuning uses 0.05), or None.
        weight_decay: Weight-decay override (prompt tuning: 0.25), or None.
    """

    name: str
    glip_name: str
    fit: bool
    groups: tuple[str, ...] = ()
    name_filter: tuple[str, ...] | None = None
    eval_groups: tuple[str, ...] = ()
    prompt_tuning: bool = False
    cached_tower: bool = False
    protocol_differences: tuple[str, ...] = ()
    lora_groups: tuple[str, ...] = ()
    lora_rank: int = 8
    lora_alpha: float = 16.0
    deep_prompt_tokens: int = 0
    lr: float | None = None
    weight_decay: float | None = None


def regimes() -> dict[str, Regime]:
    """All regimes by name (built on call: no module-level registry)."""
    everything = (ALL_GROUPS,)
    return {r.name: r for r in (
        Regime("zero-shot", "none", fit=False, eval_groups=everything),
        Regime("linear-probe", "linear_prob", fit=True, groups=("head",),
               eval_groups=("backbone", "fpn", "language")),
        Regime("linear-probe-cached", "linear_prob", fit=True, groups=("head",),
               eval_groups=("backbone", "fpn", "language", "tower"), cached_tower=True,
               protocol_differences=(
                   "head tower in eval mode: no dropout in its fusion and BERT layers (GLIP's linear_prob trains "
                   "with them on)",
                   "tower run on each image alone (padded to a multiple of 32), its output zero-padded to the "
                   "batch; GLIP runs the batch padded to its largest image",
               )),
        Regime("prompt", "language_prompt_v2", fit=True, groups=("prompt",), eval_groups=everything,
               prompt_tuning=True, lr=0.05, weight_decay=0.25),
        Regime("full", "full", fit=True, groups=everything),
        Regime("language", "language_prompt_v1", fit=True, groups=("language",), eval_groups=everything),
        # Not GLIP regimes: LoRA adapters (rank 8, alpha 16, as in the LoRA paper's GPT-3 runs) on the attention
        # projections of the text model and of the fusion (GLIP's tower, Grounding DINO's encoder/decoder).
        Regime("lora", "none", fit=True, groups=("lora",), eval_groups=everything,
               lora_groups=("language", "tower", "fusion"),
               protocol_differences=("not in GLIP's protocol: LoRA adapters (rank 8, alpha 16) on the attention "
                                     "projections of the language model and the fusion layers; nothing else trains",)),
        Regime("lora-language", "none", fit=True, groups=("lora",), eval_groups=everything,
               lora_groups=("language",),
               protocol_differences=("not in GLIP's protocol: LoRA adapters (rank 8, alpha 16) on the attention "
                                     "projections of the language model; nothing else trains",)),
        # Not a GLIP regime: VPT-deep-style text tokens (8 per fusion layer) that the image attends to.
        Regime("deep-prompt", "none", fit=True, groups=("deep_prompt",), eval_groups=everything,
               deep_prompt_tokens=8, lr=DEEP_PROMPT_LR,
               protocol_differences=("not in GLIP's protocol: 8 learnable text tokens prepended at every fusion "
                                     "layer (the image attends to them); nothing else trains",)),
    )}


def get_regime(name: str) -> Regime:
    """The regime called ``name`` (underscores accepted).

    Raises:
        UserError: For an unknown name, with the closest names.
    """
    known = regimes()
    key = name.strip().lower().replace("_", "-")
    if key in known:
        return known[key]
    close = difflib.get_close_matches(key, known, n=2, cutoff=0.4)
    hint = f" (did you mean: {', '.join(close)}?)" if close else ""
    raise UserError(f"unknown regime '{name}'{hint}; known: {', '.join(known)}", field="--regime")


def apply_regime(backend: nn.Module, regime: Regime, *, freeze_conv_body_at: int = -1) -> list[str]:
    """Set ``requires_grad`` of every backend parameter as ``regime`` says, and return the trainable names.

    Args:
        backend: A backend (``DetectorBackend`` and ``nn.Module``).
        regime: The regime to apply.
        freeze_conv_body_at: GLIP's ``MODEL.BACKBONE.FREEZE_CONV_BODY_AT``: 2 (the ODinW recipe) also freezes the
            Swin patch embedding and stage 1 in every regime; -1 freezes nothing more.

    Returns:
        Sorted names (as in ``backend.named_parameters()``) of the parameters that train.

    Raises:
        UserError: If a regime that fits would train nothing.
    """
    if regime.prompt_tuning:
        backend.enable_prompt_tuning()
    if regime.lora_groups:
        backend.enable_lora(regime.lora_groups, regime.lora_rank, regime.lora_alpha)
    if regime.deep_prompt_tokens:
        backend.enable_deep_prompts(regime.deep_prompt_tokens)
    set_cached_tower = getattr(backend, "set_cached_tower", None)
    if set_cached_tower is not None:
        set_cached_tower(regime.cached_tower)
    elif regime.cached_tower:
        raise UserError(f"regime '{regime.name}' needs a backend that can cache its tower", field="--regime")
    groups = backend.parameter_groups()
    trained = list(groups) if ALL_GROUPS in regime.groups else list(regime.groups)
    unknown = [g for g in trained if g not in groups]
    if unknown:
        raise UserError(f"regime '{regime.name}' needs parameter groups {unknown} that backend "
                        f"'{getattr(backend, 'name', type(backend).__name__)}' does not have", field="--regime")
    chosen = {name for g in trained for name in groups[g]}
    if regime.name_filter is not None:
        chosen = {n for n in chosen if any(key in n for key in regime.name_filter)}
    chosen -= set(_backend_names(backend, "never_trained_names"))
    chosen -= set(_backend_names(backend, "frozen_stage_names", freeze_conv_body_at))
    for name, param in backend.named_parameters():
        param.requires_grad_(name in chosen)
    if regime.fit and not chosen:
        raise UserError(f"regime '{regime.name}' would train no parameter of this model", field="--regime")
    return sorted(chosen)


def _backend_names(backend: nn.Module, method: str, *args: int) -> list[str]:
    """``backend.<method>(*args)`` (``DetectorBackend.frozen_stage_names`` / ``never_trained_names``), [] when
    the backend has no such method."""
    found = getattr(backend, method, None)
    return list(found(*args)) if found is not None else []


def set_frozen_modules_eval(backend: nn.Module, regime: Regime, *, freeze_conv_body_at: int = -1) -> list[str]:
    """Put the modules GLIP freezes into eval mode (no dropout, drop path or DropBlock there).

    GLIP re-applies this on every ``train()`` call (``GeneralizedVLRCNN.train``); call it after ``backend.train()``.
    A module is switched when all its parameters belong to the regime's ``eval_groups`` or to the Swin stages
    frozen by ``freeze_conv_body_at``; modules without parameters follow their parent.

    Returns:
        Names of the switched modules (outermost only).
    """
    groups = backend.parameter_groups()
    if ALL_GROUPS in regime.eval_groups:
        trained = set(groups) if ALL_GROUPS in regime.groups else set(regime.groups)
        eval_groups = [g for g in groups if g not in trained]
    else:
        eval_groups = [g for g in regime.eval_groups if g in groups]
    frozen = {name for g in eval_groups for name in groups[g]}
    frozen |= set(_backend_names(backend, "frozen_stage_names", freeze_conv_body_at))
    switched: list[str] = []

    def visit(prefix: str, module: nn.Module) -> None:
        names = [f"{prefix}.{n}" if prefix else n for n, _ in module.named_parameters()]
        if names and all(n in frozen for n in names):
            module.eval()
            switched.append(prefix or "<root>")
            return
        for child_name, child in module.named_children():
            visit(f"{prefix}.{child_name}" if prefix else child_name, child)

    visit("", backend)
    return switched


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter elements of ``model``."""
    total = trainable = 0
    for param in model.parameters():
        total += param.numel()
        trainable += param.numel() if param.requires_grad else 0
    return trainable, total
