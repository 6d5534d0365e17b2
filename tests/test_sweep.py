"""``sweep`` on the synthetic demo task with glip-micro on CPU: grids, dry runs, resumption, retries, launchers."""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import pytest

from odinw_bench.cli import build_parser, main
from odinw_bench.commands.sweep import grid_spec, make_launcher
from odinw_bench.errors import UserError
from odinw_bench.results.records import make_record, read_record, write_record
from odinw_bench.runs import runner
from odinw_bench.runs.launchers import PoolLauncher, run_cell
from odinw_bench.runs.sweep import classify, grid_regimes, parse_shots_list, plan_sweep

# A short schedule: 1 epoch of 2 batches keeps each fitted run to seconds.
FAST = ["schedule.max_epochs=1", "trainer.limit_train_batches=2", "data.batch_size=2", "data.num_workers=0",
        "trainer.log_every_n_steps=1"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    from odinw_bench.data.synthetic import ensure_demo_data

    root = tmp_path_factory.mktemp("data")
    ensure_demo_data(root)
    return root


@pytest.fixture(scope="module")
def second_task(tmp_path_factory, data_root) -> Path:
    """A real (non-synthetic) task file whose data is the generated demo folder under ``data_root``."""
    text = (Path(__file__).parents[1] / "tasks" / "demo.yaml").read_text()
    text = text.replace("name: demo", "name: demo2").replace("synthetic: true", "synthetic: false")
    assert "name: demo2" in text and "synthetic: false" in text
    path = tmp_path_factory.mktemp("tasks") / "demo2.yaml"
    path.write_text(text)
    return path


def _sweep_argv(out: Path, data_root: Path, *extra: str) -> list[str]:
    return ["sweep", "--models", "glip-micro", "--data-root", str(data_root), "--output", str(out), *extra, *FAST]


def _plan(argv: list[str]):
    return plan_sweep(grid_spec(build_parser().parse_args(argv)))


def _records(out: Path) -> list[dict]:
    return [read_record(p) for p in sorted(out.glob("runs/**/*.json")) if not p.stem.endswith("_predictions")]


def _rows(out: Path) -> list[dict]:
    with open(out / "leaderboard.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _listed_cells(text: str) -> list[list[str]]:
    """Rows of a dry-run listing: task, shots, seed, regime, model, run id, state."""
    return [line.split() for line in text.splitlines() if re.search(r" (done|failed|left)$", line)]


def test_grid_regimes_pair_zero_shot_with_shots_0_only():
    assert grid_regimes([0, 1, "all"], ["prompt", "full", "zero_shot"]) == {
        0: ["zero-shot"], 1: ["prompt", "full"], "all": ["prompt", "full"]}
    assert grid_regimes([0], ["full"]) == {0: ["zero-shot"]}
    with pytest.raises(UserError, match="add 0 to --shots"):
        grid_regimes([1], ["zero-shot", "full"])
    with pytest.raises(UserError, match="training regime"):
        grid_regimes([0, 5], ["zero-shot"])
    with pytest.raises(UserError, match="did you mean"):
        grid_regimes([1], ["promt"])
    assert parse_shots_list("0, 1,all,1") == [0, 1, "all"]
    with pytest.raises(UserError, match="--shots"):
        parse_shots_list("1,-3")


def _fake_record(cell, status: str) -> dict:
    """A schema-valid record for a planned cell, as if it had run."""
    return make_record(
        run_id=cell.run_id, task={"name": cell.task, "version": 1, "sha256": None, "display_name": cell.task},
        split="test", prompt={"variant": "default", "captions": []}, shots=cell.shots, seed=cell.seed,
        regime=cell.regime, sample={"sampler": "glip", "train_ids": [], "train_ids_hash": None, "train_count": 0,
                                    "val_ids": None, "val_ids_hash": None, "val_count": None, "shortfall": {}},
        model={"name": cell.model, "checkpoint": None, "checkpoint_sha256": None}, config={},
        metrics={"AP": 0.5} if status == "ok" else {}, error=None if status == "ok" else "RuntimeError: boom")


def test_dry_run_lists_every_cell_with_its_state_and_runs_nothing(tmp_path, data_root, second_task, capsys):
    argv = _sweep_argv(tmp_path, data_root, "--tasks", f"demo,{second_task}", "--shots", "0,1,all",
                       "--seeds", "3,30", "--regimes", "prompt,full", "--dry-run")
    assert main(argv) == 0
    rows = _listed_cells(capsys.readouterr().out)
    # 2 tasks x (one zero-shot cell, whatever the seeds + 2 shot counts x 2 regimes x 2 seeds)
    assert len(rows) == 2 * (1 + 2 * 2 * 2)
    zero = [r for r in rows if r[3] == "zero-shot"]
    assert len(zero) == 2 and {r[1] for r in zero} == {"0"} and {(r[0], r[2]) for r in zero} == {
        ("demo", "3"), ("demo2", "3")}
    assert {r[3] for r in rows if r[1] != "0"} == {"prompt", "full"}
    ids = [r[5] for r in rows]
    assert all(re.fullmatch(r"[0-9a-f]{12}", i) for i in ids) and len(set(ids)) == len(ids)
    assert {r[6] for r in rows} == {"left"}

    cells = _plan(argv)
    assert [c.run_id for c in cells] == ids
    write_record(cells[0].record_path, _fake_record(cells[0], "ok"))
    write_record(cells[5].record_path, _fake_record(cells[5], "failed"))
    assert main(argv) == 0
    states = [r[6] for r in _listed_cells(capsys.readouterr().out)]
    assert states[0] == "done" and states[5] == "failed" and states.count("left") == len(rows) - 2
    assert not (tmp_path / "leaderboard.csv").exists() and not (tmp_path / "checkpoints").exists()


def test_changing_a_setting_changes_the_run_ids(data_root, tmp_path):
    base = _sweep_argv(tmp_path, data_root, "--tasks", "demo", "--shots", "1", "--seeds", "3", "--regimes", "full")
    (a,), (b,) = _plan(base), _plan([*base, "optim.lr=2e-4"])
    assert a.run_id != b.run_id


@pytest.fixture
def micro_checkpoint(tmp_path) -> Path:
    from safetensors.torch import save_file

    from odinw_bench.models.glip.backend import GLIPBackend

    backend = GLIPBackend.from_preset("glip-micro")
    path = tmp_path / "micro.safetensors"
    save_file({k: v.contiguous() for k, v in backend.model.state_dict().items()}, str(path))
    return path


def test_killed_sweep_resumes_and_retries_only_failed_cells(tmp_path, data_root, second_task, micro_checkpoint,
                                                            monkeypatch, capsys):
    from odinw_bench.data import task_files
    from odinw_bench.models.glip import checkpoint

    out = tmp_path / "out"
    argv = _sweep_argv(out, data_root, "--tasks", f"demo,{second_task}", "--shots", "1", "--seeds", "3,30",
                       "--regimes", "linear-probe,prompt", "--checkpoint", str(micro_checkpoint))
    planned = {c.run_id: c for c in _plan(argv)}
    assert len(planned) == 8
    calls: list[tuple] = []
    reads = {"checkpoint": 0, "split": 0}
    interrupt, broken = [True], {("demo2", 30, "prompt")}
    original_request, original_execute = runner.run_request, runner._execute
    original_read, original_split = checkpoint.read_checkpoint, task_files.load_task_split

    def counting_request(req, cache=None):
        calls.append((req.task.name, req.seed, req.regime.name))
        if interrupt[0] and len(calls) == 2:
            raise KeyboardInterrupt  # the sweep is killed once its first cell has finished
        return original_request(req, cache=cache)

    def failing_execute(req, backend, ctx, cache=None):
        if (req.task.name, req.seed, req.regime.name) in broken:
            raise RuntimeError("injected failure")
        return original_execute(req, backend, ctx, cache)

    def counting_read(*args, **kwargs):
        reads["checkpoint"] += 1
        return original_read(*args, **kwargs)

    def counting_split(*args, **kwargs):
        reads["split"] += 1
        return original_split(*args, **kwargs)

    monkeypatch.setattr(runner, "run_request", counting_request)
    monkeypatch.setattr(runner, "_execute", failing_execute)
    monkeypatch.setattr(checkpoint, "read_checkpoint", counting_read)
    monkeypatch.setattr(task_files, "load_task_split", counting_split)

    assert main(argv) == 130
    assert len(calls) == 2 and len(_records(out)) == 1
    assert "sweep interrupted: 8 cells: 1 done, 0 failed, 7 left" in capsys.readouterr().out

    interrupt[0] = False
    calls.clear()
    reads.update(checkpoint=0, split=0)
    assert main(argv) == 1  # one cell failed
    text = capsys.readouterr().out
    assert len(calls) == 7 and ("demo2", 30, "prompt") in calls
    # One worker: the checkpoint is read once, each task's train/val/test split indexed once.
    assert reads == {"checkpoint": 1, "split": 2 * 3}
    records = _records(out)
    assert len(records) == 8 and {r["run_id"] for r in records} == set(planned)
    (failed,) = [r for r in records if r["status"] == "failed"]
    assert "injected failure" in failed["error"] and failed["run_id"] in text and "--retry-failed" in text
    assert len(_rows(out)) == 7

    calls.clear()
    assert main(argv) == 1  # nothing runs; the failure is reported again, not dropped
    assert calls == [] and "injected failure" in capsys.readouterr().out

    broken.clear()
    assert main([*argv, "--retry-failed"]) == 0
    assert calls == [("demo2", 30, "prompt")]
    assert all(r["status"] == "ok" for r in _records(out))
    rows = _rows(out)
    assert len(rows) == 8 and {row["run_id"] for row in rows} == set(planned)


def test_submitit_local_executor_runs_the_grid(tmp_path, data_root, second_task, capsys):
    # Two zero-shot cells (one per task: zero-shot runs once whatever the seeds) keep the jobs short.
    argv = _sweep_argv(tmp_path, data_root, "--tasks", f"demo,{second_task}", "--shots", "0", "--seeds", "3,30",
                       "--launcher", "submitit-local", "--slurm-time", "10")
    planned = {c.run_id for c in _plan(argv)}
    assert main(argv) == 0
    assert "2 done, 0 failed, 0 left" in capsys.readouterr().out
    records = _records(tmp_path)
    assert {r["run_id"] for r in records} == planned and all(r["status"] == "ok" for r in records)
    assert list((tmp_path / "slurm").glob("*_log.out"))  # submitit's own job logs


def _cell_with_env(argv: list[str]) -> dict:
    """``run_cell`` plus the environment the worker ran it in."""
    result = run_cell(argv)
    result["env"] = {k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS")}
    result["pid"] = os.getpid()
    return result


def test_two_local_workers_run_cells_each_pinned_to_its_gpu(tmp_path, data_root, second_task):
    argv = _sweep_argv(tmp_path, data_root, "--tasks", f"demo,{second_task}", "--shots", "0", "--seeds", "3",
                       "--workers", "2", "--gpus", "5,7")
    launcher = make_launcher(build_parser().parse_args(argv))
    assert isinstance(launcher, PoolLauncher) and launcher.gpus == ["5", "7"]
    cells = _plan(argv)
    # GPUs 5 and 7 do not exist here: the pinned workers see no GPU and run on the CPU.
    results = launcher.launch([c.argv for c in cells], _cell_with_env, lambda i, r: None)
    assert [results[i]["status"] for i in range(2)] == ["ok", "ok"], results
    assert {r["env"]["CUDA_VISIBLE_DEVICES"] for r in results.values()} <= {"5", "7"}
    assert all(r["env"]["OMP_NUM_THREADS"] == str(launcher.threads) for r in results.values())
    assert results[0]["run_id"] == cells[0].run_id and results[1]["run_id"] == cells[1].run_id
    classify(cells)
    assert [c.state for c in cells] == ["done", "done"]


def test_bad_sweep_input_is_one_clear_error(tmp_path, data_root, capsys):
    assert main(_sweep_argv(tmp_path, data_root, "--tasks", "demo", "--regimes", "lineer-probe")) == 2
    assert "linear-probe" in capsys.readouterr().err
    assert main(_sweep_argv(tmp_path, data_root, "--tasks", "demo", "--shots", "1", "optim.lrr=1")) == 2
    assert "optim.lrr" in capsys.readouterr().err
    assert not tmp_path.joinpath("runs").exists()


def test_dry_run_plans_without_data_and_a_real_sweep_names_the_download(tmp_path, capsys):
    """The plan of a grid needs no data; running it does, and says how to get it before any model is built."""
    argv = _sweep_argv(tmp_path / "out", tmp_path / "no_data", "--tasks", "aquarium", "--shots", "1",
                       "--seeds", "3", "--regimes", "full")
    assert main([*argv, "--dry-run"]) == 0
    assert "aquarium" in capsys.readouterr().out
    assert main(argv) == 2
    assert "download --task aquarium" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_threads_option_reaches_both_launchers(tmp_path, data_root):
    import torch

    from odinw_bench.runs.launchers import LocalLauncher

    pooled = make_launcher(build_parser().parse_args(_sweep_argv(tmp_path, data_root, "--tasks", "demo", "--workers", "2",
                                                                 "--threads", "1")))
    assert isinstance(pooled, PoolLauncher) and pooled.threads == 1
    local = make_launcher(build_parser().parse_args(_sweep_argv(tmp_path, data_root, "--tasks", "demo", "--threads", "1")))
    assert isinstance(local, LocalLauncher) and local.threads == 1
    before, seen = torch.get_num_threads(), []
    local.launch([["a"], ["b"]], lambda argv: seen.append(torch.get_num_threads()) or {}, lambda i, r: None)
    assert seen == [1, 1] and torch.get_num_threads() == before  # set while the cells run, then restored
    with pytest.raises(UserError, match="at least 1 thread"):
        make_launcher(build_parser().parse_args(_sweep_argv(tmp_path, data_root, "--tasks", "demo", "--threads", "0")))
