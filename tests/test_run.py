"""``run`` end to end on the synthetic demo task with glip-micro on CPU: records, determinism, resume, W&B."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl

from odinw_bench.cli import main
from odinw_bench.results.records import read_record

# A short schedule: 1-2 epochs of 2 batches keep each run to seconds.
FAST = ["data.num_workers=0", "trainer.limit_train_batches=2", "data.batch_size=2", "trainer.log_every_n_steps=1"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data"))


def _run(out: Path, data_root: str, *extra: str, shots: str = "1", epochs: int = 1) -> int:
    return main(["run", "--task", "demo", "--shots", shots, "--model", "glip-micro", "--data-root", data_root,
                 "--output", str(out), "--no-progress", *extra, f"schedule.max_epochs={epochs}", *FAST])


def _records(out: Path) -> list[dict]:
    files = [p for p in sorted(out.glob("runs/**/*.json")) if not p.stem.endswith("_predictions")]
    return [read_record(p) for p in files]


def _rows(out: Path) -> list[dict]:
    with open(out / "leaderboard.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_run_via_subprocess_writes_record_predictions_and_row(tmp_path, data_root):
    cmd = [sys.executable, "-m", "odinw_bench", "run", "--task", "demo", "--shots", "1", "--model", "glip-micro",
           "--regime", "prompt", "--data-root", data_root, "--output", str(tmp_path), "--no-progress",
           "schedule.max_epochs=1", *FAST]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "demo" in proc.stdout and "prompt" in proc.stdout
    (record,) = _records(tmp_path)
    assert record["status"] == "ok" and record["regime"] == "prompt" and record["shots"] == 1
    assert record["params"]["trainable"] == 1000 * 64  # the tunable_linear offset of glip-micro only
    assert record["sample"]["train_count"] == len(record["sample"]["train_ids"]) > 0
    assert record["config"]["resolved"]["optim"]["lr"] == 0.05  # GLIP's prompt-tuning lr
    assert record["metrics"]["select/val_AP"] is not None
    predictions = next(tmp_path.glob("runs/**/*_predictions.json"))
    assert predictions.stat().st_size > 0
    (row,) = _rows(tmp_path)
    assert row["run_id"] == record["run_id"] and row["regime"] == "prompt"


def test_zero_shot_evaluates_without_fitting(tmp_path, data_root):
    assert _run(tmp_path, data_root, shots="0") == 0
    (record,) = _records(tmp_path)
    assert record["regime"] == "zero-shot" and record["params"]["trainable"] == 0
    assert not (tmp_path / "checkpoints").exists()


def test_same_seed_gives_identical_metrics(tmp_path, data_root):
    assert _run(tmp_path / "a", data_root, "--regime", "linear-probe") == 0
    assert _run(tmp_path / "b", data_root, "--regime", "linear-probe") == 0
    (a,), (b,) = _records(tmp_path / "a"), _records(tmp_path / "b")
    assert a["run_id"] == b["run_id"]
    assert a["metrics"] == b["metrics"]
    assert a["config"]["fit"]["best_val_AP"] == b["config"]["fit"]["best_val_AP"]


class _Crash(RuntimeError):
    pass


def _assert_resume_state_holds_what_trains(path: Path, regime: str) -> None:
    """last.ckpt keeps the weights that train and the buffers; the frozen weights are only named and hashed."""
    import torch

    from odinw_bench.models.glip.backend import GLIPBackend
    from odinw_bench.training.slim_state import FROZEN_KEY

    saved = torch.load(path, weights_only=True)
    model = GLIPBackend.from_preset("glip-micro")
    everything = {f"backend.{k}" for k in model.state_dict()}
    frozen = saved[FROZEN_KEY]["names"]
    assert set(saved["state_dict"]) | set(frozen) == everything and not set(saved["state_dict"]) & set(frozen)
    if regime == "linear-probe":  # the head's output layers only: a few thousand numbers, not the model
        params = {f"backend.{k}": p.numel() for k, p in model.named_parameters()}
        kept = sum(params[k] for k in saved["state_dict"] if k in params)
        assert 0 < kept < 0.01 * sum(params.values())
    best = saved["callbacks"]["GlipBestCheckpoint"]["weights"]  # the best weights so far travel with it
    assert best is None or set(best) == set(saved["state_dict"])


@pytest.mark.parametrize("regime", ["full", "linear-probe"])
def test_resume_after_a_crash_reaches_the_uninterrupted_result(tmp_path, data_root, monkeypatch, regime):
    assert _run(tmp_path / "full", data_root, "--regime", regime, epochs=2) == 0
    (uninterrupted,) = _records(tmp_path / "full")

    from odinw_bench.training import callbacks

    class CrashAfterFirstEpoch(pl.Callback):  # after epoch 0 and its last.ckpt: a kill at the start of epoch 1
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                raise _Crash("simulated kill after epoch 1")

    original = callbacks.glip_callbacks
    monkeypatch.setattr(callbacks, "glip_callbacks", lambda *a, **k: [*original(*a, **k), CrashAfterFirstEpoch()])
    with pytest.raises(_Crash):
        _run(tmp_path / "resumed", data_root, "--regime", regime, "--checkpoint-every", "0", epochs=2)
    (failed,) = _records(tmp_path / "resumed")
    assert failed["status"] == "failed" and "simulated kill" in failed["error"]
    assert not (tmp_path / "resumed" / "leaderboard.csv").exists()  # no row for a failed run
    _assert_resume_state_holds_what_trains(tmp_path / "resumed" / "checkpoints" / failed["run_id"] / "last.ckpt",
                                           regime)
    monkeypatch.setattr(callbacks, "glip_callbacks", original)
    assert _run(tmp_path / "resumed", data_root, "--regime", regime, "--resume", epochs=2) == 0
    (resumed,) = _records(tmp_path / "resumed")
    assert resumed["status"] == "ok" and resumed["run_id"] == uninterrupted["run_id"]
    assert resumed["metrics"] == uninterrupted["metrics"]
    assert resumed["config"]["fit"]["epochs"] == uninterrupted["config"]["fit"]["epochs"]
    # The epoch before the crash stays in the history (it is saved with last.ckpt), and the resumed run adds the next.
    assert [e["epoch"] for e in resumed["history"]] == [e["epoch"] for e in uninterrupted["history"]] == [0, 1]
    assert [e["val_AP"] for e in resumed["history"]] == [e["val_AP"] for e in uninterrupted["history"]]
    assert len(_rows(tmp_path / "resumed")) == 1
    # Once recorded, the run's resume state is deleted (it is ~3x the model); the best weights stay.
    ckpt_dir = tmp_path / "resumed" / "checkpoints" / resumed["run_id"]
    assert not (ckpt_dir / "last.ckpt").exists()
    assert (ckpt_dir / "model_best.ckpt").is_file() and resumed["config"]["fit"]["best_checkpoint"]


def test_wandb_offline_logs_metrics_and_off_creates_nothing(tmp_path, data_root):
    assert _run(tmp_path / "off", data_root, "--regime", "linear-probe", "--wandb", "off") == 0
    assert not list((tmp_path / "off").rglob("wandb"))
    assert _run(tmp_path / "on", data_root, "--regime", "linear-probe", "--wandb", "offline") == 0
    (run_file,) = list((tmp_path / "on").glob("wandb/offline-run-*/run-*.wandb"))
    data = run_file.read_bytes()
    for key in (b"val/AP", b"test/AP", b"train/loss", b"test/per_category_AP"):
        assert key in data, key


@pytest.mark.parametrize(("args", "message"), [
    (["--regime", "lineer-probe"], "did you mean: linear-probe"),
    (["--shots", "0", "--regime", "full"], "--shots 0 is zero-shot"),
    (["--model", "glip-mikro"], "did you mean 'glip-micro'"),
    (["--prompt", "odinw_35"], "no prompt variant"),
    (["optim.lrr=1"], "optim.lrr"),
])
def test_bad_input_is_one_clear_error_and_writes_nothing(tmp_path, data_root, capsys, args, message):
    argv = ["run", "--task", "demo", "--shots", "1", "--data-root", data_root, "--output", str(tmp_path), *args]
    if "--model" not in args:
        argv += ["--model", "glip-micro"]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.rglob("*.json")) and not (tmp_path / "leaderboard.csv").exists()


def test_gpu_out_of_memory_says_which_knob_to_turn(tmp_path, data_root, capsys, monkeypatch):
    import torch

    from odinw_bench.training.module import DetectionModule

    def oom(self, batch, batch_idx):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(DetectionModule, "training_step", oom)
    assert _run(tmp_path, data_root, "--regime", "full") == 2
    err = capsys.readouterr().err
    assert "out of GPU memory" in err and "data.batch_size" in err
    assert not (tmp_path / "leaderboard.csv").exists()
