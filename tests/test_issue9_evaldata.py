"""Issue 9, evaluation and data: annotation id 0, negative boxes, data checked before the model, ``validate``.

Items 1 (pycocotools ignores annotation id 0), 8 (negative box width; an unknown ``--model`` fails fast), 9 (``run``
checks its data before building a model) and 10 (``validate`` decodes images and reports quirks; ``tasks`` with a
missing data root).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image
from test_tasks import task_dict, write_odinw_folder, write_task

from odinw_bench.cli import main
from odinw_bench.data.coco import read_split
from odinw_bench.data.synthetic import write_synthetic_export
from odinw_bench.data.task_files import load_task_split
from odinw_bench.errors import UserError
from odinw_bench.results.evaluation import evaluate_detections
from odinw_bench.runs.arguments import parse_run_args
from odinw_bench.runs.request import requests_from_args
from odinw_bench.tasks import registry
from odinw_bench.tasks.registry import load_task

REPO_ROOT = Path(__file__).resolve().parents[1]
AP_METRICS = ("AP", "AP50", "AP75")


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    for name in (registry.TASKS_DIR_ENV, registry.DATA_ROOT_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # the default data root DATASET/odinw is then empty


def _gt_as_predictions(gt: dict) -> list[dict]:
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]), "score": 1.0}
            for a in gt["annotations"]]


def _gt_from_zero(n_images: int = 4) -> dict:
    """A ground truth whose annotation ids are 0, 1, 2, ... (Roboflow-style), two boxes per image."""
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 200, "height": 100} for i in range(n_images)]
    boxes = [(i, 1 + (k % 2), [10 + 60 * k, 20, 40, 30]) for i in range(n_images) for k in range(2)]
    annotations = [{"id": ann_id, "image_id": img, "category_id": cat, "bbox": bbox, "area": 1200.0, "iscrowd": 0}
                   for ann_id, (img, cat, bbox) in enumerate(boxes)]
    return {"images": images, "annotations": annotations,
            "categories": [{"id": 1, "name": "fish"}, {"id": 2, "name": "shark"}]}


def _write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


# ------------------------------------------------------------------------------------- 1. annotation id 0


def test_ground_truth_with_annotation_id_0_scores_itself_at_one():
    gt = _gt_from_zero()
    before = copy.deepcopy(gt)
    result = evaluate_detections(gt, _gt_as_predictions(gt))
    assert all(result.metrics[name] == 1.0 for name in AP_METRICS), result.metrics
    assert all(ap == 1.0 for ap in result.per_category.values()), result.per_category
    assert gt == before  # the caller's ids are untouched: the renumbering is private to the evaluator


def test_a_split_read_from_a_file_with_id_0_scores_one_and_keeps_its_ids(tmp_path):
    path = _write_json(tmp_path / "ann.json", _gt_from_zero())
    split = read_split(path, tmp_path)
    gt = split.to_coco_dict()
    result = evaluate_detections(gt, _gt_as_predictions(gt))
    assert result.metrics["AP"] == 1.0
    assert min(a["id"] for a in split.to_coco_dict()["annotations"]) == 0  # the CocoSplit is not renumbered
    assert json.loads(path.read_text()) == _gt_from_zero()  # nor the user's file


def test_demo_data_has_1_based_annotation_ids_and_scores_itself_at_one(tmp_path):
    out = write_synthetic_export(tmp_path / "demo", n_train=8, n_valid=2, n_test=4)
    files = sorted(out.rglob("*.json"))
    assert len(files) == 3 * 2 + 2 * 12  # raw + clean per split, 12 few-shot files for train and valid
    for path in files:
        ids = [a["id"] for a in json.loads(path.read_text())["annotations"]]
        assert ids and min(ids) >= 1, path
    gt = read_split(out / "test" / "annotations_without_background.json", out / "test").to_coco_dict()
    assert evaluate_detections(gt, _gt_as_predictions(gt)).metrics["AP"] == 1.0


# ------------------------------------------------------------------------------------- 8. negative box width


@pytest.mark.parametrize("bbox", [[10, 10, -5, 20], [10, 10, 20, -0.5]])
def test_negative_box_side_is_an_error_naming_file_and_field(tmp_path, bbox):
    gt = _gt_from_zero()
    gt["annotations"][3]["bbox"] = bbox
    path = _write_json(tmp_path / "ann.json", gt)
    with pytest.raises(UserError) as err:
        read_split(path, tmp_path)
    assert str(err.value).startswith(f"{path}: field 'annotations[3].bbox': width and height must be >= 0")
    with pytest.raises(UserError, match=r"field 'annotations\[3\]\.bbox'"):
        evaluate_detections(gt, _gt_as_predictions(_gt_from_zero()))  # a ground-truth dict handed in directly


def test_zero_width_box_is_kept_for_evaluation_and_dropped_for_training(tmp_path):
    gt = _gt_from_zero()
    gt["annotations"][3]["bbox"] = [10, 10, 0, 20]  # degenerate, as GLIP treats it: not malformed
    split = read_split(_write_json(tmp_path / "ann.json", gt), tmp_path)
    assert split.stats["n_boxes_in_file"] == 8 and split.stats["n_degenerate_dropped"] == 1
    assert len(split.to_coco_dict()["annotations"]) == 8


@pytest.fixture
def fruit(tmp_path) -> tuple[Path, Path]:
    """(task YAML, data root) of a small ODinW-style custom task (8x6 PNGs, boxes [1, 1, 3, 2])."""
    write_odinw_folder(tmp_path / "data")
    return write_task(tmp_path, task_dict()), tmp_path / "data"


def _set_box(data_root: Path, folder: str, index: int, bbox: list) -> Path:
    path = data_root / "Fruit/v1" / folder / "annotations_without_background.json"
    coco = json.loads(path.read_text())
    coco["annotations"][index]["bbox"] = bbox
    path.write_text(json.dumps(coco))
    return path


def test_negative_box_fails_evaluate_training_data_and_validate(fruit, tmp_path, capsys):
    task_yaml, data_root = fruit
    val_file = _set_box(data_root, "valid", 1, [1, 1, -3, 2])
    train_file = _set_box(data_root, "train", 0, [1, 1, 3, -2])
    predictions = _write_json(tmp_path / "preds.json", [{"image_id": 1, "category_id": 1, "bbox": [1, 1, 3, 2],
                                                         "score": 0.9}])
    assert main(["evaluate", "--task", str(task_yaml), "--split", "val", "--predictions", str(predictions),
                 "--data-root", str(data_root)]) == 2
    err = capsys.readouterr().err
    message = "width and height must be >= 0, found [1, 1, -3, 2]"
    assert err == f"error: {val_file}: field 'annotations[1].bbox': {message}\n"
    with pytest.raises(UserError, match=r"annotations\[0\]\.bbox"):  # what the training data module reads
        load_task_split(load_task(task_yaml), "train", data_root)
    assert main(["validate", "--task", str(task_yaml), "--data-root", str(data_root)]) == 2
    out = capsys.readouterr().out
    assert f"✗ train: boxes: {train_file}: field 'annotations[0].bbox'" in out
    assert f"✗ val: boxes: {val_file}: field 'annotations[1].bbox'" in out


# ------------------------------------------------------------------------------- 8. unknown --model is fast


def test_run_with_unknown_model_fails_in_well_under_a_second(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in (registry.TASKS_DIR_ENV, registry.DATA_ROOT_ENV)}
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "odinw_bench", "run", "--task", "demo", "--shots", "0", "--model", "glip-tt",
         "--data-root", str(tmp_path / "data"), "--output", str(tmp_path / "out")],
        cwd=tmp_path, env={**env, "PYTHONPATH": str(REPO_ROOT)}, capture_output=True, text=True, timeout=60,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: field '--model': unknown model 'glip-tt'; did you mean 'glip-t")
    assert result.stderr.count("\n") == 1 and "glip-micro" in result.stderr
    assert elapsed < 5, f"took {elapsed:.1f} s"  # 17 s before: torch, Lightning and the demo data came first
    assert not (tmp_path / "data").exists() and not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- 9. run checks its data first


@pytest.fixture
def no_model(monkeypatch):
    """Building a model (and so downloading a checkpoint) fails the test."""
    from odinw_bench.runs import runner

    def refuse(*args, **kwargs):
        raise AssertionError("the model was built before the data was checked")

    monkeypatch.setattr(runner, "_build_backend", refuse)


@pytest.mark.parametrize("shots", ["1", "0"])
def test_run_without_data_names_the_download_command_before_building_the_model(tmp_path, capsys, no_model, shots):
    root = tmp_path / "odinw"
    assert main(["run", "--task", "aquarium", "--shots", shots, "--data-root", str(root),
                 "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {root}: data root does not exist; task 'aquarium' needs split")
    assert err.rstrip().endswith(f"get it with: python -m odinw_bench download --task aquarium --data-root {root}")
    assert err.count("\n") == 1
    assert ("'train'" in err) == (shots == "1")  # zero-shot reads only the split it scores
    assert not (tmp_path / "out").exists()


def test_zero_shot_needs_only_the_scored_split(fruit):
    task_yaml, data_root = fruit
    for folder in ("train", "valid"):
        for path in (data_root / "Fruit/v1" / folder).iterdir():
            path.unlink()
    (request,) = requests_from_args(parse_run_args(["--task", str(task_yaml), "--shots", "0", "--split", "test",
                                                    "--data-root", str(data_root)]))
    assert request.split == "test"
    with pytest.raises(UserError) as err:  # fitting needs train and val too
        requests_from_args(parse_run_args(["--task", str(task_yaml), "--shots", "1", "--data-root", str(data_root)]))
    assert "split 'train' (and 'val') of task 'fruit' not found" in str(err.value)


def test_custom_task_is_never_told_to_download_itself(fruit, tmp_path):
    from odinw_bench.data.task_files import require_split_files

    task_yaml, _ = fruit
    missing = tmp_path / "elsewhere"
    with pytest.raises(UserError) as err:
        requests_from_args(parse_run_args(["--task", str(task_yaml), "--shots", "0", "--data-root", str(missing)]))
    message = str(err.value)
    assert "this task has no `download` zip" in message and "odinw_bench download" not in message
    assert f"put its files in {missing / 'Fruit/v1'}" in message
    # A custom YAML that does name a zip is pointed at its own YAML: `--task fruit` would not resolve.
    (tmp_path / "zipped").mkdir()
    zipped = load_task(write_task(tmp_path / "zipped", {**task_dict(), "download": "Fruit"}))
    with pytest.raises(UserError, match=r"download --task <this task's YAML> --data-root"):
        require_split_files(zipped, ["test"], missing)


def test_validate_custom_task_without_zip_does_not_suggest_download(fruit, tmp_path, capsys):
    task_yaml, _ = fruit
    assert main(["validate", "--task", str(task_yaml), "--data-root", str(tmp_path / "elsewhere")]) == 2
    err = capsys.readouterr().err
    assert "odinw_bench download" not in err and "this task has no `download` zip" in err


# ------------------------------------------------------------------------ 10. validate decodes and reports


def test_validate_fails_on_an_image_that_does_not_decode(fruit, capsys):
    task_yaml, data_root = fruit
    image = data_root / "Fruit/v1/valid/img1.png"
    image.write_bytes(image.read_bytes()[:40])  # a truncated PNG: the file exists but cannot be decoded
    assert main(["validate", "--task", str(task_yaml), "--data-root", str(data_root)]) == 2
    out = capsys.readouterr().out
    assert "✗ val: images: 1/2 sampled images decoded; unreadable ['img1.png']" in out
    assert "✓ train: images: 2/2 sampled images decoded" in out


def _quirky_train_split(data_root: Path) -> None:
    """Train: grayscale and RGBA images, an image without boxes, and boxes without iscrowd, tiny, at the border."""
    folder = data_root / "Fruit/v1/train"
    Image.new("L", (8, 6), 90).save(folder / "img0.png")
    Image.new("RGBA", (8, 6), (10, 20, 30, 128)).save(folder / "img1.png")
    Image.new("RGB", (8, 6), (0, 0, 0)).save(folder / "img2.png")
    path = folder / "annotations_without_background.json"
    coco = json.loads(path.read_text())
    coco["images"].append({"id": 3, "file_name": "img2.png", "width": 8, "height": 6})
    coco["annotations"] = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 8, 6]},  # touches all borders, no iscrowd
        {"id": 2, "image_id": 1, "category_id": 2, "bbox": [4, 2, 6, 5], "iscrowd": 0},  # crosses the border
        {"id": 3, "image_id": 2, "category_id": 2, "bbox": [2, 2, 1, 3], "iscrowd": 0},  # tiny and degenerate
        {"id": 4, "image_id": 2, "category_id": 1, "bbox": [2, 1, 4, 4], "iscrowd": 0},  # plain
    ]
    path.write_text(json.dumps(coco))


def test_validate_reports_quirks_as_information(fruit, capsys):
    task_yaml, data_root = fruit
    _quirky_train_split(data_root)
    assert main(["validate", "--task", str(task_yaml), "--data-root", str(data_root)]) == 0
    out = capsys.readouterr().out
    lines = [line.strip() for line in out.splitlines()]
    assert "i train: images without boxes: 1 of 3 (not trained on, as in GLIP; still scored)" in lines
    assert "i train: iscrowd: 1 of 4 annotations lack 'iscrowd' (read as 0)" in lines
    assert "i train: image modes: 1 grayscale, 1 RGBA of 3 decoded" in out
    assert "i train: tiny boxes: 1 with a side under 4 px (1 of them <= 1 px" in out
    assert "i train: border boxes: 1 crossing the image border" in out and "), 1 touching it" in out
    assert "i val: images without boxes" not in out and "i val: image modes" not in out
    assert out.rstrip().endswith("all checks passed")


def test_validate_decodes_only_as_many_images_as_asked(fruit, capsys):
    task_yaml, data_root = fruit
    assert main(["validate", "--task", str(task_yaml), "--data-root", str(data_root), "--images", "1"]) == 0
    assert "✓ train: images: 1/1 sampled images decoded" in capsys.readouterr().out


def test_tasks_with_a_missing_data_root_says_it_does_not_exist(tmp_path, capsys):
    missing = tmp_path / "typo"
    assert main(["tasks", "--suite", "odinw13", "--data-root", str(missing)]) == 0
    out = capsys.readouterr().out
    assert f"--data-root {missing} does not exist" in out and "pass --data-root" not in out
