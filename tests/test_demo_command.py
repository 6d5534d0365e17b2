"""``python -m odinw_bench demo``: its plan of runs, the recipe they use, the table it prints and saves, resumption,
``--full``'s grid, the equivalent commands its help text names, bad input, and one end-to-end smoke run.

Most tests run a two-task stand-in of the demo suite (``demo`` and a copy, ``demo_b``, in a temporary task folder)
with the model runs replaced by a fake that writes a record with the run's identity and a known AP: the plan,
the skipping and the table are the demo's own code, and they take seconds.
"""

from __future__ import annotations

import csv
import shlex
from pathlib import Path

import pytest

from odinw_bench.cli import build_parser, main
from odinw_bench.commands import demo
from odinw_bench.commands.sweep import grid_spec
from odinw_bench.errors import UserError
from odinw_bench.results.records import (
    make_record,
    read_record,
    record_path,
    write_record,
)
from odinw_bench.runs import runner
from odinw_bench.runs.arguments import parse_run_args
from odinw_bench.runs.request import requests_from_args
from odinw_bench.runs.sweep import plan_sweep
from odinw_bench.tasks.registry import task_sha256

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_ROWS = [("zero-shot", "0"), ("linear-probe", "1"), ("linear-probe", "3"), ("prompt", "1"), ("prompt", "3"),
             ("full", "1"), ("full", "3")]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    from odinw_bench.data.synthetic import ensure_demo_data

    root = tmp_path_factory.mktemp("data")
    ensure_demo_data(root)
    return root


@pytest.fixture
def demo_suite(tmp_path, monkeypatch) -> list[str]:
    """A task folder whose ``demo_suite`` is the demo task and a renamed copy of it."""
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    text = (REPO_ROOT / "tasks" / "demo.yaml").read_text()
    (tasks / "demo.yaml").write_text(text)
    copy = text.replace("name: demo\n", "name: demo_b\n").replace('display_name: "Demo"', 'display_name: "Demo B"')
    assert copy != text
    (tasks / "demo_b.yaml").write_text(copy)
    (tasks / "suites.yaml").write_text("demo_suite:\n  tasks: [demo, demo_b]\n")
    monkeypatch.setenv("ODINW_BENCH_TASKS", str(tasks))
    return ["demo", "demo_b"]


def fake_ap(task: str, regime: str, shots) -> float:
    """A distinct AP per cell, so that the table's columns and average can be checked."""
    rank = [r for r, _ in DEMO_ROWS].index(regime) + (1 if str(shots) == "3" else 0)
    return 0.1 * rank + (0.05 if task == "demo_b" else 0.0) + 0.01


@pytest.fixture
def fake_runs(monkeypatch) -> list[tuple]:
    """Replace a model run by a record with the run's identity and :func:`fake_ap`; returns the runs made."""
    from odinw_bench.runs.identity import run_identity

    made = []

    def fake_run_request(req, cache=None):
        ident = run_identity(req)
        record = make_record(
            run_id=ident.run_id, split=req.split, shots=req.shots, seed=req.seed, regime=req.regime.name,
            task={"name": req.task.name, "version": req.task.version, "sha256": task_sha256(req.task),
                  "display_name": req.task.display_name},
            prompt={"variant": req.prompt_variant or "default", "captions": []},
            sample={"sampler": "prepared", "train_ids": [], "train_ids_hash": None, "train_count": 0,
                    "val_ids": None, "val_ids_hash": None, "val_count": None, "shortfall": {}},
            model=ident.model, config=dict(ident.identity),
            metrics={"AP": fake_ap(req.task.name, req.regime.name, req.shots)})
        path = write_record(record_path(req.output, record), record)
        made.append((req.task.name, req.regime.name, str(req.shots), req.seed))
        return runner.RunOutcome(record, path)

    monkeypatch.setattr(runner, "run_request", fake_run_request)
    return made


def demo_args(*argv: str):
    return build_parser().parse_args(["demo", *argv])


def requests_of(cell):
    (req,) = requests_from_args(parse_run_args(cell.argv), check_data=False)
    return req


def test_the_default_demo_is_zero_shot_then_three_regimes_at_1_and_3_shots_on_every_suite_task(
        demo_suite, data_root, tmp_path):
    cells = demo.plan_cells(demo_args("--output", str(tmp_path / "out"), "--data-root", str(data_root)),
                            dry_run=True)
    assert sorted((c.task, c.regime, str(c.shots)) for c in cells) == sorted(
        (task, regime, shots) for task in demo_suite for regime, shots in DEMO_ROWS)
    assert {c.seed for c in cells} == {3} and {c.model for c in cells} == {"glip-nano"}
    assert len({c.run_id for c in cells}) == len(cells) == 14
    for cell in cells:  # the demo recipe, with the prompt regime's own lr and weight decay
        resolved = requests_of(cell).config.resolved_for(cell.regime, cell.shots)
        prompt = cell.regime == "prompt"
        assert resolved["optim"]["lr"] == (0.05 if prompt else 1e-3)
        assert resolved["optim"]["weight_decay"] == (0.25 if prompt else 0.05)
        assert resolved["schedule"]["max_epochs"] == 12
        assert resolved["data"]["dataset_copies"] == 1 and resolved["data"]["num_workers"] == 0
    # In this process the demo's runs draw progress bars unless told not to; worker processes print lines.
    in_process = demo.plan_cells(demo_args("--output", str(tmp_path / "out"), "--workers", "1"), dry_run=True)
    assert all("--no-progress" not in c.argv for c in in_process)
    quiet = demo.plan_cells(demo_args("--output", str(tmp_path / "out"), "--no-progress"), dry_run=True)
    assert all("--no-progress" in c.argv for c in quiet)
    pooled = demo.plan_cells(demo_args("--output", str(tmp_path / "out"), "--workers", "2"), dry_run=True)
    assert all("--no-progress" in c.argv for c in pooled)


def test_runs_use_one_thread_in_one_worker_per_core(monkeypatch):
    import os

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert demo.workers(demo_args()) == 2
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert demo.workers(demo_args()) == demo.MAX_WORKERS
    lines = [shlex.join(argv) for argv in demo.sweep_command_lines(demo_args("--workers", "3"))]
    assert all("--workers 3 --threads 1" in line for line in lines)
    with pytest.raises(UserError, match="at least 1 worker"):
        demo.workers(demo_args("--workers", "0"))


def test_seed_option_sets_the_seed_of_the_trained_runs(demo_suite, tmp_path):
    cells = demo.plan_cells(demo_args("--output", str(tmp_path), "--seed", "30", "--tasks", "demo"), dry_run=True)
    assert {c.seed for c in cells} == {30} and len(cells) == 7


def test_full_plans_the_whole_grid_dry(demo_suite, tmp_path, capsys):
    assert main(["demo", "--full", "--dry-run", "--output", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "92 runs: 0 done, 0 failed, 92 left (dry run: nothing ran)" in printed
    assert not (tmp_path / "runs").exists()
    cells = demo.plan_cells(demo_args("--full", "--output", str(tmp_path)), dry_run=True)
    trained = [c for c in cells if c.regime != "zero-shot"]
    assert sorted((c.task, c.shots) for c in cells if c.regime == "zero-shot") == [("demo", 0), ("demo_b", 0)]
    assert {(c.task, c.regime, c.shots, c.seed) for c in trained} == {
        (t, r, k, s) for t in demo_suite for r in ("linear-probe", "prompt", "full") for k in (1, 3, 5, 10, "all")
        for s in (3, 30, 300)}
    assert len(trained) == len(cells) - 2 == 90
    # The default demo's runs are cells of the full grid: --full after the demo does not redo them.
    default_ids = {c.run_id for c in demo.plan_cells(demo_args("--output", str(tmp_path)), dry_run=True)}
    assert default_ids <= {c.run_id for c in cells}


def test_the_help_text_names_the_commands_the_demo_runs(demo_suite, data_root, monkeypatch):
    """The "It is the same as" lines are the demo's own command lines, and planning them with `sweep` gives the
    demo's run ids."""
    monkeypatch.chdir(REPO_ROOT)  # the help text names the recipe relative to the repository root
    epilog = demo.EPILOG.replace("\\\n", " ")
    lines = [" ".join(line.split()) for line in epilog.splitlines()]
    args = demo_args("--workers", "2")  # the help text shows a 2-core machine
    sweeps = [shlex.join(["python", "-m", "odinw_bench", "sweep", *argv]) for argv in demo.sweep_command_lines(args)]
    report = shlex.join(["python", "-m", "odinw_bench", "report",
                         *demo.report_command_line(args, ["results/demo/runs"])])
    for command in [*sweeps, report]:
        assert command in lines
    ours = {c.run_id for c in demo.plan_cells(args, dry_run=True)}
    theirs = set()
    for command in sweeps:
        sweep_args = build_parser().parse_args(shlex.split(command)[3:])
        theirs |= {c.run_id for c in plan_sweep(grid_spec(sweep_args), fetch=False, check_data=False)}
    assert ours == theirs and len(ours) == 14
    full = demo_args("--full")
    full_lines = [shlex.join(argv) for argv in demo.sweep_command_lines(full)]
    assert "--shots 0,1,3,5,10,all --seeds 3,30,300" in full_lines[0]
    assert "--shots 1,3,5,10,all --seeds 3,30,300 --regimes prompt" in full_lines[1]
    assert "--out results/demo/report/full/" in shlex.join(demo.report_command_line(full, []))
    assert "--shots 0,1,3,5,10,all (prompt: 1,3,5,10,all), --seeds 3,30,300" in " ".join(lines)
    assert "--out results/demo/report/full/." in " ".join(lines)


def _table_rows(printed: str) -> tuple[list[str], list[list[str]]]:
    lines = printed.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("model "))
    header = lines[start].split()
    rows = []
    for line in lines[start + 2:]:
        if not line.strip():
            break
        rows.append(line.split())
    return header, rows


def test_the_demo_prints_and_saves_the_paper_table(demo_suite, data_root, tmp_path, fake_runs, capsys):
    out = tmp_path / "out"
    assert main(["demo", "--output", str(out), "--data-root", str(data_root), "--no-progress", "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    assert len(fake_runs) == 14
    header, rows = _table_rows(printed)
    assert header == ["model", "regime", "shots", "Demo", "Demo", "B", "demo_suite"]  # "Demo B" is one column
    assert [(r[1], r[2]) for r in rows] == DEMO_ROWS
    with open(out / "report" / "leaderboard.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [(r["regime"], r["shots"]) for r in table] == DEMO_ROWS
    for row in table:
        regime, shots = row["regime"], row["shots"]
        for task in demo_suite:
            assert float(row[f"{task}_mean"]) == pytest.approx(100 * fake_ap(task, regime, shots))
        expected = sum(100 * fake_ap(task, regime, shots) for task in demo_suite) / len(demo_suite)
        assert float(row["demo_suite_mean"]) == pytest.approx(expected)
        assert row["partial"] == "False"
    assert (out / "report" / "leaderboard.md").read_text().count("glip-nano") == 7
    assert (out / "report" / "efficiency.png").stat().st_size > 0
    assert not (out / "report" / "leaderboard.tex").exists()  # Markdown and CSV only
    assert "built from 14 run records" in (out / "report" / "leaderboard.md").read_text().lower()


def test_a_rerun_redoes_no_finished_run(demo_suite, data_root, tmp_path, fake_runs, capsys):
    argv = ["demo", "--output", str(tmp_path), "--data-root", str(data_root), "--no-progress", "--tasks", "demo",
            "--workers", "1"]  # in this process: the fake runs are patched into it
    assert main(argv) == 0
    assert len(fake_runs) == 7
    # A run lost (as if the demo was killed before it): the rerun does that one and nothing else.
    lost = next(p for p in (tmp_path / "runs").rglob("k3_s3_*.json")
                if not p.stem.endswith("_predictions") and read_record(p)["regime"] == "prompt")
    lost.unlink()
    fake_runs.clear()
    capsys.readouterr()
    assert main(argv) == 0
    assert fake_runs == [("demo", "prompt", "3", 3)]
    assert "7 runs (1 ran, 6 already done)" in capsys.readouterr().out
    fake_runs.clear()
    assert main(argv) == 0
    assert fake_runs == []


@pytest.mark.parametrize("argv, field, says", [
    (["--model", "glip-nope"], "--model", "unknown model 'glip-nope'"),
    (["--full", "--seed", "30"], "--seed", "--full runs GLIP's seeds 3,30,300"),
    (["--tasks", "no_such_task"], "no_such_task", "unknown task or suite"),
    (["optim.lr"], "optim.lr", "expected key=value"),
])
def test_bad_input_is_one_line_and_exit_2(demo_suite, tmp_path, capsys, argv, field, says):
    assert main(["demo", "--output", str(tmp_path / "out"), *argv]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and field in err[0] and says in err[0]
    assert not (tmp_path / "out").exists()


def test_demo_end_to_end_on_the_demo_task(tmp_path, data_root, capsys):
    """Real runs (glip-micro, one epoch): records, predictions, run leaderboard, the table and the plot."""
    out = tmp_path / "results"
    argv = ["demo", "--tasks", "demo", "--model", "glip-micro", "--output", str(out), "--data-root",
            str(data_root), "--no-progress", "--workers", "1", "schedule.max_epochs=1", "trainer.limit_train_batches=1"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "sweep: 7 cells: 7 done, 0 failed, 0 left" in printed
    files = [p for p in out.glob("runs/demo/glip-micro/*/*.json") if not p.stem.endswith("_predictions")]
    records = [read_record(p) for p in files]
    assert sorted((r["regime"], str(r["shots"])) for r in records) == sorted(DEMO_ROWS)
    assert all(r["status"] == "ok" and "AP" in r["metrics"] for r in records)
    assert all(p.with_name(p.stem + "_predictions.json").is_file() for p in files)
    assert [(r[1], r[2]) for r in _table_rows(printed)[1]] == DEMO_ROWS
    assert (out / "report" / "leaderboard.md").is_file() and (out / "report" / "efficiency.png").is_file()
