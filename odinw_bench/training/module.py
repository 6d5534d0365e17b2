"""One LightningModule for every regime: trains a backend with GLIP's recipe and scores it with COCO AP.

Batches are :class:`~odinw_bench.models.base.DetectionBatch` objects as the backend's ``preprocess`` builds them
(training batches with targets; evaluation batches with ``image_ids``). The caller sets the backend's vocabulary
(category names in the order of ``category_ids``) and the evaluation ground truth.

Example::

    backend.set_vocabulary(task.category_names, task.prompt)
    module = DetectionModule.from_resolved(backend, resolved, task.category_ids)
    module.set_eval_ground_truth(val=val_split.to_coco_dict(), test=test_split.to_coco_dict())
    callbacks = glip_callbacks(resolved["schedule"], out_dir)
    trainer = pl.Trainer(callbacks=callbacks, enable_checkpointing=False, **trainer_kwargs(resolved))
    trainer.fit(module, train_loader, val_loader)
    trainer.test(module, test_loader, ckpt_path=callbacks[1].best_model_path)
    module.test_result.metrics["AP"], module.test_result.per_category
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pytorch_lightning as pl
import torch

from odinw_bench.errors import UserError
from odinw_bench.models.base import DetectionBatch
from odinw_bench.training.callbacks import MONITOR, NonFiniteLossGuard, plateau_step
from odinw_bench.training.regimes import (
    Regime,
    apply_regime,
    get_regime,
    set_frozen_modules_eval,
)
from odinw_bench.training.slim_state import SlimStateMixin

if TYPE_CHECKING:  # pragma: no cover
    from odinw_bench.results.evaluation import EvalResult

logger = logging.getLogger(__name__)

#: Metrics logged per evaluation (``val/AP``, ``test/AP50``, ...); per-category AP stays in the EvalResult.
LOGGED_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")


class DetectionModule(SlimStateMixin, pl.LightningModule):
    """Fine-tunes (or only evaluates) a detector backend under one regime.

    Its checkpoints leave the frozen parameters out (:mod:`odinw_bench.training.slim_state`): a linear probe's
    ``last.ckpt`` holds the head it trains, not the whole model, and loads only into the same frozen weights.

    Args:
        backend: A :class:`~odinw_bench.models.base.DetectorBackend` that is an ``nn.Module``, vocabulary set.
        regime: A :class:`~odinw_bench.training.regimes.Regime` or its name; applied at construction.
        category_ids: COCO category id of each label index (the task's categories in vocabulary order).
        optim: Resolved ``optim`` section (``lr``, ``language_lr``, ``weight_decay``, ``bias_lr_factor``,
            ``weight_decay_bias``; ``grad_clip_norm`` is the trainer's).
        schedule: Resolved ``schedule`` section (``plateau_factor``, ``plateau_patience``, ``min_lr``).
        freeze_conv_body_at: GLIP's ``FREEZE_CONV_BODY_AT`` (2 in the ODinW recipe).
        max_nonfinite_steps: Stop after this many NaN/Inf losses in a row.

    Attributes:
        trainable_names: Parameter names the regime trains.
        val_result: The last validation's :class:`~odinw_bench.results.evaluation.EvalResult`.
        test_result: The last test's EvalResult (metrics and per-category AP).
        test_predictions: The last test's COCO results, sorted by image id.
    """

    def __init__(self, backend: torch.nn.Module, regime: Regime | str, category_ids: Sequence[int],
                 optim: Mapping[str, Any], schedule: Mapping[str, Any], freeze_conv_body_at: int = 2,
                 max_nonfinite_steps: int = 20):
        super().__init__()
        self.regime = get_regime(regime) if isinstance(regime, str) else regime
        # The backend is saved by its state dict, not pickled into the hyperparameters; the regime by name.
        self.save_hyperparameters(ignore=["backend", "regime"])
        self.hparams["regime"] = self.regime.name
        self.hparams["category_ids"] = [int(c) for c in category_ids]
        self.hparams["optim"], self.hparams["schedule"] = dict(optim), dict(schedule)
        if self.regime.lora_groups:  # lets model_best.ckpt be merged into plain weights (models/glip/run_checkpoint)
            self.hparams["lora_scaling"] = self.regime.lora_alpha / self.regime.lora_rank
        self.backend = backend
        self.category_ids = list(self.hparams["category_ids"])
        self.trainable_names = apply_regime(backend, self.regime, freeze_conv_body_at=freeze_conv_body_at)
        self._guard = NonFiniteLossGuard(max_nonfinite_steps)
        self._ground_truth: dict[str, dict | None] = {"val": None, "test": None}
        self._predictions: dict[str, dict[int, list[dict]]] = {"val": {}, "test": {}}
        self._seen: dict[str, set[int]] = {"val": set(), "test": set()}
        self.val_result: EvalResult | None = None
        self.test_result: EvalResult | None = None
        self.test_predictions: list[dict] = []

    @classmethod
    def from_resolved(cls, backend: torch.nn.Module, resolved: Mapping[str, Any], category_ids: Sequence[int],
                      **kwargs: Any) -> DetectionModule:
        """Build from a :meth:`~odinw_bench.training.run_config.RunConfig.resolved_for` result."""
        return cls(backend, resolved["regime"], category_ids, resolved["optim"], resolved["schedule"],
                   freeze_conv_body_at=resolved["model"]["freeze_conv_body_at"], **kwargs)

    @property
    def nonfinite_steps(self) -> int:
        """Training steps skipped because the loss was NaN/Inf."""
        return self._guard.total

    def set_eval_ground_truth(self, val: Mapping | None = None, test: Mapping | None = None) -> None:
        """COCO ground-truth dicts (``CocoSplit.to_coco_dict()``) that validation and test are scored against."""
        if val is not None:
            self._ground_truth["val"] = dict(val)
        if test is not None:
            self._ground_truth["test"] = dict(test)

    # ------------------------------------------------------------------------------------------------ modes
    def train(self, mode: bool = True) -> DetectionModule:
        """Switch modes; in training mode the modules GLIP freezes go back to eval (``GeneralizedVLRCNN.train``)."""
        super().train(mode)
        if mode:
            set_frozen_modules_eval(self.backend, self.regime, freeze_conv_body_at=self.hparams.freeze_conv_body_at)
        return self

    def on_train_epoch_start(self) -> None:
        # Lightning never calls train() itself (it restores captured per-module modes after validation), so a
        # module built in train mode would run GLIP's frozen modules with dropout; GLIP calls model.train() here.
        self.train()

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        if isinstance(batch, DetectionBatch):
            return batch.to(device)
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def setup(self, stage: str) -> None:
        if stage != "fit":
            return
        if not self.regime.fit:
            raise UserError(f"regime '{self.regime.name}' does not train; evaluate it with trainer.test",
                            field="--regime")
        if self._ground_truth["val"] is None:
            raise RuntimeError("call set_eval_ground_truth(val=...) before fitting: validation AP drives the "
                               "schedule, early stopping and the best checkpoint")

    # ------------------------------------------------------------------------------------------------ training
    def training_step(self, batch: DetectionBatch, batch_idx: int) -> torch.Tensor | None:
        """Sum of the backend's losses; None (no backward, no optimizer step) when it is NaN/Inf."""
        losses = self.backend.compute_losses(batch)
        total = sum(losses.values())
        size = len(batch.image_sizes)
        finite = bool(torch.isfinite(total.detach()))
        if self.trainer.world_size > 1:  # every process must skip together, or gradient sync would hang
            finite = self.trainer.strategy.reduce_boolean_decision(finite, all=True)
        if not self._guard.check(total, losses, finite=finite):
            self.log("train/nonfinite_steps", float(self._guard.total), batch_size=size)
            return None
        for name, value in losses.items():
            self.log(f"train/{name}", value.detach(), batch_size=size)
        self.log("train/loss", total.detach(), prog_bar=True, batch_size=size)
        for group in self.optimizers().param_groups:
            self.log(f"lr/{group.get('name', 'group')}", float(group["lr"]), batch_size=size)
        return total

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW with GLIP's groups, and ReduceLROnPlateau on val AP stepped once per epoch (GLIP's quirk in
        :meth:`lr_scheduler_step`)."""
        from odinw_bench.training.optim import build_optimizer

        schedule = self.hparams.schedule
        optimizer = build_optimizer(self.backend, **self.hparams.optim)
        # torch's defaults (threshold 1e-4 relative, cooldown 0) are what GLIP's WarmupReduceLROnPlateau inherits.
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=schedule["plateau_factor"], patience=schedule["plateau_patience"],
            min_lr=schedule["min_lr"])
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "monitor": MONITOR, "interval": "epoch", "frequency": 1,
                                 "strict": True}}

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        """GLIP steps its plateau scheduler only when the AP is non-zero (``elif metrics:``)."""
        if metric is None:
            scheduler.step()
        elif not plateau_step(scheduler, metric):
            logger.info("val AP is 0: learning-rate scheduler not stepped (as GLIP)")

    # ------------------------------------------------------------------------------------------------ evaluation
    def on_validation_epoch_start(self) -> None:
        self._reset("val")

    def validation_step(self, batch: DetectionBatch, batch_idx: int) -> None:
        self._collect("val", batch)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:  # a few batches only: not a score
            self._reset("val")
            return
        self.val_result, _ = self._evaluate("val")

    def on_test_epoch_start(self) -> None:
        self._reset("test")

    def test_step(self, batch: DetectionBatch, batch_idx: int) -> None:
        self._collect("test", batch)

    def on_test_epoch_end(self) -> None:
        self.test_result, self.test_predictions = self._evaluate("test")

    def _reset(self, stage: str) -> None:
        self._predictions[stage] = {}
        self._seen[stage] = set()

    def _collect(self, stage: str, batch: DetectionBatch) -> None:
        """Predict one batch and keep its COCO results by image id (duplicates from padded samplers collapse)."""
        from odinw_bench.results.evaluation import detections_to_coco

        if len(batch.image_ids) != len(batch.image_sizes):
            raise ValueError(f"{stage} batches need one image id per image (DetectionBatch.image_ids)")
        detections = self.backend.predict(batch)
        for image_id, det in zip(batch.image_ids, detections, strict=True):
            # float(): AMP may hand back reduced-precision boxes; GLIP's xywh arithmetic is in 32-bit.
            self._predictions[stage][int(image_id)] = detections_to_coco(
                int(image_id), det.boxes.float().cpu(), det.scores.float().cpu(), det.labels.cpu(),
                self.category_ids)
            self._seen[stage].add(int(image_id))

    def _evaluate(self, stage: str) -> tuple[EvalResult, list[dict]]:
        """Gather the predictions of all processes, score them with pycocotools and log the summary metrics."""
        from odinw_bench.results.evaluation import evaluate_detections

        gt = self._ground_truth[stage]
        if gt is None:
            raise RuntimeError(f"no {stage} ground truth: call set_eval_ground_truth({stage}=split.to_coco_dict())")
        by_image, seen = self._gather(stage)
        missing = {im["id"] for im in gt["images"]} - seen
        if missing:
            logger.warning("%s: %d ground-truth images were not predicted (limited batches?); AP counts them as "
                           "missed", stage, len(missing))
        predictions = [p for image_id in sorted(by_image) for p in by_image[image_id]]
        result = evaluate_detections(gt, predictions)
        for name in LOGGED_METRICS:
            # float64 on the CPU: Lightning would store a Python float as float32, and GLIP compares APs (best,
            # ties) at full precision.
            self.log(f"{stage}/{name}", torch.tensor(result.metrics[name], dtype=torch.float64))
        logger.info("%s AP %.4f (%d images, %d predictions)", stage, result.metrics["AP"], len(seen), len(predictions))
        return result, predictions

    def _gather(self, stage: str) -> tuple[dict[int, list[dict]], set[int]]:
        by_image, seen = self._predictions[stage], self._seen[stage]
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return by_image, seen
        gathered: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, (by_image, seen))
        merged: dict[int, list[dict]] = {}
        merged_seen: set[int] = set()
        for part, part_seen in gathered:
            merged.update(part)
            merged_seen |= part_seen
        return merged, merged_seen
