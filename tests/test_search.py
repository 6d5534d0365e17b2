"""``run --search lr[,wd]``: trials on val, the best values for the final run, all of it in the record.

On the pre-trained glip-nano, prompt tuning on the demo's Pantry task with a deliberately bad learning rate (100x
below GLIP's 0.05): the search must find a value whose val AP beats the default's, and the final run must use it.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from odinw_bench.cli import main
from odinw_bench.results.records import read_record

BAD_LR = ["optim.lr=5e-4", "schedule.max_epochs=3", "data.num_workers=0"]


def _run(out: Path, data: Path, *extra: str) -> int:
    return main(["run", "--task", "demo_pantry", "--shots", "1", "--model", "glip-nano", "--regime", "prompt",
                 "--data-root", str(data), "--output", str(out), "--no-progress", "--recipe",
                 "configs/glip_nano_demo.yaml", *extra, *BAD_LR])


def _records(folder: Path) -> list[dict]:
    return [read_record(p) for p in sorted(folder.glob("runs/**/*.json")) if not p.stem.endswith("_predictions")]


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    assert _run(root / "out", root / "data", "--search", "lr", "--search-epochs", "2") == 0
    return root


def test_the_search_beats_a_bad_default_and_the_final_run_uses_it(searched):
    (record,) = _records(searched / "out")
    search = record["search"]
    default = search["trials"][0]
    assert default["lr"] == pytest.approx(5e-4)  # the recipe's value is the first trial (it wins ties)
    assert search["chosen_val_AP"] > default["val_AP"] + 0.05
    assert search["chosen"]["lr"] > 5e-4 and len(search["trials"]) == 7  # 5 coarse + 2 refined
    assert search["chosen_val_AP"] == max(t["val_AP"] for t in search["trials"])
    assert record["config"]["search"]["params"] == ["lr"]
    trials = _records(next((searched / "out" / "search").iterdir()))
    assert {t["run_id"] for t in trials} == {t["run_id"] for t in search["trials"]}
    assert all(t["config"]["resolved"]["schedule"]["max_epochs"] == 2 for t in trials)
    assert not list((searched / "out" / "search").rglob("*.ckpt"))  # trials keep their records, not their weights
    with open(searched / "out" / "leaderboard.csv", newline="") as handle:
        (row,) = list(csv.DictReader(handle))  # the trials are not in the main leaderboard
    assert row["regime"] == "prompt+search" and row["run_id"] == record["run_id"]


def test_a_rerun_reuses_the_trials_and_names_the_same_run(searched):
    before = {p: p.stat().st_mtime_ns for p in (searched / "out" / "search").rglob("*.json")}
    (first,) = _records(searched / "out")
    assert _run(searched / "out", searched / "data", "--search", "lr", "--search-epochs", "2") == 0
    after = {p: p.stat().st_mtime_ns for p in (searched / "out" / "search").rglob("*.json")}
    assert after == before  # no trial ran again
    (second,) = _records(searched / "out")
    assert second["run_id"] == first["run_id"] and second["search"]["chosen"] == first["search"]["chosen"]


@pytest.mark.parametrize(("extra", "message"), [
    (["--search", "momentum"], "cannot search momentum"),
    (["--search", "lr", "--search-epochs", "0"], "whole number >= 1"),
])
def test_bad_search_options_are_one_line_exit_2(tmp_path, capsys, extra, message):
    assert _run(tmp_path / "out", tmp_path / "data", *extra) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_zero_shot_has_nothing_to_search(tmp_path, capsys):
    assert main(["run", "--task", "demo", "--shots", "0", "--model", "glip-micro", "--search", "lr",
                 "--output", str(tmp_path / "out")]) == 2
    assert "nothing to search" in capsys.readouterr().err
