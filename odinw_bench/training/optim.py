"""AdamW with GLIP's parameter-group rules (``make_optimizer`` in ``maskrcnn_benchmark/solver/build.py``).

GLIP builds one group per trainable parameter with:

* lr = ``language_lr`` if the name contains ``"language_backbone"``, else ``lr`` (the head's own BERT-style
  fusion layers do not match the substring and get ``lr``); a backend's ``language`` parameter group says the
  same for any backend (GLIP's group is exactly those names; Grounding DINO's and OWLv2's text towers have others);
* if the name contains ``"bias"`` -- a substring test, so ``relative_position_bias_table``, ``bias_lang`` and
  ``bias0`` match too -- lr x ``bias_lr_factor`` and weight decay ``weight_decay_bias``.

GLIP's two other factors, ``BACKBONE_BODY_LR_FACTOR`` and ``WEIGHT_DECAY_NORM_FACTOR``, are 1 in every ODinW config
and are left out. Here parameters with identical (lr, weight decay) share one group: AdamW's update is per element,
so the math is GLIP's, with at most four groups (``base``, ``base_bias``, ``language``, ``language_bias``) that
ReduceLROnPlateau scales together exactly as it scales GLIP's per-parameter groups.

Example:
    >>> optimizer = build_optimizer(backend, lr=1e-4, language_lr=1e-5, weight_decay=0.05)   # doctest: +SKIP
    >>> [(g["name"], g["lr"], g["weight_decay"]) for g in optimizer.param_groups]               # doctest: +SKIP
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

logger = logging.getLogger(__name__)

LANGUAGE_KEY = "language_backbone"
BIAS_KEY = "bias"


def parameter_settings(
    model: nn.Module,
    lr: float,
    language_lr: float,
    weight_decay: float,
    bias_lr_factor: float = 2.0,
    weight_decay_bias: float = 0.0,
) -> dict[str, tuple[str, float, float]]:
    """GLIP's (group, lr, weight decay) for every trainable parameter, by name.

    Args:
        model: The module whose ``named_parameters()`` are optimised (frozen ones are skipped).
        lr: ``SOLVER.BASE_LR``.
        language_lr: ``SOLVER.LANG_LR``.
        weight_decay: ``SOLVER.WEIGHT_DECAY``.
        bias_lr_factor: ``SOLVER.BIAS_LR_FACTOR``.
        weight_decay_bias: ``SOLVER.WEIGHT_DECAY_BIAS``.

    Returns:
        Parameter name -> ``(group name, lr, weight decay)``, in ``named_parameters`` order.
    """
    settings = {}
    language = _language_names(model)
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        group, group_lr, group_wd = "base", lr, weight_decay
        if name in language if language is not None else LANGUAGE_KEY in name:
            group, group_lr = "language", language_lr
        if BIAS_KEY in name:
            group, group_lr, group_wd = f"{group}_bias", group_lr * bias_lr_factor, weight_decay_bias
        settings[name] = (group, group_lr, group_wd)
    return settings


def _language_names(model: nn.Module) -> set[str] | None:
    """The text model's parameters by the backend's ``language`` group (for GLIP the same as GLIP's substring rule;
    other backends name their text towers differently); None for a module without groups."""
    groups = getattr(model, "parameter_groups", None)
    if groups is None:
        return None
    found = groups().get("language")
    return set(found) if found is not None else None


def build_param_groups(
    model: nn.Module,
    lr: float,
    language_lr: float,
    weight_decay: float,
    bias_lr_factor: float = 2.0,
    weight_decay_bias: float = 0.0,
) -> list[dict[str, Any]]:
    """Optimizer parameter groups under GLIP's rules, one per distinct (lr, weight decay).

    Returns:
        Groups ``{"name", "params", "lr", "weight_decay", "param_names"}`` in first-appearance order; empty groups
        are omitted.

    Raises:
        ValueError: If no parameter of ``model`` requires a gradient.
    """
    settings = parameter_settings(model, lr, language_lr, weight_decay, bias_lr_factor, weight_decay_bias)
    if not settings:
        raise ValueError("no parameter requires a gradient: nothing to optimise")
    params = dict(model.named_parameters())
    groups: dict[tuple[str, float, float], dict[str, Any]] = {}
    for name, (group, group_lr, group_wd) in settings.items():
        entry = groups.setdefault((group, group_lr, group_wd), {
            "name": group, "params": [], "lr": group_lr, "weight_decay": group_wd, "param_names": []})
        entry["params"].append(params[name])
        entry["param_names"].append(name)
    for entry in groups.values():
        logger.debug("param group %s: %d tensors, lr %g, weight decay %g", entry["name"], len(entry["params"]),
                     entry["lr"], entry["weight_decay"])
    return list(groups.values())


def build_optimizer(
    model: nn.Module,
    lr: float,
    language_lr: float,
    weight_decay: float,
    bias_lr_factor: float = 2.0,
    weight_decay_bias: float = 0.0,
    **_: Any,
) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` over :func:`build_param_groups` (betas 0.9/0.999, eps 1e-8, as GLIP's ADAMW).

    Extra keyword arguments (e.g. ``grad_clip_norm`` of a resolved ``optim`` section) are ignored, so the section
    can be passed as ``**resolved["optim"]``; clipping is the trainer's job.
    """
    import torch

    groups = build_param_groups(model, lr, language_lr, weight_decay, bias_lr_factor, weight_decay_bias)
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
