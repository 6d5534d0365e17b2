"""Pre-training a GLIP (``glip-nano``) on a grounding corpus with Lightning, resumably.

The model, its loss (``GLIP.compute_losses``: ATSS + token focal loss), GLIP's optimiser groups, the non-finite
loss guard and the RNG-state checkpointing are fine-tuning's (:class:`~odinw_bench.training.module.DetectionModule`,
:mod:`~odinw_bench.training.optim`, :mod:`~odinw_bench.training.callbacks`); what pre-training adds is a caption
per image (:mod:`~odinw_bench.training.pretrain_data`), GLIP's warm-up multi-step schedule by step, a fixed number
of steps with no validation, and a checkpoint every ``schedule.checkpoint_every`` steps written atomically.

Example::

    result = run_pretraining("corpus/", "out/", model="glip-nano", overrides=["schedule.max_steps=20"])
    result.weights_path     # out/glip-nano.safetensors, with out/model_card.json and out/MODEL_CARD.md
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from odinw_bench.errors import UserError
from odinw_bench.training.module import DetectionModule

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
# Expected in pre-training beyond every fit's (training/fitting.py): no validation loop, resuming mid-epoch.
_EXPECTED_WARNINGS = (r".*defined a `validation_step` but have no `val_dataloader`.*",
                      r".*resuming from a checkpoint that ended before the epoch ended.*")


class PretrainModule(DetectionModule):
    """:class:`DetectionModule` trained on grounding batches (a caption per image) for a fixed number of steps.

    Args:
        backend: A :class:`~odinw_bench.models.glip.backend.GLIPBackend`.
        optim: The recipe's ``optim`` section (GLIP's AdamW groups; ``grad_clip_norm`` is the trainer's).
        schedule: The recipe's ``schedule`` section (warm-up, ``decay_at``, ``gamma``, ``max_steps``).
        freeze_conv_body_at: GLIP's ``FREEZE_CONV_BODY_AT`` (-1: a random init trains everything).
    """

    def __init__(self, backend: torch.nn.Module, optim: Mapping[str, Any], schedule: Mapping[str, Any],
                 freeze_conv_body_at: int = -1, max_nonfinite_steps: int = 20):
        super().__init__(backend, "full", [], optim, schedule, freeze_conv_body_at=freeze_conv_body_at,
                         max_nonfinite_steps=max_nonfinite_steps)

    def setup(self, stage: str) -> None:
        """No validation ground truth: pre-training runs its steps and stops."""

    def grounding_losses(self, batch: Any) -> dict[str, torch.Tensor]:
        """GLIP's losses of a :class:`~odinw_bench.training.pretrain_data.GroundingBatch` (per-image captions)."""
        return self.backend.model.compute_losses(batch.images, batch.input_ids, batch.attention_mask, batch.targets)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor | None:
        """Sum of the losses; None (no update) when it is NaN/Inf, as in fine-tuning."""
        losses = self.grounding_losses(batch)
        total = sum(losses.values())
        size = len(batch.image_sizes)
        if not self._guard.check(total, losses):
            self.log("train/nonfinite_steps", float(self._guard.total), batch_size=size)
            return None
        for name, value in losses.items():
            self.log(f"train/{name}", value.detach(), batch_size=size)
        self.log("train/loss", total.detach(), prog_bar=True, batch_size=size)
        self.log("lr/base", float(self.optimizers().param_groups[0]["lr"]), batch_size=size)
        return total

    def configure_optimizers(self) -> dict[str, Any]:
        """GLIP's AdamW groups with ``WarmupMultiStepLR`` stepped every optimizer step."""
        from odinw_bench.training.optim import build_optimizer
        from odinw_bench.training.pretrain_recipe import lr_factor

        optimizer = build_optimizer(self.backend, **self.hparams.optim)
        schedule = dict(self.hparams.schedule)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, schedule))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class AtomicLastCheckpoint(pl.Callback):
    """Write ``last.ckpt`` (weights, optimizer, scheduler, loops, callbacks) every ``every`` steps, atomically.

    The data order is keyed on the global step (:class:`~odinw_bench.training.pretrain_data.StepBatchSampler`),
    so a resume from any of these checkpoints continues exactly. The callback also carries the training wall
    time across resumes (the model card's ``wall_time_s``).
    """

    def __init__(self, dirpath: str | Path, every: int):
        self.path, self.every = Path(dirpath) / LAST_CHECKPOINT, every
        self.elapsed_before = 0.0
        self._started = time.monotonic()

    @property
    def wall_time_s(self) -> float:
        """Training seconds over every session of this pre-training."""
        return self.elapsed_before + time.monotonic() - self._started

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        from odinw_bench.atomic import atomic_target

        if trainer.global_step == 0 or trainer.global_step % self.every:
            return
        with atomic_target(self.path) as tmp:
            trainer.save_checkpoint(tmp, weights_only=False)  # all of it: a resume needs the optimizer
        logger.info("step %d: saved %s", trainer.global_step, self.path)

    def state_dict(self) -> dict[str, Any]:
        return {"wall_time_s": self.wall_time_s}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.elapsed_before = float(state_dict.get("wall_time_s", 0.0))
        self._started = time.monotonic()


class StepLog(pl.Callback):
    """One log line every ``every`` steps (loss, lr, speed): progress for logs without a progress bar."""

    def __init__(self, every: int, max_steps: int):
        self.every, self.max_steps = every, max_steps
        self._last = (0, time.monotonic())

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if step % self.every and step != self.max_steps:
            return
        loss = trainer.callback_metrics.get("train/loss")
        steps, since = step - self._last[0], time.monotonic() - self._last[1]
        self._last = (step, time.monotonic())
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else float("nan")
        print(f"step {step}/{self.max_steps}  loss {float(loss) if loss is not None else float('nan'):.4f}  "
              f"lr {lr:.3g}  {since / max(steps, 1):.2f} s/step", flush=True)


@dataclass
class PretrainResult:
    """What :func:`run_pretraining` produced."""

    weights_path: Path
    card_path: Path
    card: dict


def run_pretraining(corpus: str | Path, out: str | Path, *, model: str = "glip-nano", resume: bool = False,
                    recipe: str | Path | None = None, overrides: Sequence[str] = (), progress: bool = True,
                    callbacks: Sequence[pl.Callback] = ()) -> PretrainResult:
    """Pre-train ``model`` from random weights on ``corpus``; write weights and model card into ``out``.

    Everything the user gave is checked before ``out`` is touched. Then checkpoints go to ``out/checkpoints/``;
    the weights (``<model>.safetensors``, fp16), ``model_card.json`` and ``MODEL_CARD.md`` are written at the end,
    each atomically.

    Args:
        corpus: A grounding corpus folder (format version 1).
        out: The output folder.
        model: A GLIP preset name.
        resume: Continue from ``out/checkpoints/last.ckpt`` (loaded with ``weights_only=True``).
        recipe: A YAML on top of ``configs/glip_pretrain.yaml``.
        overrides: ``key=value`` recipe overrides.
        progress: Show Lightning's progress bar (else one log line per ``trainer.log_every_n_steps`` steps).
        callbacks: Extra Lightning callbacks (tests interrupt a run with one).

    Raises:
        UserError: Bad corpus, recipe or model; an ``out`` that holds another pre-training; an unreadable checkpoint.
    """
    from odinw_bench.models.glip.backend import GLIPBackend
    from odinw_bench.models.glip.config import get_preset
    from odinw_bench.training.callbacks import RngStateCheckpoint
    from odinw_bench.training.monitoring import hide_lightning_tips
    from odinw_bench.training.pretrain_data import PretrainDataModule
    from odinw_bench.training.pretrain_recipe import load_pretrain_config

    config = load_pretrain_config(recipe, overrides)
    hide_lightning_tips()
    glip_config = get_preset(model)
    out = Path(out)
    dm = PretrainDataModule(corpus, input_config=glip_config.input, max_query_len=glip_config.language.max_query_len,
                            batch_size=config.data.batch_size, seed=config.seed,
                            max_steps=config.schedule.max_steps,
                            num_workers=config.data.num_workers)
    dm.setup()  # reads and checks the whole corpus before anything is written
    last = _check_out(out, glip_config.name, resume)
    pl.seed_everything(config.seed, workers=True, verbose=False)
    backend = GLIPBackend(glip_config)
    module = PretrainModule(backend, dict(config.to_dict()["optim"]), config.to_dict()["schedule"],
                            freeze_conv_body_at=config.freeze_conv_body_at)
    checkpoint = AtomicLastCheckpoint(out / CHECKPOINT_DIR, config.schedule.checkpoint_every)
    wb_logger = _wandb_logger(config, out, glip_config.name, dm)
    trainer = pl.Trainer(**_trainer_kwargs(config), logger=wb_logger if wb_logger is not None else False,
                         callbacks=[checkpoint, RngStateCheckpoint(),
                                    StepLog(config.trainer.log_every_n_steps, config.schedule.max_steps),
                                    *callbacks],
                         enable_checkpointing=False, enable_progress_bar=progress, enable_model_summary=False,
                         default_root_dir=str(out / CHECKPOINT_DIR))
    _fit(trainer, module, dm, last)
    from odinw_bench.training.model_card import write_model_outputs

    weights, card_path, card = write_model_outputs(
        out, backend, config=config, recipe_path=recipe, overrides=list(overrides), corpus=dm.describe(),
        steps=trainer.global_step, wall_time_s=checkpoint.wall_time_s,
        final_loss=_float(trainer.callback_metrics.get("train/loss")), precision=trainer.precision)
    if wb_logger is not None:
        _finish_wandb(wb_logger, card)
    return PretrainResult(weights, card_path, card)


def _check_out(out: Path, name: str, resume: bool) -> Path | None:
    """The checkpoint to resume from; refuses to mix two pre-trainings in one folder."""
    from odinw_bench.training.model_card import CARD_JSON

    last = out / CHECKPOINT_DIR / LAST_CHECKPOINT
    if (out / CARD_JSON).is_file() and not resume:
        raise UserError("holds a finished pre-training (model_card.json); choose another --out", path=out,
                        field="--out")
    if resume:
        if not last.is_file():
            logger.warning("no checkpoint to resume from at %s; starting from the beginning", last)
            return None
        return last
    if last.is_file():
        raise UserError(f"holds an interrupted pre-training ({CHECKPOINT_DIR}/{LAST_CHECKPOINT}): add --resume to "
                        "continue it, or choose another --out", path=out, field="--out")
    return None


def _trainer_kwargs(config: Any) -> dict[str, Any]:
    from odinw_bench.training.run_config import resolve_precision

    trainer, clip = config.trainer, config.optim.grad_clip_norm
    return {"max_steps": config.schedule.max_steps, "max_epochs": -1, "accelerator": trainer.accelerator,
            "devices": trainer.devices, "precision": resolve_precision(trainer.precision, trainer.accelerator),
            "gradient_clip_val": clip if clip > 0 else None, "gradient_clip_algorithm": "norm",
            "deterministic": trainer.deterministic, "log_every_n_steps": trainer.log_every_n_steps,
            "limit_val_batches": 0, "num_sanity_val_steps": 0}


def _fit(trainer: pl.Trainer, module: PretrainModule, dm: Any, last: Path | None) -> None:
    from odinw_bench.training.fitting import guarded_fit

    guarded_fit(trainer, module, dm, ckpt_path=last, oom_hint="lower data.batch_size",
                expected_warnings=_EXPECTED_WARNINGS)


def _wandb_logger(config: Any, out: Path, name: str, dm: Any) -> Any:
    from odinw_bench.training.wandb_logging import make_wandb_logger

    wb = config.wandb
    return make_wandb_logger(wb.mode, save_dir=out, project=wb.project, entity=wb.entity, group=f"{name}-pretrain",
                             name=f"{name}-pretrain-s{config.seed}", tags=[name, "pretrain", f"seed{config.seed}"],
                             config={"model": name, "corpus": dm.describe(), **config.to_dict()})


def _finish_wandb(wb_logger: Any, card: dict) -> None:
    from odinw_bench.training.wandb_logging import log_final

    log_final(wb_logger, {"pretrain/steps": card["steps"], "pretrain/final_loss": card["final_loss"],
                          "pretrain/wall_time_s": card["wall_time_s"]}, {})


def _float(value: Any) -> float | None:
    return None if value is None else float(value)

