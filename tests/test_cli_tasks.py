"""The ``tasks`` and ``validate`` commands, through ``odinw_bench.cli.main`` and once as a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_tasks import task_dict, write_odinw_folder, write_task

from odinw_bench.cli import main
from odinw_bench.tasks import registry

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    for name in (registry.TASKS_DIR_ENV, registry.DATA_ROOT_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # the default data root DATASET/odinw is then empty


@pytest.fixture
def fruit(tmp_path) -> tuple[Path, Path]:
    """(task YAML, data root) of a small ODinW-style custom task."""
    write_odinw_folder(tmp_path / "data")
    return write_task(tmp_path, task_dict()), tmp_path / "data"


def test_tasks_json_lists_odinw13(capsys):
    assert main(["tasks", "--suite", "odinw13", "--json"]) == 0
    entries = json.loads(capsys.readouterr().out)
    assert len(entries) == 13 and entries[1]["name"] == "aquarium"
    aquarium = entries[1]
    assert aquarium["display_name"] == "Aquarium" and aquarium["num_categories"] == 7
    assert aquarium["categories"][:2] == ["fish", "jellyfish"] and aquarium["prompt_variant"] is None
    assert aquarium["prompt_variants"] == ["odinw_35"] and aquarium["data_present"] is False
    assert aquarium["splits"] == {"train": None, "val": None, "test": None}


def test_tasks_json_marks_the_suite_prompt_variant(capsys):
    assert main(["tasks", "--suite", "odinw35", "--json"]) == 0
    entries = json.loads(capsys.readouterr().out)
    assert len(entries) == 35
    assert {e["name"] for e in entries if e["prompt_variant"] == "odinw_35"} == {
        "aquarium", "cottontail_rabbits", "egohands", "north_america_mushrooms", "packages", "pothole"
    }


def test_tasks_counts_images_and_boxes_where_data_is_present(fruit, capsys):
    task_yaml, data_root = fruit
    assert main(["tasks", "--suite", f"{task_yaml},raccoon", "--data-root", str(data_root), "--json"]) == 0
    fruit_entry, raccoon = json.loads(capsys.readouterr().out)
    assert fruit_entry["data_present"] and fruit_entry["data_root"] == str(data_root)
    assert fruit_entry["splits"] == {s: {"images": 2, "boxes": 3} for s in ("train", "val", "test")}
    assert not raccoon["data_present"] and raccoon["splits"]["train"] is None

    assert main(["tasks", "--suite", str(task_yaml), "--data-root", str(data_root)]) == 0
    out = capsys.readouterr().out
    assert "fruit" in out and "apple, banana" in out
    assert "train: 2 images, 3 boxes | val: 2 images, 3 boxes | test: 2 images, 3 boxes" in out


def test_tasks_table_lists_every_task_and_the_suites(capsys):
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    for name in ("aquarium", "pascal_voc", "demo", "website_screenshots"):
        assert f"\n{name} " in out
    assert "odinw13: 13 tasks" in out and "odinw35: 35 tasks, prompt variant odinw_35" in out
    assert "no data found" in out


def test_validate_passes(fruit, capsys):
    task_yaml, data_root = fruit
    assert main(["validate", "--task", str(task_yaml), "--data-root", str(data_root)]) == 0
    out = capsys.readouterr().out
    assert "✓ train: annotation JSON: 2 images, 3 boxes" in out
    assert "⚠ val: few-shot files" not in out  # only train has a few-shot pattern
    assert "⚠ train: few-shot files: 1/12 present" in out
    assert "✗" not in out and out.rstrip().endswith("all checks passed")


def test_validate_fails_with_category_differences(tmp_path, capsys):
    write_odinw_folder(tmp_path / "data", json_categories=[(1, "apple"), (3, "cherry")])
    task_yaml = write_task(tmp_path, task_dict())
    assert main(["validate", "--task", str(task_yaml), "--data-root", str(tmp_path / "data")]) == 2
    captured = capsys.readouterr()
    assert "✗ train: categories: missing 2 'banana'; extra 3 'cherry'" in captured.out
    assert "✗ test: categories" in captured.out and "all checks passed" not in captured.out
    assert captured.err.startswith("error: fruit: train: categories: missing 2 'banana'; extra 3 'cherry'")
    assert "more failed checks" in captured.err


def test_validate_missing_data_root_names_the_download_command(tmp_path, capsys):
    assert main(["validate", "--task", "aquarium", "--data-root", str(tmp_path / "odinw")]) == 2
    err = capsys.readouterr().err
    assert f"python -m odinw_bench download --task aquarium --data-root {tmp_path / 'odinw'}" in err


def test_validate_default_data_root_is_dataset_odinw(capsys):
    assert main(["validate", "--task", "pothole"]) == 2
    assert "download --task pothole --data-root DATASET/odinw" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["validate", "--task", "aquarim"], "did you mean: aquarium"),
        (["tasks", "--suite", "odinw31"], "did you mean: odinw35, odinw13?"),
        (["validate", "--task", "aquarium", "--images", "-1"], "--images"),
    ],
)
def test_bad_input_exits_2_with_one_line(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err


def test_validate_malformed_json_gives_line_and_column(fruit, capsys):
    task_yaml, data_root = fruit
    (data_root / "Fruit/v1/test/annotations_without_background.json").write_text('{"images": [}')
    assert main(["validate", "--task", str(task_yaml), "--data-root", str(data_root)]) == 2
    assert "malformed JSON at line 1, column 13" in capsys.readouterr().err


def test_validate_demo_generates_its_data(tmp_path, capsys):
    assert main(["validate", "--task", "demo", "--data-root", str(tmp_path / "cache")]) == 0
    out = capsys.readouterr().out
    assert "✓ train: categories: 4 ids match" in out and "✓ train: few-shot files: 12/12 present" in out
    assert "✓ prompt (default): 'apple. banana. cherry. lemon'" in out


@pytest.mark.parametrize("command", ["tasks", "validate"])
def test_help_has_examples(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert f"python -m odinw_bench {command} " in capsys.readouterr().out


def test_tasks_runs_as_a_process(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in (registry.TASKS_DIR_ENV, registry.DATA_ROOT_ENV)}
    result = subprocess.run(
        [sys.executable, "-m", "odinw_bench", "tasks", "--suite", "odinw13"],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["name", "display", "name", "#cat", "categories"]
    assert sum(1 for line in lines if line.split()[:1] and line.split()[0] in {"aquarium", "pistols", "vehicles"}) == 3
