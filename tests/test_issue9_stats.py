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
