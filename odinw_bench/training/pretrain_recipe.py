"""The pre-training recipe: ``configs/glip_pretrain.yaml``, a user file, then ``key=value`` overrides.

Read and checked with the fine-tuning recipe's machinery (:mod:`odinw_bench.training.run_config`): an OmegaConf
structured schema, so an unknown key or a value of the wrong type is an error naming the key and the file.

Example:
    >>> cfg = load_pretrain_config(overrides=["schedule.max_steps=20"])
    >>> cfg.schedule.max_steps, cfg.data.batch_size
    (20, 8)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from odinw_bench import paths
from odinw_bench.errors import UserError
from odinw_bench.training.run_config import (
    PRECISIONS,
    WANDB_MODES,
    OptimConfig,
    WandbConfig,
)


@dataclass
class PretrainOptimConfig(OptimConfig):
    """AdamW with GLIP's parameter groups; defaults are the recipe's (a from-scratch model, see the YAML)."""

    lr: float = 1e-3
    language_lr: float = 1e-3
    weight_decay: float = 1e-4


@dataclass
class PretrainScheduleConfig:
    """GLIP's pre-training schedule: linear warm-up, then multi-step decay at fractions of ``max_steps``."""

    max_steps: int = 6000
    warmup_steps: int = 100
    warmup_factor: float = 0.001
    decay_at: list[float] = field(default_factory=lambda: [0.67, 0.89])
    gamma: float = 0.1
    checkpoint_every: int = 250


@dataclass
class PretrainDataConfig:
    """The loader: batch size (global), worker processes."""

    batch_size: int = 8
    num_workers: int = 1


@dataclass
class PretrainTrainerConfig:
    """Lightning ``Trainer`` options; precision ``auto`` is AMP on a GPU and 32-bit on the CPU."""

    precision: str = "auto"
    accelerator: str = "auto"
    devices: int = 1
    deterministic: bool = True
    log_every_n_steps: int = 10


@dataclass
class PretrainConfig:
    """The whole pre-training recipe (see ``configs/glip_pretrain.yaml`` for the source of each value)."""

    seed: int = 0
    freeze_conv_body_at: int = -1
    optim: PretrainOptimConfig = field(default_factory=PretrainOptimConfig)
    schedule: PretrainScheduleConfig = field(default_factory=PretrainScheduleConfig)
    data: PretrainDataConfig = field(default_factory=PretrainDataConfig)
    trainer: PretrainTrainerConfig = field(default_factory=PretrainTrainerConfig)
    wandb: WandbConfig = field(default_factory=lambda: WandbConfig(log_images=0))

    def to_dict(self) -> dict[str, Any]:
        """The recipe as plain data (model cards, W&B)."""
        return dataclasses.asdict(self)


def default_pretrain_config_path() -> Path:
    """``configs/glip_pretrain.yaml`` at the repository root."""
    return paths.REPO_DIR / "configs" / "glip_pretrain.yaml"


def load_pretrain_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> PretrainConfig:
    """Read the recipe, then ``path`` (if given), then dotted ``key=value`` overrides.

    Raises:
        UserError: For an unreadable file, an unknown key, a wrong type or a value out of range, naming the key and
            the file (or the command line).
    """
    from odinw_bench.training.run_config import merge_recipe

    recipe = default_pretrain_config_path()
    config, _, override_keys = merge_recipe(PretrainConfig, recipe, path, overrides)
    _check_values(config, set(override_keys), Path(path) if path is not None else recipe)
    return config


def _check_values(config: PretrainConfig, from_command_line: set[str], path: Path) -> None:
    """Ranges and choices the types cannot express."""

    def fail(key: str, message: str) -> None:
        if key in from_command_line:
            raise UserError(f"{message} (command-line override)", field=key)
        raise UserError(message, path=path, field=key)

    values = {"optim.lr": config.optim.lr, "optim.language_lr": config.optim.language_lr,
              "schedule.max_steps": config.schedule.max_steps, "data.batch_size": config.data.batch_size,
              "schedule.checkpoint_every": config.schedule.checkpoint_every, "trainer.devices": config.trainer.devices,
              "trainer.log_every_n_steps": config.trainer.log_every_n_steps}
    for key, value in values.items():
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            fail(key, f"expected a value > 0, found {value}")
    for key, value in {"optim.weight_decay": config.optim.weight_decay, "data.num_workers": config.data.num_workers,
                       "schedule.warmup_steps": config.schedule.warmup_steps,
                       "optim.grad_clip_norm": config.optim.grad_clip_norm}.items():
        if value < 0:
            fail(key, f"expected a value >= 0, found {value}")
    if not 0 < config.schedule.warmup_factor <= 1:
        fail("schedule.warmup_factor", f"expected a value in (0, 1], found {config.schedule.warmup_factor}")
    if not 0 < config.schedule.gamma <= 1:
        fail("schedule.gamma", f"expected a value in (0, 1], found {config.schedule.gamma}")
    if any(not 0 < f < 1 for f in config.schedule.decay_at) or config.schedule.decay_at != sorted(
            config.schedule.decay_at):
        fail("schedule.decay_at", f"expected increasing fractions in (0, 1), found {config.schedule.decay_at}")
    for key, value, allowed in (("wandb.mode", config.wandb.mode, WANDB_MODES),
                                ("trainer.precision", config.trainer.precision, PRECISIONS)):
        if value not in allowed:
            fail(key, f"expected one of {', '.join(allowed)}, found {value!r}")


def lr_factor(step: int, schedule: PretrainScheduleConfig | dict) -> float:
    """GLIP's ``WarmupMultiStepLR`` factor at ``step``: linear warm-up from ``warmup_factor``, then x ``gamma`` at
    each ``decay_at`` fraction of ``max_steps``."""
    s = schedule if isinstance(schedule, dict) else dataclasses.asdict(schedule)
    warmup = 1.0
    if step < s["warmup_steps"]:
        alpha = step / s["warmup_steps"]
        warmup = s["warmup_factor"] * (1 - alpha) + alpha
    milestones = [int(f * s["max_steps"]) for f in s["decay_at"]]
    return warmup * s["gamma"] ** sum(step >= m for m in milestones)

