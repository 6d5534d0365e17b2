"""The leaderboard CSV: concurrent appends, replacing a rerun's row, torn lines, foreign headers."""

from __future__ import annotations

import copy
import csv
import multiprocessing

import pytest
from test_results import make_test_record

from odinw_bench.errors import UserError
from odinw_bench.results import leaderboard, records


def _append_many(csv_path: str, worker: int, count: int, barrier) -> None:
    barrier.wait(timeout=60)  # start together, so the first rows and the header really race
    for i in range(count):
        run_id = f"w{worker:02d}r{i:03d}"
        leaderboard.append_leaderboard_row(csv_path, make_test_record(run_id=run_id, seed=i, ap=(worker + 1) / 100))


def test_concurrent_appends_give_exactly_one_header_and_all_rows(tmp_path):
    import pandas as pd

    csv_path = tmp_path / "leaderboard.csv"
    ctx = multiprocessing.get_context("spawn")  # no fork of a possibly multi-threaded pytest process
    barrier = ctx.Barrier(8)
    procs = [ctx.Process(target=_append_many, args=(str(csv_path), w, 50, barrier)) for w in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * 8

    lines = csv_path.read_text().splitlines()
    assert lines.count(",".join(leaderboard.LEADERBOARD_COLUMNS)) == 1 and lines[0].startswith("run_id,")
    assert len(lines) == 401
    rows = list(csv.reader(lines))
    assert all(len(r) == len(leaderboard.LEADERBOARD_COLUMNS) for r in rows)
    frame = pd.read_csv(csv_path)
    assert len(frame) == 400 and frame["run_id"].is_unique
    assert list(frame.columns) == list(leaderboard.LEADERBOARD_COLUMNS)
    per_worker = frame.groupby(frame["run_id"].str[:3])["AP"].agg(["count", "first"])
    assert per_worker["count"].tolist() == [50] * 8
    assert per_worker["first"].tolist() == pytest.approx([(w + 1) / 100 for w in range(8)])


def test_same_run_id_replaces_its_row(tmp_path):
    csv_path = tmp_path / "lb.csv"
    leaderboard.append_leaderboard_row(csv_path, make_test_record(run_id="aaa", ap=0.1))
    leaderboard.append_leaderboard_row(csv_path, make_test_record(run_id="bbb", ap=0.2))
    leaderboard.append_leaderboard_row(csv_path, make_test_record(run_id="aaa", ap=0.3))
    rows = list(csv.DictReader(csv_path.open()))
    assert [(r["run_id"], float(r["AP"])) for r in rows] == [("aaa", 0.3), ("bbb", 0.2)]
    assert rows[0]["val_AP"] == "0.4" and rows[0]["APs"] == ""  # None -> empty cell
    assert rows[0]["trainable_params"] == "1024" and rows[0]["git_dirty"] == "False"


def test_torn_last_line_is_dropped_not_extended(tmp_path):
    csv_path = tmp_path / "lb.csv"
    leaderboard.append_leaderboard_row(csv_path, make_test_record(run_id="aaa"))
    with csv_path.open("a") as fh:
        fh.write("zzz,ok,aquar")  # a crash in the middle of a write
    leaderboard.append_leaderboard_row(csv_path, make_test_record(run_id="bbb"))
    assert [r["run_id"] for r in csv.DictReader(csv_path.open())] == ["aaa", "bbb"]


def test_leaderboard_with_other_columns_is_refused(tmp_path):
    csv_path = tmp_path / "lb.csv"
    csv_path.write_text("run_id,AP\nx,0.1\n")
    with pytest.raises(UserError) as info:
        leaderboard.append_leaderboard_row(csv_path, make_test_record())
    assert info.value.path == str(csv_path) and info.value.field == "header"
    assert csv_path.read_text() == "run_id,AP\nx,0.1\n"


def test_record_is_not_mutated_by_writers(tmp_path):
    record = make_test_record()
    snapshot = copy.deepcopy(record)
    records.write_record(tmp_path / "r.json", record)
    leaderboard.append_leaderboard_row(tmp_path / "lb.csv", record)
    assert record == snapshot


def test_leaderboard_row_flattens_a_record_in_column_order():
    record = make_test_record(run_id="abc", git=None)
    row = leaderboard.leaderboard_row(record)
    assert tuple(row) == leaderboard.LEADERBOARD_COLUMNS
    assert (row["task"], row["model"], row["prompt"], row["sampler"]) == ("aquarium", "glip_tiny", "default", "glip")
    assert row["AP"] == 0.42 and row["val_AP"] == 0.4 and row["AP75"] is None
    assert row["git_commit"] is None and row["git_dirty"] is None
