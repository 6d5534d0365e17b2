"""Sweeps at scale and monitoring (issue 9, items 16-18): SLURM options, requeue and pending jobs; one log line and
one history entry per epoch; evaluate's predictions as a run record in the report."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from odinw_bench.cli import main
from odinw_bench.results.records import read_record

FAST = ["data.num_workers=0", "trainer.limit_train_batches=2", "data.batch_size=2", "trainer.log_every_n_steps=1"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    from odinw_bench.data.synthetic import ensure_demo_data

    root = tmp_path_factory.mktemp("data")
    ensure_demo_data(root)
    return root


def _records(out: Path) -> list[dict]:
    return [read_record(p) for p in sorted(out.glob("runs/**/*.json")) if not p.stem.endswith("_predictions")]


# ------------------------------------------------------------------------------------------------ item 17
def test_a_fit_logs_one_line_and_one_history_entry_per_epoch_without_lightning_advertising(
        tmp_path, data_root, capsys, caplog):
    caplog.set_level(logging.INFO)
    argv = ["run", "--task", "demo", "--shots", "1", "--model", "glip-micro", "--regime", "linear-probe",
            "--data-root", str(data_root), "--output", str(tmp_path), "--no-progress", "schedule.max_epochs=2", *FAST]
    assert main(argv) == 0
    out = capsys.readouterr().out
    (record,) = _records(tmp_path)

    history = record["history"]
    assert [entry["epoch"] for entry in history] == [0, 1]
    for entry in history:
        assert entry["loss"] is not None and entry["loss"] > 0
        assert entry["lr"] == record["config"]["resolved"]["optim"]["lr"]  # no plateau step in 2 epochs
        assert entry["val_AP"] is not None and 0 <= entry["val_AP"] <= 1
    assert 0 < history[0]["elapsed_s"] <= history[1]["elapsed_s"] <= record["duration_s"]
    assert max(entry["val_AP"] for entry in history) == record["config"]["fit"]["best_val_AP"]
    assert "history" not in record["config"]["fit"]
    assert record["peak_gpu_memory_bytes"] is None  # CPU run

    lines = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 2
    for line, entry in zip(lines, history, strict=True):
        assert line.startswith(f"epoch {entry['epoch']}/1 ")
        assert f"loss {entry['loss']:.4f}" in line and f"val AP {entry['val_AP']:.4f}" in line
        assert f"lr {entry['lr']:.2e}" in line and "elapsed" in line

    lightning = [r.getMessage() for r in caplog.records if r.name.startswith(("pytorch_lightning", "lightning"))]
    assert any("GPU available" in message for message in lightning)  # Lightning's other lines still show
    assert not any("Tip" in message or "litlogger" in message for message in lightning)
    assert "Tip:" not in out



def test_peak_gpu_memory_comes_from_cuda_where_it_is_used(monkeypatch):
    import torch

    from odinw_bench.training import monitoring

    resets: list[int] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a, **k: 3 * 2**30)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda *a, **k: resets.append(1))
    monitoring.reset_peak_gpu_memory()
    assert resets == [1] and monitoring.peak_gpu_memory_bytes() == 3 * 2**30
    entry = {"epoch": 4, "loss": 0.5, "lr": 1e-4, "val_AP": None, "elapsed_s": 12.0}
    line = monitoring.format_epoch({**entry, "peak_gpu_memory_bytes": 3 * 2**30}, max_epochs=10)
    assert line.startswith("epoch 4/9 ") and "val AP -" in line and "GPU peak 3.0 GiB" in line
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)  # CUDA present but this run never used it
    assert monitoring.peak_gpu_memory_bytes() is None and "GPU" not in monitoring.format_epoch(entry)

# ------------------------------------------------------------------------------------------------ item 16
def _cell(task: str = "demo", seed: int = 3) -> list[str]:
    return ["--task", task, "--shots", "1", "--seed", str(seed), "--model", "glip-micro", "--no-progress"]


def _fake_cell(argv: list[str]) -> dict:
    """A cell that notes that it ran (a JSON line with its pid and argv in the file named by --output); with
    --wait-for FILE it then waits for that file, unless it runs with --resume."""
    import json
    import os
    import time

    log = Path(argv[argv.index("--output") + 1])
    with open(log, "a") as handle:
        handle.write(json.dumps({"pid": os.getpid(), "argv": argv}) + "\n")
    if "--wait-for" in argv and "--resume" not in argv:
        marker = Path(argv[argv.index("--wait-for") + 1])
        deadline = time.time() + 120
        while not marker.exists() and time.time() < deadline:
            time.sleep(0.2)
    return {"status": "ok", "run_id": None, "error": None, "record": None, "argv": argv}


def _calls(log: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.fixture
def by_value():
    """Jobs of submitit's local executor unpickle this test module's functions by value (it is not importable)."""
    import sys

    import cloudpickle

    module = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(module)
    yield
    cloudpickle.unregister_pickle_by_value(module)


def test_a_preempted_job_is_requeued_and_its_cell_resumes(tmp_path, by_value):
    import os
    import signal
    import time

    import submitit

    from odinw_bench.runs.launchers import CellJob

    log = tmp_path / "calls.txt"
    argv = [*_cell(), "--output", str(log), "--wait-for", str(tmp_path / "never")]
    resubmitted = CellJob(argv, _fake_cell).checkpoint()
    assert resubmitted.function.argv == [*argv, "--resume"] and resubmitted.function.cell_fn is _fake_cell
    assert resubmitted.function.checkpoint().function.argv.count("--resume") == 1

    # submitit's local executor requeues a job as SLURM does; USR2 is the signal SLURM sends before preempting.
    executor = submitit.LocalExecutor(tmp_path / "jobs", max_num_timeout=1)
    executor.update_parameters(timeout_min=10)
    job = executor.submit(CellJob(argv, _fake_cell))
    deadline = time.time() + 120
    while not _calls(log) and time.time() < deadline:
        time.sleep(0.2)
    os.kill(_calls(log)[0]["pid"], signal.SIGUSR2)
    result = job.result()
    assert result["status"] == "ok" and result["argv"] == [*argv, "--resume"]
    assert [call["argv"] for call in _calls(log)] == [argv, [*argv, "--resume"]]


FAKE_SBATCH = """#!/bin/bash
n=$(cat {bin}/count 2>/dev/null || echo 1000); n=$((n+1)); echo $n > {bin}/count
cp "$1" {bin}/sbatch_$n.sh
echo "Submitted batch job $n"
"""


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch) -> Path:
    """``sbatch`` (keeps each script, answers job ids 1001, 1002, ...), ``srun``, and ``sacct`` (prints sacct.txt)."""
    import os

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scripts = {"sbatch": FAKE_SBATCH.format(bin=bin_dir), "srun": "#!/bin/bash\nexit 0\n",
               "sacct": f"#!/bin/bash\ncat {bin_dir}/sacct.txt 2>/dev/null\n"}
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return bin_dir


def _slurm_launcher(out: Path, *options: str):
    from odinw_bench.cli import build_parser
    from odinw_bench.commands.sweep import make_launcher

    args = build_parser().parse_args(["sweep", "--tasks", "demo", "--output", str(out), "--launcher", "slurm",
                                      *options])
    return make_launcher(args)


def test_slurm_options_reach_the_job_script_and_pending_jobs_are_not_submitted_twice(tmp_path, fake_slurm):
    import json

    from odinw_bench.runs.launchers import run_cell

    out = tmp_path / "out"
    launcher = _slurm_launcher(out, "--slurm-partition", "gpu", "--slurm-time", "30", "--slurm-account", "lab",
                               "--slurm-qos", "high", "--slurm-mem", "64g", "--slurm-constraint", "a100",
                               "--slurm-option", "mail-type=END", "--slurm-option=--exclusive",
                               "--slurm-setup", "module load cuda")
    cells = [_cell(seed=3), _cell(seed=30)]
    jobs = launcher.submit(cells, run_cell)
    assert [jobs[i].job_id for i in range(2)] == ["1001_0", "1001_1"]
    script = (fake_slurm / "sbatch_1001.sh").read_text()
    for line in ("#SBATCH --account=lab", "#SBATCH --qos=high", "#SBATCH --mem=64G", "#SBATCH --constraint=a100",
                 "#SBATCH --mail-type=END", "#SBATCH --exclusive", "#SBATCH --partition=gpu", "#SBATCH --time=30",
                 "#SBATCH --array=0-1%", "module load cuda"):
        assert line in script, line
    recorded = json.loads((out / "sweep_jobs.json").read_text())["jobs"]
    assert sorted((e["job_id"], e["argv"]) for e in recorded.values()) == [("1001_0", cells[0]),
                                                                           ("1001_1", cells[1])]

    # The sweep is killed and rerun: cell 0 is still running, cell 1's job failed without leaving a record.
    (fake_slurm / "sacct.txt").write_text("JobID|State|NodeList\n1001_0|RUNNING|node1\n1001_1|FAILED|node2\n")
    again = _slurm_launcher(out, "--slurm-partition", "gpu")
    jobs = again.submit([cells[0], [*cells[1], "--resume"]], run_cell)
    assert [jobs[i].job_id for i in range(2)] == ["1001_0", "1002"]
    assert sorted(p.name for p in fake_slurm.glob("sbatch_*.sh")) == ["sbatch_1001.sh", "sbatch_1002.sh"]
    recorded = json.loads((out / "sweep_jobs.json").read_text())["jobs"]
    assert sorted(e["job_id"] for e in recorded.values()) == ["1001_0", "1002"]

    # Both ended: the next rerun submits both cells (neither left a record) and forgets the old jobs.
    (fake_slurm / "sacct.txt").write_text("JobID|State|NodeList\n1001_0|TIMEOUT|node1\n1002|CANCELLED by 42|n3\n")
    jobs = _slurm_launcher(out).submit(cells, run_cell)
    assert [jobs[i].job_id for i in range(2)] == ["1003_0", "1003_1"]
    recorded = json.loads((out / "sweep_jobs.json").read_text())["jobs"]
    assert sorted(e["job_id"] for e in recorded.values()) == ["1003_0", "1003_1"]


def test_a_rerun_waits_for_a_local_job_still_running_and_forgets_jobs_that_ended(tmp_path, by_value):
    import json

    from odinw_bench.runs.launchers import SubmititLauncher

    log, marker, jobs_file = tmp_path / "calls.txt", tmp_path / "go", tmp_path / "out" / "sweep_jobs.json"
    cells = [[*_cell(seed=3), "--output", str(log), "--wait-for", str(marker)],
             [*_cell(seed=30), "--output", str(log)]]
    first = SubmititLauncher("local", tmp_path / "logs", jobs_file=jobs_file, poll_s=0.2)
    first.submit(cells[:1], _fake_cell)  # then the sweep process is gone; its job runs on
    assert len(json.loads(jobs_file.read_text())["jobs"]) == 1

    rerun = SubmititLauncher("local", tmp_path / "logs", jobs_file=jobs_file, poll_s=0.2)
    still_recorded: dict[int, list[str]] = {}

    def on_finish(index: int, result: dict) -> None:
        left = json.loads(jobs_file.read_text())["jobs"] if jobs_file.exists() else {}
        still_recorded[index] = sorted(entry["argv"][5] for entry in left.values())  # their seeds
        marker.touch()  # the first sweep's job may finish now

    results = rerun.launch(cells, _fake_cell, on_finish)
    assert [results[i]["status"] for i in range(2)] == ["ok", "ok"]
    assert still_recorded == {1: ["3"], 0: []}  # seed 30 ran; seed 3 was waited for, not submitted again
    assert sorted(call["argv"][5] for call in _calls(log)) == ["3", "30"]
    assert not jobs_file.exists()


def test_slurm_absent_is_one_clear_error(tmp_path, data_root, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch, no srun
    argv = ["sweep", "--tasks", "demo", "--shots", "0", "--seeds", "3", "--models", "glip-micro", "--data-root",
            str(data_root), "--output", str(tmp_path / "out"), "--launcher", "slurm"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "sbatch" in err and "--launcher" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("option", "value"), [("--slurm-option", "mail type=END"), ("--slurm-option", "qos="),
                                               ("--slurm-mem", "lots")])
def test_bad_slurm_options_are_one_clear_error(tmp_path, fake_slurm, capsys, option, value):
    argv = ["sweep", "--tasks", "demo", "--models", "glip-micro", "--output", str(tmp_path / "out"),
            "--launcher", "slurm", option, value]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and option in err and repr(value) in err


def test_sweep_accepts_no_progress_and_a_dry_run_names_submitted_jobs(tmp_path, data_root, capsys):
    from odinw_bench.cli import build_parser
    from odinw_bench.commands.sweep import grid_spec
    from odinw_bench.runs.submitted import SubmittedJobs, cell_key, job_entry
    from odinw_bench.runs.sweep import plan_sweep

    argv = ["sweep", "--tasks", "demo", "--shots", "0,1", "--regimes", "full", "--seeds", "3", "--models", "glip-micro",
            "--data-root",
            str(data_root), "--output", str(tmp_path), "--dry-run", "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "2 cells: 0 done, 0 failed, 2 left" in out and "submitted" not in out
    cell = plan_sweep(grid_spec(build_parser().parse_args(argv)), fetch=False)[1]
    SubmittedJobs(tmp_path / "sweep_jobs.json").add({cell_key(cell.argv): job_entry("77_1", "slurm", "x", cell.argv)})
    assert main(argv) == 0
    assert "1 of the cells not done have jobs submitted by an earlier sweep (77_1;" in capsys.readouterr().out


def test_report_folders_may_hold_a_sweep_jobs_file(tmp_path):
    from odinw_bench.results.records import (
        iter_records,
        make_record,
        record_path,
        write_record,
    )

    record = make_record(
        run_id="abc", task={"name": "demo", "version": 1, "sha256": None, "display_name": "Demo"}, split="test",
        prompt={"variant": "default", "captions": []}, shots=1, seed=3, regime="full",
        sample={"sampler": "glip", "train_ids": [1], "train_ids_hash": None, "train_count": 1, "val_ids": None,
                "val_ids_hash": None, "val_count": None, "shortfall": {}},
        model={"name": "m", "checkpoint": None, "checkpoint_sha256": None}, config={}, metrics={"AP": 0.5})
    path = write_record(record_path(tmp_path, record), record)
    (tmp_path / "sweep_jobs.json").write_text('{"jobs": {}}\n')
    assert [p for p, _ in iter_records([tmp_path])] == [path]
