"""The LightningModule and GLIP's loop rules: plateau quirk, early-stop ties, best checkpoint, NaN steps, a real fit.

Everything runs glip-micro on the CPU over two images of the synthetic ``demo`` task, at a reduced input size.
"""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from odinw_bench.data.images import load_rgb
from odinw_bench.data.task_files import load_task_split, prepare_data_root
from odinw_bench.errors import UserError
from odinw_bench.models.glip.backend import GLIPBackend
from odinw_bench.models.glip.config import get_preset
from odinw_bench.tasks.registry import load_task
from odinw_bench.training.callbacks import (
    BestTracker,
    GlipBestCheckpoint,
    GlipEarlyStopping,
    NonFiniteLossGuard,
    TrainingDivergedError,
    glip_callbacks,
    plateau_step,
)
from odinw_bench.training.module import DetectionModule
from odinw_bench.training.run_config import load_run_config


# ----------------------------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """Two demo training images with boxes, as (image id, PIL image, target) items, and their ground truth."""
    task = load_task("demo")
    split = load_task_split(task, "train", prepare_data_root(task, tmp_path_factory.mktemp("data")))
    ids = [i for i in split.image_ids if split.annotations[i]][:2]
    subset = split.subset(ids)
    label_of = {c["id"]: index for index, c in enumerate(subset.categories)}
    items = []
    for image in subset.images:
        anns = subset.annotations[image.id]
        # GLIP's xyxy: x2 = x + w - 1.
        boxes = [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2] - 1, a["bbox"][1] + a["bbox"][3] - 1]
                 for a in anns]
        target = {"boxes": boxes, "labels": [label_of[a["category_id"]] for a in anns]}
        items.append((image.id, load_rgb(image.path, expected_size=(image.width, image.height)), target))
    return SimpleNamespace(task=task, items=items, gt=subset.to_coco_dict(),
                           category_ids=[c["id"] for c in subset.categories])


def _backend(task, seed=0):
    """glip-micro at 128-160 px: a few hundred ms per CPU step."""
    torch.manual_seed(seed)
    config = get_preset("glip-micro")
    small = dataclasses.replace(config.input, min_size_test=128, max_size_test=160, min_size_train=(128,),
                                max_size_train=160)
    backend = GLIPBackend(dataclasses.replace(config, input=small))
    backend.set_vocabulary(task.category_names, task.prompt)
    return backend


def _loaders(backend, items, batch_size):
    def train_batch(chunk):  # the test transform: the same pixels every epoch, so losses compare across epochs
        batch = backend.preprocess([c[1] for c in chunk], [c[2] for c in chunk])
        batch.image_ids = [c[0] for c in chunk]
        return batch

    def eval_batch(chunk):
        batch = backend.preprocess([c[1] for c in chunk])
        batch.image_ids = [c[0] for c in chunk]
        return batch

    return (DataLoader(items, batch_size=batch_size, collate_fn=train_batch),
            DataLoader(items, batch_size=1, collate_fn=eval_batch))


def _resolved(regime="full", overrides=()):
    return load_run_config(overrides=["trainer.accelerator=cpu", *overrides]).resolved_for(regime, 1)


def _trainer(max_epochs, callbacks=(), **kwargs):
    return pl.Trainer(max_epochs=max_epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                      callbacks=list(callbacks), num_sanity_val_steps=0, enable_progress_bar=False,
                      enable_model_summary=False, gradient_clip_val=1.0, deterministic=True, **kwargs)


class Recorder(pl.Callback):
    """Losses per step, val AP per evaluation, and the train/eval state of modules GLIP freezes."""

    def __init__(self):
        self.losses, self.aps, self.modes = [], [], []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        body = module.backend.model.backbone.body
        self.modes.append((body.patch_embed.training, body.layers[0].training, body.layers[1].training,
                           module.backend.model.language_backbone.training))

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.losses.append(None if outputs is None else float(outputs["loss"]))

    def on_validation_end(self, trainer, module):
        self.aps.append(float(trainer.callback_metrics["val/AP"]))


# ----------------------------------------------------------------------------------------------- GLIP's rules
def _plateau(patience=1):
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    return optimizer, torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.1,
                                                                 patience=patience, min_lr=1e-6)


def test_plateau_step_skips_an_ap_of_zero():
    # GLIP: `elif metrics: super().step(metrics)`. A run of zero APs never lowers the lr ...
    optimizer, scheduler = _plateau()
    stepped = [plateau_step(scheduler, ap) for ap in (0.3, 0.0, 0.0, 0.0, 0.0)]
    assert stepped == [True, False, False, False, False]
    assert optimizer.param_groups[0]["lr"] == 1.0 and scheduler.num_bad_epochs == 0
    # ... while the same run with a tiny non-zero AP does (patience 1: the second bad evaluation reduces).
    optimizer, scheduler = _plateau()
    for ap in (0.3, 1e-6, 1e-6):
        plateau_step(scheduler, torch.tensor(ap))
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1)
    # An undefined AP (NaN) is GLIP's -1: stepped, and a bad epoch.
    optimizer, scheduler = _plateau()
    assert plateau_step(scheduler, 0.3) and plateau_step(scheduler, float("nan"))
    assert scheduler.num_bad_epochs == 1 and not plateau_step(scheduler, None)


def test_plateau_floor_is_min_lr():
    optimizer, scheduler = _plateau(patience=0)
    for _ in range(10):
        plateau_step(scheduler, 0.5)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-6)


def test_best_tracker_ties_count_as_improvement():
    tracker = BestTracker()
    improved = [tracker.update(ap) for ap in (0.0, 0.2, 0.2, 0.1, 0.2, 0.15, 0.15)]
    assert improved == [True, True, True, False, True, False, False]
    assert tracker.best == 0.2 and tracker.counter == 2
    assert not BestTracker().update(-1.0)  # an undefined AP never beats the initial 0.0


def _fake_trainer():
    """A stand-in with what the callbacks read: the logged AP, the epoch, the rank and a barrier."""
    return SimpleNamespace(sanity_checking=False, should_stop=False, current_epoch=0, is_global_zero=True,
                           callback_metrics={}, strategy=SimpleNamespace(barrier=lambda name=None: None))


class _Weights(pl.LightningModule):
    """A model whose trained weight holds the epoch it was set at; one frozen weight that must still be saved."""

    def __init__(self):
        super().__init__()
        self.trained, self.frozen = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)
        self.frozen.requires_grad_(False)


def test_early_stopping_and_best_checkpoint_on_a_fake_ap_sequence(tmp_path):
    aps = [0.0, 0.1, 0.1, 0.05, 0.08, 0.1, 0.02, 0.03, 0.04, 0.09]
    trainer, model = _fake_trainer(), _Weights()
    stopping, best = GlipEarlyStopping(patience=3), GlipBestCheckpoint(tmp_path)
    stop_epoch, kept = None, []
    for epoch, ap in enumerate(aps):
        with torch.no_grad():
            model.trained.weight.fill_(epoch)
        trainer.current_epoch, trainer.callback_metrics = epoch, {"val/AP": torch.tensor(ap, dtype=torch.float64)}
        stopping.on_validation_end(trainer, model)
        saves = best.num_saves
        best.on_validation_end(trainer, model)
        if best.num_saves > saves:
            kept.append(epoch)
        if trainer.should_stop:
            stop_epoch = epoch
            break
    # Kept on >=: 0.0 (>= the initial 0.0), 0.1, the tie 0.1, then the later tie 0.1 at epoch 5.
    assert kept == [0, 1, 2, 5] and best.best_epoch == 5 and best.best_score == 0.1
    assert best.best_model_path == "" and not list(tmp_path.iterdir())  # nothing written during the fit
    # Resumed from its state (as from last.ckpt), the callback still writes the epoch-5 weights at the end.
    resumed = GlipBestCheckpoint(tmp_path)
    resumed.load_state_dict(torch.load(_saved(tmp_path / "state.pt", best.state_dict()), weights_only=True))
    resumed.on_fit_end(trainer, model)
    saved = torch.load(resumed.best_model_path, weights_only=True)
    assert saved["state_dict"]["trained.weight"].item() == 5 and saved["epoch"] == 5
    assert torch.equal(saved["state_dict"]["frozen.weight"], model.frozen.weight)  # complete: frozen ones too
    assert not list(tmp_path.glob(".*.tmp"))  # written under a temporary name, then renamed
    # Three evaluations below 0.1 after epoch 5 (0.02, 0.03, 0.04): stop at epoch 8, before the 0.09.
    assert stop_epoch == 8 and stopping.stopped_epoch == 8
    restored = GlipEarlyStopping(patience=3)
    restored.load_state_dict(stopping.state_dict())
    assert restored.tracker == stopping.tracker
    trainer.sanity_checking = True  # sanity-check validations are not evaluations
    trainer.callback_metrics = {"val/AP": torch.tensor(0.5)}
    best.on_validation_end(trainer, model)
    assert best.best_score == 0.1


def _saved(path, obj):
    torch.save(obj, path)
    return path


def test_nonfinite_guard_counts_and_stops():
    guard = NonFiniteLossGuard(max_consecutive=3)
    nan, one = torch.tensor(float("nan")), torch.tensor(1.0)
    assert [guard.check(x, {"loss_reg": x}) for x in (one, nan, nan, one, nan)] == [True, False, False, True, False]
    assert (guard.total, guard.consecutive) == (3, 1)
    guard.check(torch.tensor(float("inf")), {})
    with pytest.raises(TrainingDivergedError, match="3 consecutive steps"):
        guard.check(nan, {})


def test_glip_callbacks_use_the_resolved_patience(tmp_path):
    stopping, best = glip_callbacks(load_run_config().resolved_for("full", "all")["schedule"], tmp_path)
    assert stopping.patience == 4 and best.dirpath == tmp_path


# ----------------------------------------------------------------------------------------------- the module
def test_module_wires_regime_optimizer_and_plateau_quirk(demo):
    module = DetectionModule.from_resolved(_backend(demo.task), _resolved("prompt"), demo.category_ids)
    assert module.trainable_names == ["model.rpn.tunable_linear.weight"]
    assert module.hparams["regime"] == "prompt" and "backend" not in module.hparams
    config = module.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert [(g["lr"], g["weight_decay"]) for g in optimizer.param_groups] == [(0.05, 0.25)]
    assert config["lr_scheduler"]["monitor"] == "val/AP" and config["lr_scheduler"]["interval"] == "epoch"
    assert (scheduler.factor, scheduler.patience, scheduler.min_lrs[0]) == (0.1, 3, 1e-6)
    module.lr_scheduler_step(scheduler, torch.tensor(0.2))
    module.lr_scheduler_step(scheduler, torch.tensor(0.0))  # skipped: not a bad epoch
    assert scheduler.num_bad_epochs == 0 and scheduler.best == pytest.approx(0.2)
    module.lr_scheduler_step(scheduler, torch.tensor(0.1))
    assert scheduler.num_bad_epochs == 1
    module.train()
    assert not module.backend.model.language_backbone.training  # frozen modules stay in eval
    assert not module.backend.model.rpn.head.dyhead_tower.training


@pytest.fixture(scope="module")
def fitted(demo, tmp_path_factory):
    """A full fine-tune of two images for 6 epochs (one step each) with GLIP's callbacks."""
    backend = _backend(demo.task)
    module = DetectionModule.from_resolved(backend, _resolved("full", ["optim.lr=1e-3"]), demo.category_ids)
    module.set_eval_ground_truth(val=demo.gt)
    train, val = _loaders(backend, demo.items, batch_size=2)
    recorder, best = Recorder(), GlipBestCheckpoint(tmp_path_factory.mktemp("ckpt"))
    trainer = _trainer(6, [recorder, best, GlipEarlyStopping(patience=8)])
    trainer.fit(module, train, val)
    return SimpleNamespace(module=module, trainer=trainer, recorder=recorder, best=best, val=val)


def test_fit_validates_every_epoch_and_overfits(fitted):
    recorder, metrics = fitted.recorder, fitted.trainer.callback_metrics
    assert len(recorder.aps) == 6 and all(0.0 <= ap <= 1.0 for ap in recorder.aps)
    assert {"val/AP", "val/AP50", "val/AR100", "train/loss_reg", "train/loss_centerness", "lr/base"} <= set(metrics)
    assert fitted.module.val_result.metrics["AP"] == pytest.approx(recorder.aps[-1])
    losses = recorder.losses
    assert len(losses) == 6 and all(math.isfinite(x) for x in losses)
    assert sum(losses[-2:]) < 0.9 * sum(losses[:2]), losses  # the same batch every step: it must fit
    # Every step ran with GLIP's frozen modules in eval: Swin stem and stage 1 (FREEZE_CONV_BODY_AT 2).
    assert set(recorder.modes) == {(False, False, True, True)}
    assert fitted.module.nonfinite_steps == 0
    if max(recorder.aps) == 0.0:  # random weights: AP 0 every epoch, and GLIP never steps the scheduler on 0
        assert float(metrics["lr/base"]) == pytest.approx(1e-3)


def test_best_checkpoint_reloads_the_model_it_scored(fitted, demo):
    best = fitted.best
    assert best.best_score == max(fitted.recorder.aps)
    assert best.best_model_path.endswith("model_best.ckpt")
    fitted.module.set_eval_ground_truth(test=demo.gt)
    _trainer(1).test(fitted.module, fitted.val, verbose=False)
    restored = DetectionModule.load_from_checkpoint(best.best_model_path, backend=_backend(demo.task, seed=1))
    restored.set_eval_ground_truth(test=demo.gt)
    _trainer(1).test(restored, fitted.val, verbose=False)
    if best.best_epoch == 5:  # the last model (ties keep the later one): the same predictions
        assert restored.test_predictions and restored.test_predictions == fitted.module.test_predictions
    assert restored.test_result.metrics["AP"] == pytest.approx(best.best_score, abs=1e-12)
    assert restored.test_predictions == sorted(restored.test_predictions, key=lambda p: p["image_id"])
    assert list(restored.test_result.per_category) == demo.task.category_names


class Snapshots(pl.Callback):
    """Trainable parameters after each validation and the base learning rate at each epoch start."""

    def __init__(self):
        self.params, self.lrs = [], []

    def on_train_epoch_start(self, trainer, module):
        self.lrs.append(next(g["lr"] for g in trainer.optimizers[0].param_groups if g["name"] == "base"))

    def on_validation_end(self, trainer, module):
        self.params.append({n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad})


def test_glip_loop_rules_in_a_real_fit(demo, tmp_path, monkeypatch):
    """A scripted val AP sequence drives Lightning's plateau scheduler, early stopping and best checkpoint."""
    import odinw_bench.results.evaluation as evaluation

    script = iter([0.2, 0.3, 0.0, 0.0, 0.3, 0.25, 0.1, 0.1, 0.05, 0.5, 0.5])
    real = evaluation.evaluate_detections

    def scripted(gt, predictions, **kwargs):
        result = real(gt, predictions, **kwargs)
        return dataclasses.replace(result, metrics={**result.metrics, "AP": next(script)})

    monkeypatch.setattr(evaluation, "evaluate_detections", scripted)
    backend = _backend(demo.task)
    resolved = _resolved("linear-probe", ["optim.lr=1e-3", "schedule.plateau_patience=1"])
    module = DetectionModule.from_resolved(backend, resolved, demo.category_ids)
    module.set_eval_ground_truth(val=demo.gt)
    train, val = _loaders(backend, demo.items, batch_size=2)
    snapshots, best, stopping = Snapshots(), GlipBestCheckpoint(tmp_path), GlipEarlyStopping(patience=4)
    _trainer(20, [snapshots, best, stopping]).fit(module, train, val)
    # Early stop: 0.0, 0.0 count against the best 0.3; the tie at epoch 4 resets; 0.25, 0.1, 0.1, 0.05 stop it.
    assert len(snapshots.params) == 9 and stopping.stopped_epoch == 8
    # Plateau (patience 1) sees 0.2, 0.3, 0.3, 0.25 -> x0.1 after epoch 5, then 0.1, 0.1 -> x0.1 after epoch 7.
    # Had the zeros been stepped, the lr would already drop after epoch 3.
    assert snapshots.lrs == pytest.approx([1e-3] * 6 + [1e-4] * 2 + [1e-5])
    # The best checkpoint is the tie at epoch 4 (GLIP saves on >=), with that epoch's weights.
    assert best.best_epoch == 4 and best.best_score == 0.3
    saved = torch.load(best.best_model_path, map_location="cpu", weights_only=True)["state_dict"]
    for name, value in snapshots.params[4].items():
        assert torch.equal(saved[name], value), name
    assert any(not torch.equal(snapshots.params[8][n], v) for n, v in snapshots.params[4].items())


def _poisoned(backend, bad_calls):
    real, calls = backend.compute_losses, []

    def compute_losses(batch):
        losses = real(batch)
        calls.append(len(calls))
        if calls[-1] in bad_calls:
            bad = bad_calls[calls[-1]]
            losses = {k: v * bad if k == "loss_reg" else v for k, v in losses.items()}
        return losses

    backend.compute_losses = compute_losses


class ParameterWatch(pl.Callback):
    """Whether each training step changed the trainable parameters."""

    def __init__(self):
        self.changed = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self._before = [p.detach().clone() for p in module.parameters() if p.requires_grad]

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        after = [p.detach() for p in module.parameters() if p.requires_grad]
        self.changed.append(any(not torch.equal(a, b) for a, b in zip(after, self._before, strict=True)))


def test_nonfinite_steps_are_skipped_and_counted(demo):
    backend = _backend(demo.task)
    _poisoned(backend, {1: float("nan"), 2: float("inf")})
    module = DetectionModule.from_resolved(backend, _resolved("linear-probe"), demo.category_ids,
                                           max_nonfinite_steps=3)
    module.set_eval_ground_truth(val=demo.gt)
    train, val = _loaders(backend, demo.items, batch_size=1)
    watch = ParameterWatch()
    _trainer(2, [watch]).fit(module, train, val)
    assert watch.changed == [True, False, False, True]
    assert module.nonfinite_steps == 2


def test_persistent_nonfinite_loss_stops_with_a_clear_error(demo):
    backend = _backend(demo.task)
    _poisoned(backend, {i: float("nan") for i in range(10)})
    module = DetectionModule.from_resolved(backend, _resolved("linear-probe"), demo.category_ids,
                                           max_nonfinite_steps=2)
    module.set_eval_ground_truth(val=demo.gt)
    train, val = _loaders(backend, demo.items, batch_size=1)
    with pytest.raises(TrainingDivergedError, match="2 consecutive steps"):
        _trainer(3).fit(module, train, val)


def test_fit_needs_a_training_regime_and_validation_ground_truth(demo):
    backend = _backend(demo.task)
    train, val = _loaders(backend, demo.items, batch_size=2)
    zero_shot = DetectionModule.from_resolved(backend, _resolved("zero-shot"), demo.category_ids)
    zero_shot.set_eval_ground_truth(val=demo.gt)
    with pytest.raises(UserError, match="does not train"):
        _trainer(1).fit(zero_shot, train, val)
    without_gt = DetectionModule.from_resolved(_backend(demo.task), _resolved("full"), demo.category_ids)
    with pytest.raises(RuntimeError, match="set_eval_ground_truth"):
        _trainer(1).fit(without_gt, train, val)


def test_timed_last_checkpoint_writes_only_when_the_interval_passed(tmp_path):
    from odinw_bench.training.callbacks import TimedLastCheckpoint

    written = []
    trainer = SimpleNamespace(is_global_zero=True, save_checkpoint=lambda path: (path.write_text("x"),
                                                                                 written.append(path)))
    every_epoch, hourly = TimedLastCheckpoint(tmp_path / "a", 0), TimedLastCheckpoint(tmp_path / "b", 3600)
    for callback in (every_epoch, hourly):
        callback.on_fit_start(trainer, None)
        for _ in range(3):
            callback.on_train_epoch_end(trainer, None)
    assert (every_epoch.saves, hourly.saves) == (3, 0)
    assert (tmp_path / "a" / "last.ckpt").read_text() == "x" and not (tmp_path / "b").exists()
    assert all(p.name != "last.ckpt" for p in written)  # written under a temporary name, then renamed
