"""The ``evaluate`` command end to end on a small COCO folder and a custom task YAML."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from odinw_bench.cli import main

REPO_ROOT = Path(__file__).resolve().parents[1]

# Annotation-file names differ from the task's names: the task's (overridden) names must be reported.
ANN_CATEGORIES = [
    {"id": 2, "name": "Fish_raw", "supercategory": "x"},
    {"id": 5, "name": "Shark_raw", "supercategory": "x"},
]
TASK_YAML = """\
name: tiny
display_name: "Tiny"
root: "tiny"
categories:
  - {id: 2, name: "fish"}
  - {id: 5, name: "shark"}
splits:
  test: {ann_file: "test/annotations.json", img_dir: "test"}
  val: {ann_file: "test/annotations.json", img_dir: "test"}
"""


@pytest.fixture()
def dataset(tmp_path: Path) -> dict:
    """``<tmp>/data/tiny/test`` with two images and four boxes, plus ``<tmp>/tiny.yaml``."""
    from PIL import Image

    folder = tmp_path / "data" / "tiny" / "test"
    folder.mkdir(parents=True)
    images = []
    for image_id, name in ((1, "a.jpg"), (3, "b.jpg")):
        Image.new("RGB", (96, 64), (image_id * 40, 90, 120)).save(folder / name)
        images.append({"id": image_id, "file_name": name, "width": 96, "height": 64})
    boxes = [(1, 2, [4, 4, 40, 30]), (1, 5, [50, 20, 30, 40]), (3, 2, [10, 10, 40, 36]), (3, 5, [30, 5, 60, 50])]
    annotations = [
        {"id": i + 1, "image_id": img, "category_id": cat, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
        for i, (img, cat, b) in enumerate(boxes)
    ]
    gt = {"images": images, "annotations": annotations, "categories": ANN_CATEGORIES}
    (folder / "annotations.json").write_text(json.dumps(gt))
    task_file = tmp_path / "tiny.yaml"
    task_file.write_text(textwrap.dedent(TASK_YAML))
    return {"task": task_file, "data_root": tmp_path / "data", "gt": gt, "tmp": tmp_path}


def write_predictions(path: Path, gt: dict, *, drop_shark: bool = False) -> Path:
    preds = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
        for a in gt["annotations"]
        if not (drop_shark and a["category_id"] == 5)
    ]
    path.write_text(json.dumps(preds))
    return path


def evaluate_args(dataset: dict, predictions: Path, *extra: str) -> list[str]:
    return [
        "evaluate", "--task", str(dataset["task"]), "--split", "test", "--predictions", str(predictions),
        "--data-root", str(dataset["data_root"]), *extra,
    ]  # fmt: skip


def test_help_runs_without_heavy_imports():
    code = (
        "import sys, runpy; sys.argv = ['odinw_bench', 'evaluate', '--help']\n"
        "try:\n    runpy.run_module('odinw_bench', run_name='__main__')\n"
        "except SystemExit as e:\n    assert e.code == 0, e.code\n"
        "assert 'torch' not in sys.modules and 'pycocotools' not in sys.modules, 'heavy import at start-up'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "--predictions" in out.stdout and "examples:" in out.stdout


def test_table_for_perfect_and_partial_predictions(dataset, capsys):
    preds = write_predictions(dataset["tmp"] / "preds.json", dataset["gt"], drop_shark=True)
    assert main(evaluate_args(dataset, preds)) == 0
    out = capsys.readouterr().out
    assert "Tiny / test: 2 images, 2 predictions" in out
    rows = dict(line.split() for line in out.splitlines() if len(line.split()) == 2)
    assert rows["fish"] == "100.0" and rows["shark"] == "0.0"  # the task's names, not the file's
    assert rows["AP"] == "50.0" and rows["APs"] == "-"  # no small boxes: undefined, not -100


def test_json_and_output_file(dataset, capsys):
    preds = write_predictions(dataset["tmp"] / "preds.json", dataset["gt"])
    out_file = dataset["tmp"] / "scores" / "tiny.json"
    assert main(evaluate_args(dataset, preds, "--json", "--output", str(out_file))) == 0
    printed = json.loads(capsys.readouterr().out)
    written = json.loads(out_file.read_text())
    assert printed == written
    assert written["task"] == "tiny" and written["split"] == "test"
    assert written["metrics"]["AP"] == pytest.approx(1.0) and written["metrics"]["APs"] is None
    assert written["per_category"] == {"fish": pytest.approx(1.0), "shark": pytest.approx(1.0)}


def test_unknown_ids_exit_2(dataset, capsys):
    preds = json.loads(write_predictions(dataset["tmp"] / "preds.json", dataset["gt"]).read_text())
    preds.append({"image_id": 77, "category_id": 2, "bbox": [0, 0, 5, 5], "score": 0.3})
    path = dataset["tmp"] / "bad.json"
    path.write_text(json.dumps(preds))
    assert main(evaluate_args(dataset, path)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "bad.json" in err and "image id(s) not in the ground truth: 77" in err
    assert len(err.strip().splitlines()) == 1


def test_bad_split_and_malformed_file_exit_2(dataset, capsys, tmp_path):
    preds = write_predictions(tmp_path / "preds.json", dataset["gt"])
    args = evaluate_args(dataset, preds)
    args[args.index("--split") + 1] = "train"
    assert main(args) == 2
    assert "no split 'train'" in capsys.readouterr().err
    broken = tmp_path / "broken.json"
    broken.write_text("[{")
    assert main(evaluate_args(dataset, broken)) == 2
    assert "malformed JSON" in capsys.readouterr().err


def _run_record(model: str, ap: float) -> dict:
    """A zero-shot run record of ``model`` on the tiny task (as ``run`` would write it)."""
    from odinw_bench.results.records import make_record

    return make_record(
        run_id=f"run-{model}", task={"name": "tiny", "version": 1, "sha256": None, "display_name": "Tiny"},
        split="test", prompt={"variant": "default", "captions": ["fish. shark"]}, shots=0, seed=3,
        regime="zero-shot", model={"name": model, "checkpoint": "x.pth", "checkpoint_sha256": "ab" * 32},
        sample={"sampler": "none", "train_ids": [], "train_ids_hash": None, "train_count": 0, "val_ids": None,
                "val_ids_hash": None, "val_count": None, "shortfall": {}},
        config={}, metrics={"AP": ap})


def test_model_name_writes_a_run_record_that_report_tables_beside_runs(dataset, capsys):
    import csv
    import hashlib

    from odinw_bench.results.records import read_record, record_path, write_record

    results, preds = dataset["tmp"] / "results", dataset["tmp"] / "preds.json"
    write_predictions(preds, dataset["gt"], drop_shark=True)
    assert main(evaluate_args(dataset, preds, "--model-name", "my-detector", "--results", str(results))) == 0
    err = capsys.readouterr().err
    (path,) = [p for p in results.glob("runs/**/*.json") if not p.stem.endswith("_predictions")]
    record = read_record(path)
    assert str(path) in err
    assert record["model"] == {"name": "my-detector", "checkpoint": None, "checkpoint_sha256": None}
    assert record["source"] == {"kind": "predictions_file", "path": str(preds.resolve()),
                                "sha256": hashlib.sha256(preds.read_bytes()).hexdigest()}
    assert (record["regime"], record["shots"], record["seed"], record["split"]) == ("zero-shot", 0, 3, "test")
    assert record["metrics"]["AP-fish"] == pytest.approx(1.0) and record["metrics"]["AP-shark"] == 0.0
    assert json.loads(path.with_name(path.stem + "_predictions.json").read_text()) == json.loads(preds.read_text())

    # Corrected predictions replace the record of the same cell and seed (a duplicate would be refused by report).
    write_predictions(preds, dataset["gt"])
    assert main(evaluate_args(dataset, preds, "--model-name", "my-detector", "--results", str(results))) == 0
    assert "replaced" in capsys.readouterr().err
    (again,) = [p for p in results.glob("runs/**/*.json") if not p.stem.endswith("_predictions")]
    assert again == path and read_record(path)["metrics"]["AP"] == pytest.approx(1.0)
    with open(results / "leaderboard.csv", newline="") as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["model"] == "my-detector" and row["sampler"] == "external"

    run = _run_record("glip-t", 0.25)
    write_record(record_path(results, run), run)
    out = dataset["tmp"] / "report" / "tiny"
    assert main(["report", str(results / "runs"), "--out", str(out), "--formats", "csv"]) == 0
    table = capsys.readouterr().out
    lines = {name: next(line for line in table.splitlines() if name in line) for name in ("my-detector", "glip-t")}
    assert "100.0" in lines["my-detector"] and "25.0" in lines["glip-t"]


@pytest.mark.parametrize(("extra", "message"), [
    (["--regime", "full"], "only with --model-name"),
    (["--model-name", "m", "--shots", "5", "--regime", "zero-shot"], "zero-shot means shots 0"),
    (["--model-name", "m", "--shots", "x"], "--shots"),
    (["--model-name", "m", "--seed", "x"], "--seed"),
    (["--model-name", "m", "--regime", "lineer-probe"], "linear-probe"),
    (["--model-name", "m", "--prompt", "odinw_35"], "no prompt variant"),
])
def test_bad_record_options_exit_2_and_write_nothing(dataset, capsys, extra, message):
    preds = write_predictions(dataset["tmp"] / "preds.json", dataset["gt"])
    results = dataset["tmp"] / "results"
    assert main(evaluate_args(dataset, preds, "--results", str(results), *extra)) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not results.exists()
