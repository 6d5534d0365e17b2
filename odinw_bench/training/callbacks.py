"""GLIP's training-loop rules (``do_train`` in ``maskrcnn_benchmark/engine/trainer.py``) for Lightning.

After every evaluation GLIP does three things with the val AP, all reproduced here:

* ``scheduler.step(AP)`` on ``ReduceLROnPlateau(mode="max")`` -- but through ``elif metrics:``, so an AP of exactly
  0.0 never reaches the scheduler (:func:`plateau_step`, called from ``DetectionModule.lr_scheduler_step``);
* early stopping: ``if AP < best: patience += 1 else: patience = 0; best = AP``, ``best`` starting at 0.0 -- ties
  count as improvement -- and stop when ``patience >= AUTO_TERMINATE_PATIENCE`` (:class:`GlipEarlyStopping`);
* on the same rule (AP >= best) it keeps ``model_best`` (:class:`GlipBestCheckpoint`, written when the fit ends;
  Lightning's ``ModelCheckpoint`` only saves on a strict gain, so it would keep an earlier model on ties).

An undefined AP (pycocotools' -1, NaN in :class:`~odinw_bench.results.evaluation.EvalResult`) is compared as -1, as GLIP
compares the raw value. Non-finite losses are skipped by :class:`NonFiniteLossGuard`, which stops a run that
keeps diverging; GLIP instead zeroes NaN entries and steps anyway.

Example:
    >>> callbacks = glip_callbacks(resolved["schedule"], "runs/aquarium/ckpt")        # doctest: +SKIP
    >>> trainer = pl.Trainer(callbacks=callbacks, enable_checkpointing=False, ...)     # doctest: +SKIP
    >>> trainer.fit(module, datamodule=dm)                                             # doctest: +SKIP
    >>> trainer.test(module, loader, ckpt_path=callbacks[1].best_model_path)           # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import os
import time
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
    """Keep the model whenever val AP >= the best so far (GLIP's ``model_best``); write it when the fit ends.

    The best weights wait in memory: the tensors that train and the buffers, cloned (the frozen parameters cannot
    change during a fit). They travel in ``last.ckpt`` through this callback's state, so a resumed run keeps them.
    When the fit ends, ``model_best.ckpt`` is written once, atomically and complete (every weight, loadable with
    ``DetectionModule.load_from_checkpoint``), instead of at every improvement: a linear probe that improves each
    epoch used to write the whole model each epoch.

    Args:
        dirpath: Folder of the checkpoint.
        filename: File name.
        monitor: The logged metric.

    Attributes:
        best_model_path: The checkpoint path once it is written (when the fit ends), else ``""``.
        best_score: Its val AP (None before the first evaluation that counts).
        best_epoch: Its epoch (0-based).
        num_saves: How many times the weights were kept (improvements and ties).
    """

    def __init__(self, dirpath: str | Path, filename: str = "model_best.ckpt", monitor: str = MONITOR):
        super().__init__()
        self.dirpath = Path(dirpath)
        self.filename = filename
        self.monitor = monitor
        self.tracker = BestTracker()
        self.best_model_path = ""
        self.best_score: float | None = None
        self.best_epoch: int | None = None
        self.num_saves = 0
        self._weights: dict[str, torch.Tensor] | None = None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        ap = _current_ap(trainer, self.monitor)
        if not self.tracker.update(ap):
            return
        from odinw_bench.training.slim_state import frozen_parameter_names

        frozen = set(frozen_parameter_names(pl_module))
        self._weights = {k: v.detach().clone() for k, v in pl_module.state_dict().items() if k not in frozen}
        self.best_score, self.best_epoch = ap, trainer.current_epoch
        self.num_saves += 1
        logger.info("best so far: %s %.4f at epoch %d", self.monitor, ap, trainer.current_epoch)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._weights is None:
            return
        path = self.dirpath / self.filename
        if trainer.is_global_zero:
            import torch

            state = {**pl_module.state_dict(), **self._weights}
            checkpoint = {"state_dict": state, "hyper_parameters": dict(pl_module.hparams),
                          "epoch": self.best_epoch, "pytorch-lightning_version": pl.__version__}
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")  # an interrupted write never leaves a truncated best model
            torch.save(checkpoint, tmp)
            os.replace(tmp, path)
        trainer.strategy.barrier("glip_best_checkpoint")
        self.best_model_path = str(path)
        logger.info("saved %s (%s %.4f, epoch %d)", path, self.monitor, self.best_score, self.best_epoch)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.tracker.best, "counter": self.tracker.counter, "best_score": self.best_score,
                "best_epoch": self.best_epoch, "num_saves": self.num_saves, "weights": self._weights}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.tracker = BestTracker(best=state_dict["best"], counter=state_dict["counter"])
        self.best_score = state_dict.get("best_score")
        self.best_epoch = state_dict.get("best_epoch")
        self.num_saves = state_dict.get("num_saves", 0)
        self._weights = state_dict.get("weights")
        old_file = state_dict.get("best_model_path")  # a last.ckpt of an older version: the weights are in the file
        if self._weights is None and old_file and Path(old_file).is_file():
            import torch

            self._weights = torch.load(old_file, map_location="cpu", weights_only=True)["state_dict"]


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


def glip_callbacks(schedule: Mapping[str, Any], dirpath: str | Path) -> list[pl.Callback]:
    """GLIP's early stopping and best-model saving for a resolved ``schedule`` section.

    Returns:
        ``[GlipEarlyStopping, GlipBestCheckpoint]`` (the plateau scheduler lives in the module's optimizer config).
    """
    return [GlipEarlyStopping(schedule["early_stop_patience"]), GlipBestCheckpoint(dirpath)]


class TimedLastCheckpoint(pl.Callback):
    """Write ``last.ckpt`` (weights, optimizer, scheduler, loops, callbacks: what ``--resume`` needs) at the end of
    an epoch, once ``every_s`` seconds passed since the previous write (or the start of the fit), atomically.

    Lightning's ``ModelCheckpoint(every_n_epochs=1)`` writes at the same point of every epoch; for a short run the
    writes of a whole model and its optimizer state were a fifth of the fit. With ``every_s`` a kill loses at most
    that much training (and the epoch under way); 0 writes every epoch. Put it after the callbacks whose state the
    checkpoint must hold for this epoch (the epoch log).

    Args:
        dirpath: Folder of ``last.ckpt``.
        every_s: Seconds between writes.
    """

    def __init__(self, dirpath: str | Path, every_s: float):
        self.path, self.every_s = Path(dirpath) / "last.ckpt", float(every_s)
        self.saves = 0
        self._last = time.monotonic()

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last = time.monotonic()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if time.monotonic() - self._last < self.every_s:
            return
        from odinw_bench.atomic import atomic_target

        if trainer.is_global_zero:
            with atomic_target(self.path) as tmp:
                trainer.save_checkpoint(tmp)
        else:
            trainer.save_checkpoint(self.path)  # collective: every rank joins, only rank 0 writes
        self.saves += 1
        self._last = time.monotonic()


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
