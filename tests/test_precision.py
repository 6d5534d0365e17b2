"""Mixed precision end to end: bf16 autocast gives fp32's detections within a stated tolerance, a bf16 run trains
and records, and a run evaluates where and in which precision it trained.

The tolerance (README, "GPU readiness"): on the pre-trained glip-nano over a demo task's val split, every fp32
detection scoring at least 0.2 has a bf16 detection of its label with IoU >= 0.5 and a score within 0.1, the
median IoU of those pairs is >= 0.95, and AP moves by less than 1 point. bf16 keeps 8 bits of mantissa, so a tiny
model's boxes move by a pixel here and there; the comparison runs on the CPU, whose bf16 autocast casts the same
operators as CUDA's.
"""

from __future__ import annotations

import statistics

import pytest
import torch

from odinw_bench.cli import main
from odinw_bench.training.run_config import eval_placement

FAST = ["data.num_workers=0", "trainer.limit_train_batches=2", "data.batch_size=2", "trainer.log_every_n_steps=1"]


@pytest.fixture(scope="module")
def playroom(tmp_path_factory):
    from odinw_bench.data.task_files import load_task_split, prepare_data_root
    from odinw_bench.models.glip.backend import load_glip
    from odinw_bench.tasks.registry import resolve_tasks

    ((task, _),) = resolve_tasks("demo_playroom")
    split = load_task_split(task, "val", prepare_data_root(task, str(tmp_path_factory.mktemp("data"))))
    backend = load_glip("glip-nano")
    backend.set_vocabulary(task.category_names, task.prompt_for(None))
    return backend, split


def test_bf16_autocast_gives_fp32s_detections_within_the_tolerance(playroom):
    from torchvision.ops import box_iou

    from odinw_bench.data.images import load_rgb
    from odinw_bench.runs.inference import evaluate_split

    backend, split = playroom
    fp32, _ = evaluate_split(backend, split, progress=False)
    bf16, _ = evaluate_split(backend, split, progress=False, autocast_dtype="bfloat16")
    assert abs(fp32.metrics["AP"] - bf16.metrics["AP"]) < 0.01
    ious = []
    for image in split.images:
        batch = backend.preprocess([load_rgb(image.path, expected_size=(image.width, image.height))])
        with torch.inference_mode():
            (full,) = backend.predict(batch)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                (half,) = backend.predict(batch)
        for box, score, label in zip(full.boxes, full.scores, full.labels):
            if score < 0.2:
                continue
            # Its counterpart: the same label, a score within 0.1, and of those the best overlap.
            close = (half.labels == label) & ((half.scores.float() - score).abs() <= 0.1)
            assert close.any(), f"no bf16 detection of label {label} near score {float(score):.3f} in {image.path}"
            overlap = float(box_iou(box[None], half.boxes[close].float())[0].max())
            assert overlap >= 0.5, f"bf16 moved a box of {image.path} to IoU {overlap:.2f}"
            ious.append(overlap)
    assert len(ious) > 50  # the comparison compares something
    assert statistics.median(ious) >= 0.95


def test_a_bf16_mixed_run_trains_and_records(tmp_path):
    from odinw_bench.results.records import read_record

    assert main(["run", "--task", "demo", "--shots", "1", "--model", "glip-micro", "--regime", "full",
                 "--data-root", str(tmp_path / "data"), "--output", str(tmp_path / "out"), "--no-progress",
                 "--precision", "bf16-mixed", "schedule.max_epochs=1", *FAST]) == 0
    (path,) = [p for p in (tmp_path / "out").glob("runs/**/*.json") if not p.stem.endswith("_predictions")]
    record = read_record(path)
    assert record["status"] == "ok" and record["config"]["resolved"]["trainer"]["precision"] == "bf16-mixed"
    assert all(entry["loss"] is not None and entry["loss"] == entry["loss"] for entry in record["history"])
    assert record["metrics"]["AP"] is not None


def test_a_run_evaluates_on_its_accelerator_in_its_precision(monkeypatch):
    assert eval_placement({"accelerator": "cpu", "devices": 1, "precision": "32"}) == ("cpu", None)
    assert eval_placement({"accelerator": "auto", "devices": 1, "precision": "bf16-mixed"})[1] == "bfloat16"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    # Lightning hands the fitted model back on the CPU: the test pass must go back to the GPU, with AMP.
    assert eval_placement({"accelerator": "auto", "devices": 1, "precision": "auto"}) == ("cuda:0", "bfloat16")
    assert eval_placement({"accelerator": "gpu", "devices": [1, 2], "precision": "16-mixed"}) == ("cuda:1", "float16")
    assert eval_placement({"accelerator": "cpu", "devices": 1, "precision": "auto"}) == ("cpu", None)
