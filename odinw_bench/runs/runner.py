"""One run: a task, a shot count, a seed, a regime and a model → a record, predictions and a leaderboard row.

``python -m odinw_bench run`` builds :class:`RunRequest` objects from its arguments and calls :func:`run_request`
for each. A run that fits trains with Lightning under GLIP's recipe, keeps GLIP's ``model_best`` (best val AP,
ties count) and reports the test AP of that checkpoint; a zero-shot run evaluates the model as loaded. Bad input
fails before anything is written; a run that fails later writes a record with ``status: failed`` and its error.
:func:`run_identity` gives a request's run id without loading weights or data; ``sweep`` plans with it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from odinw_bench.errors import UserError
from odinw_bench.runs.identity import RunIdentity, model_config, model_ref, run_identity

if TYPE_CHECKING:  # pragma: no cover
    from odinw_bench.runs.cache import RunCache
    from odinw_bench.runs.request import RunRequest

logger = logging.getLogger(__name__)

@dataclass
class RunOutcome:
    """What a run produced."""

    record: dict
    record_path: Path
    predictions_path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _build_backend(req: RunRequest, ident: RunIdentity, cache: RunCache | None) -> Any:
    """The backend with the weights ``ident`` names; a ``cache`` supplies a state dict read before."""
    ref = model_ref(req)
    if ref is not None and ref.is_hf:
        from odinw_bench.models.catalog import load_hf_backend

        return load_hf_backend(ref, ident.model["checkpoint"]).eval()
    from odinw_bench.models.glip.backend import GLIPBackend
    from odinw_bench.models.glip.feature_cache import FeatureCache

    backend = GLIPBackend(model_config(req))
    ckpt = ident.model["checkpoint"]
    if ckpt is None:
        logger.warning("%s has random weights: its detections are meaningless until it is trained",
                       backend.config.name)
    elif cache is None:
        backend.load_checkpoint(ckpt, trust=req.trust_checkpoint)
    else:  # loading copies the values, so training never changes the cached tensors
        backend.load_state(cache.state_dict(ckpt, trust=req.trust_checkpoint), source=ckpt)
    # Frozen stages are computed once per input and weights: across this run's epochs, and with a process
    # cache across runs (feature_cache.py; entries are keyed by content, so they never go stale).
    if req.feature_cache:
        backend.set_feature_cache(cache.features if cache is not None else FeatureCache())
    return backend.eval()


def run_request(req: RunRequest, cache: RunCache | None = None) -> RunOutcome:
    """Run one request end to end and write its record, predictions and leaderboard row.

    Args:
        req: The request.
        cache: Reuse checkpoint state dicts and task splits across the runs of one process (sweep workers).
    """
    import pytorch_lightning as pl

    if req.search and req.search_result is None:  # the trials first; their records are reused by a rerun
        from odinw_bench.runs.search import search_hyperparameters

        req = search_hyperparameters(req, cache, run_request)
    started = time.time()
    _prepare_monitoring()
    ident = run_identity(req)
    context = {"run_id": ident.run_id, "model": ident.model, "resolved": ident.resolved,
               "identity": ident.identity, "started": started}
    pl.seed_everything(req.seed, workers=True, verbose=False)
    try:
        backend = _build_backend(req, ident, cache)
        outcome = _execute(req, backend, context, cache)
    except (UserError, KeyboardInterrupt):
        raise
    except Exception as err:
        _write_failure(req, context, err)
        raise
    return outcome


def _prepare_monitoring() -> None:
    """A fresh GPU memory peak for this run, and no Lightning advertising line in its output."""
    from odinw_bench.training import monitoring

    monitoring.reset_peak_gpu_memory()
    monitoring.hide_lightning_tips()


def _execute(req: RunRequest, backend: Any, ctx: dict, cache: RunCache | None = None) -> RunOutcome:
    from odinw_bench.runs.inference import evaluate_split
    from odinw_bench.training.datamodule import ODinWDataModule
    from odinw_bench.training.regimes import apply_regime, count_parameters
    from odinw_bench.training.run_config import eval_placement

    resolved = ctx["resolved"]
    backend.set_vocabulary(req.task.category_names, req.task.prompt_for(req.prompt_variant))
    data = resolved["data"]
    dm = ODinWDataModule(
        task=req.task, data_root=req.data_root, backend=backend, shots=req.shots, seed=req.seed,
        sampler=data["sampler"], batch_size=_per_device_batch(data["batch_size"], resolved["trainer"]["devices"]),
        eval_batch_size=data["eval_batch_size"], num_workers=data["num_workers"],
        dataset_copies=data["dataset_copies"], test_split=req.split, subsample_val=data["subsample_val"],
        split_loader=cache.split if cache is not None else None)
    dm.setup()
    timings: dict[str, float] = {}
    fit_info: dict[str, Any] = {}
    if req.regime.fit:
        t0 = time.time()
        fit_info = _fit(req, backend, dm, ctx)
        timings["fit_s"] = time.time() - t0
    else:
        apply_regime(backend, req.regime, freeze_conv_body_at=resolved["model"]["freeze_conv_body_at"])
    params = dict(zip(("trainable", "total"), count_parameters(backend)))
    t0 = time.time()
    device, dtype = eval_placement(resolved["trainer"])  # the fit's device and precision, also for zero-shot
    result, predictions = evaluate_split(backend, dm.test_split_data, batch_size=data["eval_batch_size"],
                                         progress=req.progress, device=device, autocast_dtype=dtype)
    timings["test_s"] = time.time() - t0
    return _save(req, backend, dm, ctx, result, predictions, params, timings, fit_info)


def _per_device_batch(batch_size: int, devices: Any) -> int:
    """GLIP's batch is global (4 = 4 GPUs × 1 image): split it over the devices of one DDP run."""
    n = devices if isinstance(devices, int) else 1
    if n > 1 and batch_size % n:
        raise UserError(f"data.batch_size={batch_size} (global, as GLIP) is not divisible by {n} devices",
                        field="data.batch_size")
    return max(batch_size // max(n, 1), 1)


def _fit(req: RunRequest, backend: Any, dm: Any, ctx: dict) -> dict[str, Any]:
    """Train with Lightning under GLIP's recipe and load the best-val weights back into ``backend``."""
    import pytorch_lightning as pl
    import torch

    from odinw_bench.training.callbacks import (
        RngStateCheckpoint,
        TimedLastCheckpoint,
        glip_callbacks,
    )
    from odinw_bench.training.fitting import guarded_fit
    from odinw_bench.training.module import DetectionModule
    from odinw_bench.training.monitoring import EpochLog
    from odinw_bench.training.run_config import trainer_kwargs
    from odinw_bench.training.slim_state import load_slim_state

    resolved, run_id = ctx["resolved"], ctx["run_id"]
    module = DetectionModule.from_resolved(backend, resolved, req.task.category_ids)
    module.set_eval_ground_truth(val=dm.val_split_data.to_coco_dict())
    ckpt_dir = req.output / "checkpoints" / run_id
    glip = glip_callbacks(resolved["schedule"], ckpt_dir)
    last = TimedLastCheckpoint(ckpt_dir, req.checkpoint_every_s)
    wb_logger = _wandb_logger(req, ctx)
    ctx["wandb"] = wb_logger
    epoch_log = EpochLog()
    trainer = pl.Trainer(**trainer_kwargs(resolved), callbacks=[*glip, RngStateCheckpoint(), epoch_log, last],
                         logger=wb_logger if wb_logger is not None else False, default_root_dir=str(ckpt_dir),
                         enable_progress_bar=req.progress, enable_model_summary=False, num_sanity_val_steps=0,
                         enable_checkpointing=False)
    resume_from = ckpt_dir / "last.ckpt" if req.resume else None
    if resume_from is not None and not resume_from.is_file():
        logger.warning("no checkpoint to resume from at %s; starting from the beginning", resume_from)
        resume_from = None
    guarded_fit(trainer, module, dm, ckpt_path=resume_from,
                oom_hint="lower data.batch_size (global batch) or use trainer.precision=16-mixed; more --devices "
                         "split the batch")
    best = glip[1]
    if best.best_model_path:
        saved = torch.load(best.best_model_path, map_location="cpu", weights_only=True)
        load_slim_state(module, saved, source=best.best_model_path)
    return {"best_val_AP": best.best_score, "best_epoch": best.best_epoch, "epochs": trainer.current_epoch,
            "nonfinite_steps": module.nonfinite_steps, "best_checkpoint": best.best_model_path or None,
            "history": epoch_log.history}


def _wandb_logger(req: RunRequest, ctx: dict) -> Any:
    from odinw_bench.training.wandb_logging import make_wandb_logger

    wb = ctx["resolved"]["wandb"]
    if wb["mode"] == "off" or ctx.get("wandb_started"):
        return ctx.get("wandb")
    ctx["wandb_started"] = True
    shots = req.shots
    return make_wandb_logger(
        wb["mode"], save_dir=req.output, project=wb["project"], entity=wb["entity"],
        group=f"{ctx['model']['name']}-{req.regime.name}-k{shots}", name=f"{req.task.name}-s{req.seed}",
        tags=[req.task.name, ctx["model"]["name"], req.regime.name, f"k{shots}", f"seed{req.seed}"],
        config={"run_id": ctx["run_id"], "task": req.task.name, "shots": shots, "seed": req.seed,
                "regime": req.regime.name, "model": ctx["model"]["name"], **ctx["resolved"]})


def _save(req, backend, dm, ctx, result, predictions, params, timings, fit_info) -> RunOutcome:
    from odinw_bench.results.evaluation import write_predictions
    from odinw_bench.results.leaderboard import repair_leaderboard
    from odinw_bench.results.records import record_path, write_record
    from odinw_bench.results.schema import SELECT_VAL_AP

    metrics = dict(result.metrics)
    metrics.update({f"AP-{name}": value for name, value in result.per_category.items()})
    if fit_info.get("best_val_AP") is not None:
        metrics[SELECT_VAL_AP] = fit_info["best_val_AP"]
    record = _make_record(req, ctx, dm, backend, metrics, params, timings, fit_info)
    path = record_path(req.output, record)
    predictions_path = path.with_name(path.stem + "_predictions.json")
    write_predictions(predictions_path, predictions)
    write_record(path, record)
    if req.regime.fit:  # the run is recorded: its resume state (weights + Adam's, ~3x the model) has no use left
        (req.output / "checkpoints" / ctx["run_id"] / "last.ckpt").unlink(missing_ok=True)
    # The row is derived from the records on disk: this run's row, and any row that a run killed between its
    # record and its row lost (a kill right here loses nothing for good: the next run or sweep restores it).
    repair_leaderboard(req.output / "leaderboard.csv", req.output / "runs")
    _log_wandb_final(req, ctx, dm, result, predictions)
    return RunOutcome(record, path, predictions_path)


def _sample_info(dm: Any) -> dict:
    train, val = dm.train_sample, dm.val_sample
    return {"sampler": dm.sampler_used, "train_ids": list(train.image_ids), "train_ids_hash": train.ids_hash,
            "train_count": len(train.image_ids), "val_ids": None if val is None else list(val.image_ids),
            "val_ids_hash": None if val is None else val.ids_hash,
            "val_count": None if val is None else len(val.image_ids), "shortfall": dict(train.shortfall)}


def _make_record(req, ctx, dm, backend, metrics, params, timings, fit_info, error: str | None = None) -> dict:
    from odinw_bench.results.records import make_record
    from odinw_bench.tasks.registry import task_sha256
    from odinw_bench.training.monitoring import peak_gpu_memory_bytes

    task = req.task
    # The per-epoch history is a top-level field of the record, not part of the run's configuration.
    fit = {key: value for key, value in fit_info.items() if key != "history"}
    config = {**ctx["identity"], "data": dm.describe() if dm is not None else None, "fit": fit}
    captions = backend.captions if backend is not None else []
    return make_record(
        run_id=ctx["run_id"],
        task={"name": task.name, "version": task.version, "sha256": task_sha256(task),
              "display_name": task.display_name},
        split=req.split, prompt={"variant": req.prompt_variant or "default", "captions": captions},
        shots=req.shots, seed=req.seed, regime=req.regime.name,
        sample=_sample_info(dm) if dm is not None else {
            "sampler": "none", "train_ids": [], "train_ids_hash": None, "train_count": 0, "val_ids": None,
            "val_ids_hash": None, "val_count": None, "shortfall": {}},
        model=ctx["model"], config=config, metrics=metrics, params=params,
        duration_s=time.time() - ctx["started"], timings=timings, error=error, history=fit_info.get("history"),
        peak_gpu_memory_bytes=peak_gpu_memory_bytes(), protocol_differences=list(req.regime.protocol_differences),
        search=req.search_result)


def _write_failure(req: RunRequest, ctx: dict, err: BaseException) -> None:
    """A failed run still leaves one complete record (status failed, with the error), never a partial one."""
    from odinw_bench.results.records import record_path, write_record

    try:
        record = _make_record(req, ctx, None, None, {}, {"trainable": None, "total": None}, {}, {},
                              error=f"{type(err).__name__}: {err}")
        write_record(record_path(req.output, record), record)
    except Exception:  # noqa: BLE001 - never hide the original error behind a reporting error
        logger.exception("could not write the failure record of run %s", ctx.get("run_id"))


def _log_wandb_final(req: RunRequest, ctx: dict, dm: Any, result: Any, predictions: list[dict]) -> None:
    from odinw_bench.training.wandb_logging import log_final

    wb_logger = ctx.get("wandb") or _wandb_logger(req, ctx)
    if wb_logger is None:
        return
    images = _example_images(req, dm, predictions, ctx["resolved"]["wandb"]["log_images"])
    log_final(wb_logger, {f"test/{k}": v for k, v in result.metrics.items()}, result.per_category, images,
              req.task.category_names)


def _coco_to_boxes(entries: list[dict], category_ids: list[int]) -> dict:
    """COCO entries (xywh with GLIP's +1 widths) back to xyxy pixels with 0-based labels."""
    boxes = [[x, y, x + w - 1, y + h - 1] for x, y, w, h in (e["bbox"] for e in entries)]
    return {"boxes": boxes, "labels": [category_ids.index(e["category_id"]) for e in entries],
            "scores": [e.get("score", 1.0) for e in entries]}


def _example_images(req: RunRequest, dm: Any, predictions: list[dict], limit: int) -> list[tuple]:
    """A few test images with their confident predictions and ground truth, for W&B."""
    from odinw_bench.data.images import load_rgb

    split, ids = dm.test_split_data, req.task.category_ids
    out = []
    for image in split.images[:limit]:
        preds = [p for p in predictions if p["image_id"] == image.id and p["score"] >= 0.3]
        out.append((load_rgb(image.path, expected_size=(image.width, image.height)), _coco_to_boxes(preds, ids),
                    _coco_to_boxes(split.annotations.get(image.id, []), ids)))
    return out


def summary_table(outcomes: list[RunOutcome]) -> str:
    """One line per run: task, regime, shots, seed, test AP / AP50 (×100), best val AP, record path."""
    lines = [f"{'task':<24} {'regime':<19} {'shots':>5} {'seed':>5} {'AP':>6} {'AP50':>6} {'valAP':>6}  record"]
    for o in outcomes:
        r, m = o.record, o.record["metrics"]

        def pct(v: Any) -> str:
            return "-" if v is None or v != v else f"{100 * v:.1f}"
        lines.append(f"{r['task']['name']:<24} {r['regime']:<19} {str(r['shots']):>5} {r['seed']:>5} "
                     f"{pct(m.get('AP')):>6} {pct(m.get('AP50')):>6} {pct(m.get('select/val_AP')):>6}  "
                     f"{o.record_path}")
    return "\n".join(lines)
