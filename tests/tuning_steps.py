"""A random glip-micro, two small images and one SGD step: shared by the parameter-efficient regimes' tests."""

from __future__ import annotations

import random
from pathlib import Path

import torch
from PIL import Image

from odinw_bench.models.glip.backend import GLIPBackend
from odinw_bench.models.glip.config import get_preset
from odinw_bench.training.regimes import set_frozen_modules_eval

NAMES = ["apple", "banana"]


def micro_backend(config=None) -> GLIPBackend:
    """glip-micro (or ``config``) with seed 0, vocabulary ``NAMES``, every detection kept."""
    torch.manual_seed(0)
    backend = GLIPBackend(config or get_preset("glip-micro"))
    backend.set_vocabulary(NAMES)
    backend.model.rpn.post_processor.pre_nms_thresh = 0.0  # a random model's scores: keep detections to compare
    return backend


def images() -> list:
    """Two fixed 128x96 random RGB images."""
    gen = torch.Generator().manual_seed(1)
    return [Image.fromarray((torch.rand(96, 128, 3, generator=gen) * 255).to(torch.uint8).numpy()) for _ in range(2)]


def predict(backend) -> list:
    """Detections of :func:`images` in eval mode."""
    backend.eval()
    with torch.no_grad():
        return backend.predict(backend.preprocess(images()))


def step(backend, regime) -> None:
    """One SGD step (lr 0.5) on :func:`images` with one box each, in the regime's train/eval modes."""
    backend.train()
    set_frozen_modules_eval(backend, regime, freeze_conv_body_at=2)
    targets = [{"boxes": [[10, 10, 60, 50]], "labels": [0]}, {"boxes": [[5, 20, 70, 90]], "labels": [1]}]
    batch = backend.preprocess(images(), targets, train=True, rng=random.Random(0))
    optimizer = torch.optim.SGD([p for p in backend.parameters() if p.requires_grad], lr=0.5)
    sum(backend.compute_losses(batch).values()).backward()
    optimizer.step()


def run_micro(tmp_path: Path, regime: str) -> dict:
    """``run --regime <regime>`` of glip-micro on the demo task, 1 shot, one short epoch; returns its record."""
    from odinw_bench.cli import main
    from odinw_bench.results.records import read_record

    out = tmp_path / "out"
    assert main(["run", "--task", "demo", "--shots", "1", "--model", "glip-micro", "--regime", regime,
                 "--data-root", str(tmp_path / "data"), "--output", str(out), "--no-progress", "schedule.max_epochs=1",
                 "data.num_workers=0", "trainer.limit_train_batches=2", "data.batch_size=2",
                 "trainer.log_every_n_steps=1"]) == 0
    (path,) = [p for p in out.glob("runs/**/*.json") if not p.stem.endswith("_predictions")]
    return read_record(path)


def tune_then_reload(tmp_path: Path, regime: str) -> tuple[Path, Path]:
    """Fine-tune glip-nano on demo_pantry (1 shot, one short epoch), then evaluate its ``model_best.ckpt`` through
    ``--checkpoint`` on the test split; returns both records' paths (predictions beside them)."""
    from odinw_bench.cli import main
    from odinw_bench.results.records import read_record

    common = ["--task", "demo_pantry", "--model", "glip-nano", "--data-root", str(tmp_path / "data"), "--no-progress"]
    assert main(["run", *common, "--shots", "1", "--regime", regime, "--output", str(tmp_path / "tuned"),
                 "schedule.max_epochs=1", "trainer.limit_train_batches=2", "data.batch_size=2", "data.num_workers=0"]) == 0
    (tuned,) = [p for p in (tmp_path / "tuned").glob("runs/**/*.json") if not p.stem.endswith("_predictions")]
    best = tmp_path / "tuned" / "checkpoints" / read_record(tuned)["run_id"] / "model_best.ckpt"
    assert main(["run", *common, "--shots", "0", "--checkpoint", str(best), "--split", "test",
                 "--output", str(tmp_path / "again")]) == 0
    (again,) = [p for p in (tmp_path / "again").glob("runs/**/*.json") if not p.stem.endswith("_predictions")]
    return tuned, again
