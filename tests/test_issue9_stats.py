"""Honest statistics and comparisons (issue 9, items 11-15): Student's t intervals, zero-shot computed once,
the zero-shot split, published few-shot numbers and plots with several models."""

from __future__ import annotations

import math

import pytest
from scipy.stats import t as student_t

from odinw_bench.report import formats, grid

SEEDS = (3, 30, 300)


def record(task, regime, shots, seed, ap, *, model="glip-t", split="test", prompt="default", run_id=None):
    """A valid hand-written record."""
    return {
        "schema_version": 1,
        "run_id": run_id or f"{model}-{task}-{regime}-k{shots}-s{seed}-{split}",
        "created_at": "2025-01-31T12:00:00+00:00",
        "duration_s": 1.0,
        "status": "ok",
        "error": None,
        "task": {"name": task, "version": 1, "sha256": None, "display_name": task.capitalize()},
        "split": split,
        "prompt": {"variant": prompt, "captions": ["a. b"]},
        "shots": shots,
        "seed": seed,
        "regime": regime,
        "sample": {"sampler": "glip", "train_ids": [1], "train_ids_hash": "x", "train_count": 1, "val_ids": None,
                   "val_ids_hash": None, "val_count": None, "shortfall": {}},  # fmt: skip
        "model": {"name": model, "checkpoint": None, "checkpoint_sha256": None},
        "config": {},
        "metrics": {"AP": ap},
        "params": {"trainable": 1, "total": 2},
        "git": None,
        "env": {},
        "timings": {},
    }


# ---- Item 11: Student's t confidence intervals ----


def test_ci95_uses_students_t_with_n_minus_1_degrees_of_freedom(tmp_path):
    values = (0.30, 0.33, 0.39)  # AP points 30, 33, 39
    rep = grid.build_report([record("alpha", "full", 1, s, v) for s, v in zip(SEEDS, values)], tasks=["alpha"])
    cell = rep.cells[(("glip-t", "full", "1"), "alpha")]
    points = [v * 100 for v in values]
    mean = sum(points) / 3
    std = math.sqrt(sum((p - mean) ** 2 for p in points) / 2)
    expected = float(student_t.ppf(0.975, 2)) * std / math.sqrt(3)
    assert cell.std == pytest.approx(std)
    assert cell.ci95 == pytest.approx(expected)
    assert cell.ci95 > 2 * 1.96 * std / math.sqrt(3)  # the normal approximation was 2.2x too narrow
    assert rep.suite_stats[("glip-t", "full", "1")]["ci95"] == pytest.approx(expected)  # one task: same interval

    text = formats.format_table(rep)
    assert "Student's t" in text and "n-1 degrees of freedom" in text and "1.96" not in text
    written = formats.write_report(rep, tmp_path / "board")
    for key in ("markdown", "latex"):
        footer = written[key].read_text().rstrip().splitlines()[-6:]
        assert any("Student's t" in line for line in footer), key


# ---- Item 12: zero-shot is one result, not one per seed ----

ZERO = ("glip-t", "zero-shot", "0")
FULL = ("glip-t", "full", "1")


def _full_and_zero_shot(zero_shot_records):
    full = [record(t, "full", 1, s, 0.5) for t in ("alpha", "beta") for s in SEEDS]
    return full + zero_shot_records


def test_zero_shot_row_has_one_run_per_task_and_reads_without_plus_minus():
    records = _full_and_zero_shot([record("alpha", "zero-shot", 0, 3, 0.20, run_id="zs-alpha"),
                                   record("beta", "zero-shot", 0, 3, 0.40, run_id="zs-beta")])  # fmt: skip
    rep = grid.build_report(records, tasks=["alpha", "beta"], suite="duo", seeds=list(SEEDS))
    assert not rep.problems  # one zero-shot record is complete, though the other rows have 3 seeds
    cell = rep.cells[(ZERO, "alpha")]
    assert cell.status == "ok" and cell.mean == pytest.approx(20.0) and math.isnan(cell.std)
    assert math.isnan(rep.suite_stats[ZERO]["std"]) and rep.suite_stats[ZERO]["mean"] == pytest.approx(30.0)
    _, body = formats.display_rows(rep)
    zero_row = next(r for r in body if r[1] == "zero-shot")
    assert zero_row[3:] == ["20.0", "40.0", "30.0"] and not any("±" in c for c in zero_row)
    assert any("±" in c for c in next(r for r in body if r[1] == "full")[3:])
    assert "zero-shot rows: one evaluation" in formats.format_table(rep)


def test_older_per_seed_zero_shot_records_still_read_as_one_result():
    # Older harness versions ran zero-shot once per seed (three run ids); a newer run adds a seedless one under
    # seed 3, and one run may be recorded under two seeds. None of this is refused, and none shows a fake ± 0.0.
    older = [record(t, "zero-shot", 0, s, ap) for t, ap in (("alpha", 0.2), ("beta", 0.4)) for s in SEEDS]
    newer = [record("alpha", "zero-shot", 0, s, 0.2, run_id="zs-new") for s in (3, 30)]
    rep = grid.build_report(_full_and_zero_shot(older + newer), tasks=["alpha", "beta"])
    cell = rep.cells[(ZERO, "alpha")]
    assert cell.mean == pytest.approx(20.0) and math.isnan(cell.std) and math.isnan(cell.ci95)
    assert sorted(cell.run_ids) == sorted(["zs-new", *(f"glip-t-alpha-zero-shot-k0-s{s}-test" for s in SEEDS)])
    assert not rep.problems and not any("differ" in n for n in rep.notes)
    assert formats.display_rows(rep)[1][0][3] == "20.0"


def test_zero_shot_runs_that_disagree_are_averaged_and_named_in_the_notes():
    records = [record("alpha", "zero-shot", 0, s, ap) for s, ap in zip(SEEDS, (0.20, 0.20, 0.23))]
    rep = grid.build_report(records, tasks=["alpha"])
    assert rep.cells[(ZERO, "alpha")].mean == pytest.approx(21.0)
    (note,) = [n for n in rep.notes if "differ" in n]
    assert "glip-t zero-shot 0-shot | alpha" in note and "3.00 AP points" in note


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from odinw_bench.data.synthetic import ensure_demo_data

    root = tmp_path_factory.mktemp("data")
    ensure_demo_data(root)
    return root


def _plan(out, data_root, *extra):
    from odinw_bench.cli import build_parser
    from odinw_bench.commands.sweep import grid_spec
    from odinw_bench.runs.sweep import plan_sweep

    argv = ["sweep", "--models", "glip-micro", "--data-root", str(data_root), "--output", str(out), "--tasks",
            "demo", *extra]  # fmt: skip
    return plan_sweep(grid_spec(build_parser().parse_args(argv)))


def test_sweep_plans_one_zero_shot_cell_whatever_the_seeds(tmp_path, data_root):
    from odinw_bench.results.records import make_record, write_record
    from odinw_bench.runs.sweep import classify

    cells = _plan(tmp_path, data_root, "--shots", "0,1", "--seeds", "3,30,300", "--regimes", "full")
    zero = [c for c in cells if c.regime == "zero-shot"]
    assert len(zero) == 1 and zero[0].seed == 3
    assert sorted(c.seed for c in cells if c.regime == "full") == [3, 30, 300]
    # The zero-shot run id does not depend on the seed: planning with other seeds names the same run ...
    (other,) = [c for c in _plan(tmp_path, data_root, "--shots", "0", "--seeds", "30")]
    assert other.run_id == zero[0].run_id and other.seed == 30
    # ... so a zero-shot record written under seed 30 makes the seed-3 cell done: it is not run again.
    sample = {"sampler": "none", "train_ids": [], "train_ids_hash": None, "train_count": 0, "val_ids": None,
              "val_ids_hash": None, "val_count": None, "shortfall": {}}  # fmt: skip
    rec = make_record(run_id=other.run_id, task={"name": "demo", "version": 1, "sha256": None, "display_name": "D"},
                      split="val", prompt={"variant": "default", "captions": []}, shots=0, seed=30,
                      regime="zero-shot", sample=sample, model={"name": "glip-micro", "checkpoint": None,
                      "checkpoint_sha256": None}, config={}, metrics={"AP": 0.1})  # fmt: skip
    write_record(other.record_path, rec)
    classify(cells)
    assert zero[0].state == "done" and not zero[0].record_path.exists()
    assert {c.state for c in cells if c.regime == "full"} == {"left"}
    # Training runs keep one id per seed.
    full_ids = {c.run_id for c in cells if c.regime == "full"}
    assert len(full_ids) == 3


# ---- Item 13: zero-shot runs score the task's zero_shot_split unless --split says otherwise ----


def _split_of(data_root, *argv):
    from odinw_bench.runs.arguments import parse_run_args
    from odinw_bench.runs.request import requests_from_args

    args = parse_run_args(["--model", "glip-micro", "--data-root", str(data_root), *argv])
    return {req.split for req in requests_from_args(args)}


def test_zero_shot_split_comes_from_the_task_and_split_overrides_it(tmp_path, data_root):
    from pathlib import Path

    assert _split_of(data_root, "--task", "demo", "--shots", "0") == {"val"}  # demo.yaml: zero_shot_split: val
    assert _split_of(data_root, "--task", "demo", "--shots", "0", "--split", "test") == {"test"}
    assert _split_of(data_root, "--task", "demo", "--shots", "1") == {"test"}  # fine-tuning reports test_split
    assert _split_of(data_root, "--task", "demo", "--shots", "1", "--split", "val") == {"val"}
    # The field is read, not a fixed 'val': a task whose zero_shot_split is its train split scores train.
    text = (Path(__file__).parents[1] / "tasks" / "demo.yaml").read_text()
    assert "zero_shot_split: val" in text
    custom = tmp_path / "demo_zs.yaml"
    custom.write_text(text.replace("name: demo", "name: demo_zs").replace("zero_shot_split: val",
                                                                          "zero_shot_split: train"))
    assert _split_of(data_root, "--task", str(custom), "--shots", "0") == {"train"}

