"""GLIP's training-loop rules (``do_train`` in ``maskrcnn_benchmark/engine/trainer.py``) for Lightning.

After every evaluation GLIP does three things with the val AP, all reproduced here:

* ``scheduler.step(AP)`` on ``ReduceLROnPlateau(mode="max")`` -- but through ``elif metrics:``, so an AP of exactly
  0.0 never reaches the scheduler (:func:`plateau_step`, called from ``DetectionModule.lr_scheduler_step``);
* early stopping: ``if AP < best: patience += 1 else: patience = 0; best = AP``, ``best`` starting at 0.0 -- ties
  count as improvement -- and stop when ``patience >= AUTO_TERMINATE_PATIENCE`` (:class:`GlipEarlyStopping`);
* on the same rule (AP >= best) it saves ``model_best`` (:class:`GlipBestCheckpoint`; Lightning's
  ``ModelCheckpoint`` only saves on a strict gain, so it would keep an earlier model on ties).

An undefined AP (pycocotools' -1, NaN in :class:`~odinw_bench.results.evaluation.EvalResult`) is compared as -1, as GLIP
compares the raw value. Non-finite losses are skipped by :class:`NonFiniteLossGuard`, which stops a run that
keeps diverging; GLIP instead zeroes NaN entries and steps anyway.

Example:
    >>> callbacks = glip_callbacks(resolved["schedule"], "runs/aquarium/ckpt")        # doctest: +SKIP
    >>> trainer = pl.Trainer(callbacks=callbacks, enable_checkpointing=False, ...)     # doctest: +SKIP
    >>> trainer.test(module, loader, ckpt_path=callbacks[1].best_model_path)           # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytorch_lightning as pl

from odinw_bench.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    import torch

logger = logging.getLogger(__name__)

MONITOR = "val/AP"
UNDEFINED_AP = -1.0  # pycocotools' value for "no ground truth", which GLIP compares as is


class TrainingDivergedError(UserError):
    """The loss stayed NaN/Inf for too many consecutive steps."""


def monitored_ap(value: Any) -> float | None:
    """A logged AP (tensor or number) as GLIP compares it: a float, NaN mapped to -1; None stays None."""
    if value is None:
        return None
    value = float(value.item() if hasattr(value, "item") else value)
    return UNDEFINED_AP if math.isnan(value) else value


def plateau_step(scheduler: Any, ap: Any) -> bool:
    """Step a ``ReduceLROnPlateau`` with the val AP, GLIP's way: an AP of 0.0 is skipped (``elif metrics:``).

    Returns:
        Whether the scheduler was stepped.
    """
    value = monitored_ap(ap)
    if not value:  # None or exactly 0.0
        return False
    scheduler.step(value)
    return True


@dataclass
class BestTracker:
    """GLIP's best-AP bookkeeping: ``best`` starts at 0.0, ties count as improvement.

    Attributes:
        best: Best AP so far (``previous_best``).
        counter: Evaluations since the last improvement (``patience_counter``).
    """

    best: float = 0.0
    counter: int = 0

    def update(self, ap: float) -> bool:
        """Record one evaluation; True when ``ap >= best`` (then ``best = ap`` and the counter resets)."""
        if ap < self.best:
            self.counter += 1
            return False
        self.counter = 0
        self.best = ap
        return True


def _current_ap(trainer: pl.Trainer, monitor: str) -> float:
    value = monitored_ap(trainer.callback_metrics.get(monitor))
    if value is None:
        raise RuntimeError(f"'{monitor}' was not logged by the validation that just ran; "
                           f"logged: {sorted(trainer.callback_metrics)}")
    return value


class GlipEarlyStopping(pl.Callback):
    """Stop after ``patience`` evaluations in a row below the best val AP (``AUTO_TERMINATE_PATIENCE``).

    Args:
        patience: Evaluations without gain before stopping (8 few-shot, 4 full data in GLIP's recipe).
        monitor: The logged metric.
    """

    def __init__(self, patience: int, monitor: str = MONITOR):
        super().__init__()
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        self.patience = patience
        self.monitor = monitor
        self.tracker = BestTracker()
        self.stopped_epoch: int | None = None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        ap = _current_ap(trainer, self.monitor)
        self.tracker.update(ap)
        if self.tracker.counter >= self.patience:
            trainer.should_stop = True
            self.stopped_epoch = trainer.current_epoch
            logger.info("early stop at epoch %d: %d evaluations below the best %s %.4f", trainer.current_epoch,
                        self.tracker.counter, self.monitor, self.tracker.best)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.tracker.best, "counter": self.tracker.counter, "stopped_epoch": self.stopped_epoch}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.tracker = BestTracker(best=state_dict["best"], counter=state_dict["counter"])
        self.stopped_epoch = state_dict.get("stopped_epoch")


class GlipBestCheckpoint(pl.Callback):
    """Save the model whenever val AP >= the best so far (GLIP's ``model_best``), atomically.

    Args:
        dirpath: Folder of the checkpoint.
        filename: File name (one file, overwritten on every improvement or tie).
        monitor: The logged metric.
        weights_only: Save only the weights and hyperparameters (what testing the best model needs); False also
            saves optimizer, scheduler and loop state.

    Attributes:
        best_model_path: The checkpoint path once one was saved, else ``""``.
        best_score: Its val AP (None before the first save).
        best_epoch: Its epoch (0-based).
    """

    def __init__(self, dirpath: str | Path, filename: str = "model_best.ckpt", monitor: str = MONITOR,
                 weights_only: bool = True):
        super().__init__()
        self.dirpath = Path(dirpath)
        self.filename = filename
        self.monitor = monitor
        self.weights_only = weights_only
        self.tracker = BestTracker()
        self.best_model_path = ""
        self.best_score: float | None = None
        self.best_epoch: int | None = None
        self.num_saves = 0

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        ap = _current_ap(trainer, self.monitor)
        if not self.tracker.update(ap):
            return
        path = self.dirpath / self.filename
        self._save_atomically(trainer, path)
        self.best_model_path, self.best_score, self.best_epoch = str(path), ap, trainer.current_epoch
        self.num_saves += 1
        logger.info("saved %s (%s %.4f, epoch %d)", path, self.monitor, ap, trainer.current_epoch)

    def _save_atomically(self, trainer: pl.Trainer, path: Path) -> None:
        """Write to a temporary name, then rename: an interrupted save never leaves a truncated best model."""
        tmp = path.with_name(f".{path.name}.tmp")
        if trainer.is_global_zero:
            path.parent.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(tmp, weights_only=self.weights_only)  # collective: every rank calls it
        if trainer.is_global_zero:
            os.replace(tmp, path)
        trainer.strategy.barrier("glip_best_checkpoint")

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.tracker.best, "counter": self.tracker.counter, "best_model_path": self.best_model_path,
                "best_score": self.best_score, "best_epoch": self.best_epoch}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.tracker = BestTracker(best=state_dict["best"], counter=state_dict["counter"])
        self.best_model_path = state_dict.get("best_model_path", "")
        self.best_score = state_dict.get("best_score")
        self.best_epoch = state_dict.get("best_epoch")


class NonFiniteLossGuard:
    """Decides whether a training step goes ahead: a NaN/Inf loss skips the step (no optimizer update).

    Args:
        max_consecutive: Raise :class:`TrainingDivergedError` after this many non-finite steps in a row.

    Attributes:
        total: Skipped steps so far.
        consecutive: Skipped steps since the last finite one.
    """

    def __init__(self, max_consecutive: int = 20):
        if max_consecutive < 1:
            raise ValueError(f"max_consecutive must be >= 1, got {max_consecutive}")
        self.max_consecutive = max_consecutive
        self.total = 0
        self.consecutive = 0

    def check(self, loss: torch.Tensor, losses: Mapping[str, torch.Tensor], *, finite: bool | None = None) -> bool:
        """True when the step may go ahead.

        Args:
            loss: The summed scalar loss.
            losses: Its parts, named in the warning.
            finite: Override of the finiteness test (e.g. a decision agreed across processes).

        Raises:
            TrainingDivergedError: After ``max_consecutive`` non-finite steps in a row.
        """
        import torch

        ok = bool(torch.isfinite(loss.detach())) if finite is None else finite
        if ok:
            self.consecutive = 0
            return True
        self.total += 1
        self.consecutive += 1
        bad = [name for name, value in losses.items() if not bool(torch.isfinite(value.detach()).all())]
        logger.warning("non-finite loss (%s): step skipped (%d in a row, %d in total)", ", ".join(bad) or "sum",
                       self.consecutive, self.total)
        if self.consecutive >= self.max_consecutive:
            raise TrainingDivergedError(
                f"the loss was NaN/Inf for {self.consecutive} consecutive steps ({self.total} in total); lower the "
                "learning rate or train in 32-bit (trainer.precision=32)", field="optim.lr")
        return False


def glip_callbacks(schedule: Mapping[str, Any], dirpath: str | Path, *,
                   weights_only: bool = True) -> list[pl.Callback]:
    """GLIP's early stopping and best-model saving for a resolved ``schedule`` section.

    Returns:
        ``[GlipEarlyStopping, GlipBestCheckpoint]`` (the plateau scheduler lives in the module's optimizer config).
    """
    return [GlipEarlyStopping(schedule["early_stop_patience"]),
            GlipBestCheckpoint(dirpath, weights_only=weights_only)]


class RngStateCheckpoint(pl.Callback):
    """Save and restore the random number generators with each checkpoint, so ``--resume`` continues the same
    random stream (dropout, drop path, DropBlock) and reaches the result an uninterrupted run reaches.

    Data order and augmentation are already seeded per (seed, epoch, index) by the datamodule.
    """

    def state_dict(self) -> dict[str, Any]:
        import random

        import numpy as np
        import torch

        name, keys, pos, has_gauss, cached = np.random.get_state()
        # Plain values only: checkpoints must load with torch.load(weights_only=True).
        state = {"python": random.getstate(), "numpy": (name, keys.tolist(), pos, has_gauss, cached),
                 "torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        import random

        import numpy as np
        import torch

        random.setstate(state_dict["python"])
        name, keys, pos, has_gauss, cached = state_dict["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(state_dict["torch"])
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])
