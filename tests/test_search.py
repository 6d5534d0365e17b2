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


def test_a_sweep_searches_weight_decay_for_the_parameter_efficient_regimes(tmp_path):
    """glip-micro through ``sweep``: each cell runs its weight-decay trials (x1, x0), then the final run; a rerun of
    the sweep finds every cell done without running a trial again."""
    out = tmp_path / "out"
    argv = ["sweep", "--tasks", "demo", "--shots", "1", "--seeds", "3", "--regimes", "lora,deep-prompt",
            "--models", "glip-micro", "--data-root", str(tmp_path / "data"), "--output", str(out), "--no-progress",
            "--search", "wd", "--search-epochs", "1", "schedule.max_epochs=1", "trainer.limit_train_batches=2",
            "data.batch_size=2", "data.num_workers=0"]
    assert main(argv) == 0
    records = {r["regime"]: r for r in _records(out)}
    assert set(records) == {"lora", "deep-prompt"}
    for regime, record in records.items():
        search = record["search"]
        wds = [t["weight_decay"] for t in search["trials"]]
        assert wds[1] == 0 and wds[0] > 0 and len(wds) == 2  # x1 then x0; no lr grid, no refinement
        assert len({t["lr"] for t in search["trials"]}) == 1
        assert search["chosen_val_AP"] == max(t["val_AP"] for t in search["trials"])
        # The run's identity names the search, not the value it found (a sweep knows the id before searching).
        assert record["config"]["resolved"]["optim"]["weight_decay"] == "searched"
        assert 0 < record["params"]["trainable"] < record["params"]["total"] // 10
    with open(out / "leaderboard.csv", newline="") as handle:
        assert sorted(row["regime"] for row in csv.DictReader(handle)) == ["deep-prompt+search", "lora+search"]
    before = {p: p.stat().st_mtime_ns for p in (out / "search").rglob("*.json")}
    assert main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "search").rglob("*.json")} == before
