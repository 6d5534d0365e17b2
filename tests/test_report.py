"""Leaderboard aggregation: seed statistics, suite average, grid completeness, outputs and the CLI.

The fixture is 2 made-up tasks x 3 seeds x 2 regimes with AP values chosen so that every statistic can be
computed by hand (worked out in the comments of ``AP``).
"""

from __future__ import annotations

import math

import pytest
from scipy.stats import t as student_t

from odinw_bench.cli import main
from odinw_bench.errors import UserError
from odinw_bench.report import formats
from odinw_bench.report import grid as report_grid
from odinw_bench.results.records import make_run_id, record_path, write_record

SEEDS = (3, 30, 300)
# AP fractions per (regime, task), one per seed. Hand-computed statistics in AP points (x100):
#   full/alpha 30,33,36      mean 33  std sqrt((9+0+9)/2)=3
#   full/beta 50,60,70       mean 60  std sqrt((100+0+100)/2)=10
#   full suite per seed 40,46.5,53: mean 46.5, std sqrt((42.25+0+42.25)/2)=6.5, CI T3*6.5/sqrt(3)
#   prompt/alpha 20,20,26    mean 22  std sqrt((4+4+16)/2)=sqrt(12)
#   prompt/beta 10,40,40     mean 30  std sqrt((400+100+100)/2)=sqrt(300)
#   prompt suite per seed 15,30,33: mean 26, std sqrt((121+16+49)/2)=sqrt(93), CI T3*sqrt(93/3)
# T3 = Student's t quantile 0.975 with 2 degrees of freedom (3 seeds), from scipy.
AP = {
    ("full", "alpha"): (0.30, 0.33, 0.36),
    ("full", "beta"): (0.50, 0.60, 0.70),
    ("prompt", "alpha"): (0.20, 0.20, 0.26),
    ("prompt", "beta"): (0.10, 0.40, 0.40),
}
TASKS = ["alpha", "beta"]
FULL = ("m", "full", "1")
T3 = float(student_t.ppf(0.975, 2))
PROMPT = ("m", "prompt", "1")


def make_record(task, regime, seed, ap, *, version=1, split="test", prompt="default", status="ok", config=None):
    """A valid record for a made-up task (written by hand: no git or env probing)."""
    cfg = config or {}
    return {
        "schema_version": 1,
        "run_id": make_run_id(task, version, "m", None, regime, 1, seed, {**cfg, "split": split, "p": prompt}),
        "created_at": "2025-01-31T12:00:00+00:00",
        "duration_s": 1.0,
        "status": status,
        "error": None if status == "ok" else "RuntimeError: out of memory",
        "task": {"name": task, "version": version, "sha256": None, "display_name": task.capitalize()},
        "split": split,
        "prompt": {"variant": prompt, "captions": ["a. b"]},
        "shots": 1,
        "seed": seed,
        "regime": regime,
        "sample": {"sampler": "glip", "train_ids": [1, 2], "train_ids_hash": "x", "train_count": 2, "val_ids": None,
                   "val_ids_hash": None,
                   "val_count": None, "shortfall": {}},  # fmt: skip
        "model": {"name": "m", "checkpoint": None, "checkpoint_sha256": None},
        "config": cfg,
        "metrics": {"AP": ap, "AP50": min(1.0, ap + 0.2)} if status == "ok" else {},
        "params": {"trainable": 10, "total": 100},
        "git": None,
        "env": {},
        "timings": {},
    }


def grid(skip=()) -> list[dict]:
    """The full fixture, minus the (regime, task, seed) triples in ``skip``."""
    return [
        make_record(task, regime, seed, ap)
        for (regime, task), values in AP.items()
        for seed, ap in zip(SEEDS, values)
        if (regime, task, seed) not in skip
    ]


def test_seed_statistics_and_suite_average_match_hand_computation():
    rep = report_grid.build_report(grid(), tasks=TASKS, suite="duo")
    assert rep.rows == [PROMPT, FULL]  # regimes in protocol order, not alphabetical
    alpha, beta = rep.cells[(FULL, "alpha")], rep.cells[(FULL, "beta")]
    assert (alpha.mean, alpha.std) == pytest.approx((33.0, 3.0))
    assert (beta.mean, beta.std) == pytest.approx((60.0, 10.0))
    assert alpha.ci95 == pytest.approx(T3 * 3.0 / math.sqrt(3))
    assert alpha.seeds == SEEDS and alpha.status == "ok"
    suite = rep.suite_stats[FULL]
    assert (suite["mean"], suite["std"]) == pytest.approx((46.5, 6.5))
    assert suite["ci95"] == pytest.approx(T3 * 6.5 / math.sqrt(3))
    assert suite["n_tasks"] == 2 and suite["n_seeds"] == 3 and not suite["partial"]

    pt = rep.cells[(PROMPT, "alpha")], rep.cells[(PROMPT, "beta")]
    assert [c.mean for c in pt] == pytest.approx([22.0, 30.0])
    assert [c.std for c in pt] == pytest.approx([math.sqrt(12), math.sqrt(300)])
    suite = rep.suite_stats[PROMPT]
    assert (suite["mean"], suite["std"]) == pytest.approx((26.0, math.sqrt(93)))
    assert suite["ci95"] == pytest.approx(T3 * math.sqrt(93 / 3))
    assert not rep.problems


def test_text_table_shows_mean_pm_std_and_states_the_statistics():
    text = formats.format_table(report_grid.build_report(grid(), tasks=TASKS, suite="duo"))
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("model"))
    assert header.split() == ["model", "regime", "shots", "Alpha", "Beta", "duo"]
    full_line = next(line for line in lines if line.startswith("m ") and " full " in line)
    assert "33.0 ± 3.0" in full_line and "60.0 ± 10.0" in full_line and "46.5 ± 6.5" in full_line
    assert "ddof=1" in text and "Student's t" in text and "unweighted mean" in text
    assert "v1 split=test prompt=default: alpha, beta" in text


def test_single_seed_has_nan_std_and_shows_the_mean_alone():
    records = [make_record("alpha", "full", 3, 0.25)]
    rep = report_grid.build_report(records, tasks=["alpha"], seeds=[3])
    cell = rep.cells[(FULL, "alpha")]
    assert cell.mean == pytest.approx(25.0) and math.isnan(cell.std) and math.isnan(cell.ci95)
    _, body = formats.display_rows(rep)
    assert body[0][3] == "25.0"


def test_incomplete_grid_is_refused_with_every_missing_cell_listed():
    records = grid(skip={("prompt", "beta", 300)})
    records.append(make_record("beta", "prompt", 300, 0.0, status="failed"))
    with pytest.raises(UserError) as info:
        report_grid.build_report(records, tasks=["alpha", "beta", "gamma"])
    message = str(info.value)
    assert "m prompt 1-shot | beta: missing seeds 300 (failed: seeds 300); has 3,30" in message
    assert "m prompt 1-shot | gamma: no runs" in message
    assert "m full 1-shot | gamma: no runs" in message
    assert "3 cells" in message and "--allow-partial" in message


def test_fewer_seeds_than_requested_is_refused():
    with pytest.raises(UserError) as info:
        report_grid.build_report(grid(), tasks=TASKS, seeds=[3, 30, 300, 3000])
    assert str(info.value).count("missing seeds 3000") == 4


def test_allow_partial_marks_cells_and_the_suite_average():
    records = grid(skip={("prompt", "beta", 300)})
    rep = report_grid.build_report(records, tasks=["alpha", "beta", "gamma"], suite="trio", allow_partial=True)
    assert len(rep.problems) == 3
    beta = rep.cells[(PROMPT, "beta")]
    assert beta.status == "partial" and beta.mean == pytest.approx(25.0)  # (10 + 40) / 2 over the seeds present
    assert rep.cells[(PROMPT, "gamma")].status == "missing"
    suite = rep.suite_stats[PROMPT]
    assert suite["partial"] and suite["n_tasks"] == 2
    assert suite["mean"] == pytest.approx((22.0 + 25.0) / 2)
    assert math.isnan(suite["std"])  # alpha and beta no longer share the same seeds
    text = formats.format_table(rep)
    assert "25.0 ± 21.2*" in text and "(partial 2/3)" in text and "PARTIAL GRID" in text
    full_suite = rep.suite_stats[FULL]
    assert full_suite["partial"] and full_suite["mean"] == pytest.approx(46.5)  # gamma missing, alpha/beta whole
    wide = formats.wide_frame(rep)
    assert wide["partial"].tolist() == [True, True]
    assert wide["gamma_status"].tolist() == ["missing", "missing"]


def test_different_task_versions_are_never_merged():
    records = grid(skip={("full", "alpha", 300)})
    records.append(make_record("alpha", "full", 300, 0.90, version=2))
    with pytest.raises(UserError, match=r"m full 1-shot \| alpha: runs differ in task_version 1 / 2; not merged"):
        report_grid.build_report(records, tasks=TASKS)
    rep = report_grid.build_report(records, tasks=TASKS, allow_partial=True)
    cell = rep.cells[(FULL, "alpha")]
    assert cell.status == "mixed" and math.isnan(cell.mean)  # neither 33-ish nor pulled up by the v2 run
    assert rep.suite_stats[FULL]["mean"] == pytest.approx(60.0)  # beta only, flagged partial
    assert rep.suite_stats[FULL]["partial"]
    summary = formats.summary_frame(rep)
    assert summary.loc[(summary["regime"] == "full") & (summary["task"] == "alpha"), "status"].item() == "mixed"


@pytest.mark.parametrize(("key", "value"), [("split", "val"), ("prompt", "odinw_35")])
def test_different_splits_or_prompts_are_never_merged(key, value):
    records = grid(skip={("full", "beta", 3)})
    records.append(make_record("beta", "full", 3, 0.5, **{key: value}))
    with pytest.raises(UserError, match=f"beta: runs differ in {key}"):
        report_grid.build_report(records, tasks=TASKS)


def test_suite_prompt_variant_selects_runs_and_notes_the_rest():
    records = grid() + [make_record("beta", "full", s, 0.99, prompt="odinw_35") for s in SEEDS]
    rep = report_grid.build_report(records, tasks=TASKS, prompts={"alpha": "default", "beta": "default"})
    assert rep.cells[(FULL, "beta")].mean == pytest.approx(60.0)
    assert any("prompt variant" in note for note in rep.notes)
    rep35 = report_grid.build_report(records, tasks=["beta"], prompts={"beta": "odinw_35"}, allow_partial=True)
    assert rep35.cells[(FULL, "beta")].mean == pytest.approx(99.0)


def test_two_runs_for_one_seed_are_refused():
    records = grid() + [make_record("alpha", "full", 3, 0.1, config={"lr": 0.5})]
    with pytest.raises(UserError, match=r"m full 1-shot \| alpha seed 3"):
        report_grid.build_report(records, tasks=TASKS)


def test_unknown_metric_is_a_user_error():
    with pytest.raises(UserError, match="APxl"):
        report_grid.build_report(grid(), tasks=TASKS, metric="APxl")


def test_other_metric_is_aggregated():
    rep = report_grid.build_report(grid(), tasks=TASKS, metric="AP50")
    assert rep.cells[(FULL, "alpha")].mean == pytest.approx(53.0)  # AP + 20 points per seed


@pytest.mark.parametrize("trailing_slash", [True, False])
def test_write_report_files(tmp_path, trailing_slash):
    import pandas as pd

    rep = report_grid.build_report(grid(), tasks=TASKS, suite="duo")
    out = f"{tmp_path / 'board'}/" if trailing_slash else str(tmp_path / "board.csv")
    paths = formats.write_report(rep, out)
    if trailing_slash:
        assert paths["wide"] == tmp_path / "board" / "leaderboard.csv"
    else:
        assert paths == {"wide": tmp_path / "board.csv", "markdown": tmp_path / "board.md",
                         "latex": tmp_path / "board.tex", "long": tmp_path / "board_summary.csv",
                         "runs": tmp_path / "board_runs.csv", "sources": tmp_path / "board_sources.txt"}  # fmt: skip
    wide = pd.read_csv(paths["wide"])
    assert wide[["regime", "alpha_mean", "beta_mean", "duo_mean"]].values.tolist() == [
        ["prompt", pytest.approx(22.0), pytest.approx(30.0), pytest.approx(26.0)],
        ["full", pytest.approx(33.0), pytest.approx(60.0), pytest.approx(46.5)],
    ]
    assert wide["duo_std"].tolist() == pytest.approx([math.sqrt(93), 6.5])
    long = pd.read_csv(paths["long"])
    assert len(long) == 6 and set(long["task"]) == {"alpha", "beta", "duo"}
    assert long.loc[(long["task"] == "alpha") & (long["regime"] == "full"), "ci95"].item() == pytest.approx(
        T3 * 3 / math.sqrt(3)
    )
    runs = pd.read_csv(paths["runs"])
    assert len(runs) == 12 and runs["AP"].max() == pytest.approx(0.70)  # per-run file keeps record values
    md = paths["markdown"].read_text()
    assert "| model | regime | shots | Alpha | Beta | duo |" in md
    assert "| m | full | 1 | 33.0 ± 3.0 | 60.0 ± 10.0 | 46.5 ± 6.5 |" in md


def _write_records(folder, records):
    for record in records:
        write_record(record_path(folder, record), record)
    return folder / "runs"


def test_cli_report_prints_table_and_writes_files(tmp_path, capsys):
    runs = _write_records(tmp_path, grid())
    code = main(["report", str(runs), "--out", str(tmp_path / "lb"), "--seeds", "3,30,300"])
    out = capsys.readouterr().out
    assert code == 0
    assert "33.0 ± 3.0" in out and "46.5 ± 6.5" in out
    for name in ("lb.csv", "lb.md", "lb_summary.csv", "lb_runs.csv"):
        assert (tmp_path / name).is_file()


def test_cli_report_refuses_incomplete_grid_unless_allowed(tmp_path, capsys):
    runs = _write_records(tmp_path, grid(skip={("full", "beta", 30)}))
    assert main(["report", str(runs), "--out", str(tmp_path / "lb")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "m full 1-shot | beta: missing seeds 30" in err
    assert not (tmp_path / "lb.csv").exists()
    assert main(["report", str(runs), "--out", str(tmp_path / "lb"), "--allow-partial"]) == 0
    assert "PARTIAL GRID" in capsys.readouterr().out
    assert (tmp_path / "lb.csv").is_file()


def test_cli_report_bad_inputs_exit_2(tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "no such results" in capsys.readouterr().err
    runs = _write_records(tmp_path, grid())
    assert main(["report", str(runs), "--seeds", "3,x"]) == 2
    assert "--seeds" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "no run records" in capsys.readouterr().err


def test_a_model_pretrained_on_odinw_is_flagged_in_the_legend():
    from odinw_bench.report.formats import legend_lines

    records = []
    for model in ("gdino-b", "gdino-t"):
        for seed in SEEDS:
            record = make_record("aquarium", "full", seed, 0.3)
            record["model"]["name"] = model
            record["run_id"] = f"{model}-{seed}"
            records.append(record)
    lines = legend_lines(report_grid.build_report(records))
    flagged = [line for line in lines if line.startswith("NOT ZERO-SHOT")]
    assert len(flagged) == 1 and "gdino-b" in flagged[0]
