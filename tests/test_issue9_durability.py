"""Nothing lost to a kill, a report or a umask: leaderboard rows derived from records, reports that never
overwrite the run leaderboard, no orphaned temporary files, permissions as ``open()`` gives them.

Kills are real: a subprocess sends itself SIGKILL at the point under test.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from test_results import make_test_record

from odinw_bench import atomic
from odinw_bench.cli import main
from odinw_bench.results import leaderboard
from odinw_bench.results.evaluation import write_predictions
from odinw_bench.results.records import read_record, record_path, write_record

REPO_ROOT = Path(__file__).resolve().parents[1]
posix_only = pytest.mark.skipif(os.name != "posix", reason="SIGKILL and umask are POSIX")

# Patched into a subprocess: once a run record exists, the leaderboard writer kills the process (SIGKILL: no
# handler, no cleanup), i.e. the kill lands between writing the record and writing its row.
KILL_AFTER_RECORD = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from odinw_bench.results import leaderboard

    out = Path(sys.argv[1])

    def kill_once_a_record_exists(name):
        original = getattr(leaderboard, name, None)

        def patched(*args, **kwargs):
            if any(p for p in out.glob("runs/**/*.json") if not p.name.endswith("_predictions.json")):
                os.kill(os.getpid(), signal.SIGKILL)
            return original(*args, **kwargs)
        setattr(leaderboard, name, patched)

    kill_once_a_record_exists("append_leaderboard_row")
    kill_once_a_record_exists("repair_leaderboard")
    from odinw_bench.cli import main
    sys.exit(main(sys.argv[2:]))
""")


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}


def _run_killed(out: Path, argv: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-c", KILL_AFTER_RECORD, str(out), *argv], capture_output=True,
                          text=True, timeout=600, env=_env())
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]


def _records(out: Path) -> list[dict]:
    return [read_record(p) for p in sorted(out.glob("runs/**/*.json")) if not p.name.endswith("_predictions.json")]


def _rows(csv_path: Path) -> list[dict]:
    with open(csv_path, newline="") as handle:
        return list(csv.DictReader(handle))


def _assert_one_current_row_per_record(out: Path, expected_records: int) -> None:
    records, rows = _records(out), _rows(out / "leaderboard.csv")
    assert len(records) == expected_records and all(r["status"] == "ok" for r in records)
    assert sorted(r["run_id"] for r in rows) == sorted(r["run_id"] for r in records)
    by_id = {r["run_id"]: r for r in rows}
    for record in records:  # the row says what the record says
        expected = {k: "" if v is None else str(v) for k, v in leaderboard.leaderboard_row(record).items()}
        assert by_id[record["run_id"]] == expected


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    from odinw_bench.data.synthetic import ensure_demo_data

    root = tmp_path_factory.mktemp("data")
    ensure_demo_data(root)
    return root


def _zero_shot_run(out: Path, data_root: Path, split: str = "val") -> list[str]:
    return ["run", "--task", "demo", "--shots", "0", "--model", "glip-micro", "--split", split,
            "--data-root", str(data_root), "--output", str(out), "--no-progress", "data.num_workers=0"]


# ---- Item 2: the leaderboard is derived from the records ----


@posix_only
def test_sweep_restores_the_row_of_a_run_killed_between_record_and_row(tmp_path, data_root, capsys):
    argv = ["sweep", "--tasks", "demo", "--shots", "0", "--seeds", "3", "--models", "glip-micro",
            "--data-root", str(data_root), "--output", str(tmp_path), "data.num_workers=0"]
    _run_killed(tmp_path, argv)
    assert len(_records(tmp_path)) == 1  # the kill came after the record ...
    assert not (tmp_path / "leaderboard.csv").exists() or not _rows(tmp_path / "leaderboard.csv")  # ... before the row

    assert main(argv) == 0  # the cell is done from its record, so nothing runs again
    out = capsys.readouterr().out
    assert "1 already done" in out and "restored 1 row" in out
    _assert_one_current_row_per_record(tmp_path, 1)
    assert main(argv) == 0  # a third pass changes nothing
    _assert_one_current_row_per_record(tmp_path, 1)


@posix_only
def test_next_run_restores_the_row_of_a_run_killed_between_record_and_row(tmp_path, data_root):
    _run_killed(tmp_path, _zero_shot_run(tmp_path, data_root, "val"))
    assert main(_zero_shot_run(tmp_path, data_root, "test")) == 0  # another run (zero-shot ids leave the seed out)
    _assert_one_current_row_per_record(tmp_path, 2)


def test_repair_replaces_stale_rows_and_keeps_what_has_no_ok_record(tmp_path):
    csv_path = tmp_path / "leaderboard.csv"
    kept = make_test_record(run_id="no_record_any_more", seed=1)
    leaderboard.append_leaderboard_row(csv_path, kept)
    old = make_test_record(run_id="rerun", seed=2, ap=0.1)
    leaderboard.append_leaderboard_row(csv_path, old)
    new = make_test_record(run_id="rerun", seed=2, ap=0.3)  # a rerun killed after its record: the row is stale
    failed = make_test_record(run_id="failed", seed=4, status="failed", error="RuntimeError: boom", metrics={})
    for record in (new, failed, make_test_record(run_id="missing", seed=5)):
        write_record(record_path(tmp_path, record), record)
    (tmp_path / "runs" / "broken.json").write_text("{")  # unreadable: skipped here, reported by sweep

    assert sorted(leaderboard.repair_leaderboard(csv_path, tmp_path / "runs")) == ["missing", "rerun"]
    rows = {r["run_id"]: r for r in _rows(csv_path)}
    assert list(rows) == ["no_record_any_more", "rerun", "missing"]  # order kept, the new one appended
    assert float(rows["rerun"]["AP"]) == pytest.approx(0.3)
    assert leaderboard.repair_leaderboard(csv_path, tmp_path / "runs") == []  # nothing left to repair
    assert leaderboard.repair_leaderboard(tmp_path / "x.csv", tmp_path / "no_runs") == []
    assert not (tmp_path / "x.csv").exists()


# ---- Item 3: a report never overwrites the run leaderboard or a foreign file ----


def _report_records(folder: Path) -> Path:
    for seed in (3, 30):
        record = make_test_record(seed=seed)
        write_record(record_path(folder, record), record)
        leaderboard.append_leaderboard_row(folder / "leaderboard.csv", record)
    return folder / "runs"


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("out", ["results/leaderboard", "results/", "results/leaderboard.csv"])
def test_report_refuses_to_overwrite_the_run_leaderboard(tmp_path, monkeypatch, capsys, out):
    monkeypatch.chdir(tmp_path)
    runs = _report_records(Path("results"))
    before = _files(tmp_path)
    assert main(["report", str(runs), "--out", out]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "leaderboard.csv" in err and "run leaderboard" in err
    assert _files(tmp_path) == before  # nothing written, the run leaderboard intact
    record = make_test_record(seed=300)  # and the next run can still append its row
    leaderboard.append_leaderboard_row(Path("results/leaderboard.csv"), record)
    assert len(_rows(Path("results/leaderboard.csv"))) == 3


def test_report_default_output_leaves_the_run_leaderboard_alone(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runs = _report_records(Path("results"))
    run_leaderboard = Path("results/leaderboard.csv").read_bytes()
    assert main(["report", str(runs)]) == 0
    assert (tmp_path / "results/report/leaderboard.csv").is_file()
    assert (tmp_path / "results/report/sources.txt").is_file()
    assert Path("results/leaderboard.csv").read_bytes() == run_leaderboard
    assert main(["report", str(runs)]) == 0  # its own files: a rerun replaces them


def test_report_refuses_a_foreign_or_edited_file_and_replaces_its_own(tmp_path, capsys):
    runs = _report_records(tmp_path / "results")
    prefix = tmp_path / "paper" / "table"
    prefix.parent.mkdir()
    foreign = prefix.with_name("table.md")
    foreign.write_text("my notes\n")
    assert main(["report", str(runs), "--out", str(prefix)]) == 2
    assert str(foreign) in capsys.readouterr().err and foreign.read_text() == "my notes\n"
    assert sorted(p.name for p in prefix.parent.iterdir()) == ["table.md"]  # refused before writing anything

    foreign.unlink()
    assert main(["report", str(runs), "--out", str(prefix)]) == 0
    assert main(["report", str(runs), "--out", str(prefix)]) == 0  # a report replaces what a report wrote
    edited = prefix.with_name("table.tex")
    edited.write_text(edited.read_text() + "% my edit\n")
    assert main(["report", str(runs), "--out", str(prefix)]) == 2
    assert str(edited) in capsys.readouterr().err and edited.read_text().endswith("% my edit\n")


def test_planned_paths_are_the_files_produce_writes(tmp_path):
    from odinw_bench.report import build
    from odinw_bench.report.grid import build_report

    model = {"name": "glip-t-c", "checkpoint": "/ckpt/glip_tiny.pth", "checkpoint_sha256": "ab" * 32}
    records = [make_test_record(task="pothole", seed=s, model=model, regime="zero-shot", shots=0,
                                metrics={"AP": 0.4, "AP-fish": 0.5}) for s in (3, 30)]  # fmt: skip
    rep = build_report(records)
    out = tmp_path / "all" / "lb"
    outputs = build.produce(rep, out, plots=True, per_category=True, compare=True)
    planned = build.planned_paths(out, ("csv", "md", "tex"), plots=True, compare=outputs.comparison is not None,
                                  category_tasks=[t.task for t in outputs.categories])
    assert outputs.comparison is not None and outputs.categories  # every kind of file was written
    assert sorted(planned) == sorted(outputs.paths.values())


# ---- Item 4: no orphaned temporary files ----

KILL_MID_WRITE = textwrap.dedent("""
    import os, signal, sys
    from odinw_bench.atomic import atomic_write

    def write_half_then_die(fh):
        fh.write("half of the new content")
        fh.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    atomic_write(sys.argv[1], write_half_then_die)
""")


def _temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@posix_only
def test_temp_file_of_a_writer_killed_mid_write_is_removed_by_the_next_write(tmp_path):
    target = tmp_path / "k0_s3_0123456789ab.json"
    target.write_text("old")
    proc = subprocess.run([sys.executable, "-c", KILL_MID_WRITE, str(target)], env=_env(), timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert len(_temps(tmp_path)) == 1 and target.read_text() == "old"  # the kill left an orphan, target intact

    atomic.atomic_write_text(tmp_path / "other.json", "x")  # any later write into the folder sweeps it
    assert _temps(tmp_path) == [] and target.read_text() == "old"


@posix_only
def test_temp_files_of_live_writers_are_kept_and_old_ones_of_other_hosts_go(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / f".a.json.{atomic._host()}.{sleeper.pid}.7.tmp"
        live.write_text("being written")
        elsewhere = tmp_path / ".b.json.otherhost.1.1.tmp"  # another host's writer: its pid means nothing here
        elsewhere.write_text("being written")
        abandoned = tmp_path / ".c.json.otherhost.2.2.tmp"
        abandoned.write_text("left two days ago")
        two_days_ago = time.time() - 2 * 24 * 3600
        os.utime(abandoned, (two_days_ago, two_days_ago))
        foreign = tmp_path / ".notes.tmp"  # not named like our temp files: never touched
        foreign.write_text("mine")
        folder = tmp_path / ".d.json.otherhost.3.3.tmp"  # named like one, but a folder: never touched
        folder.mkdir()
        os.utime(folder, (two_days_ago, two_days_ago))

        atomic.atomic_write_text(tmp_path / "a.json", "new")
        assert _temps(tmp_path) == sorted([live.name, elsewhere.name, foreign.name, folder.name])
    finally:
        sleeper.kill()
        sleeper.wait()
    atomic.atomic_write_text(tmp_path / "a.json", "newer")  # its writer is gone now
    assert _temps(tmp_path) == sorted([elsewhere.name, foreign.name, folder.name])


def _write_many(target: str, worker: int, count: int) -> None:
    for i in range(count):
        atomic.atomic_write_text(target, f"{worker:02d}:" + "x" * 20000 + f":{i}\n")


def test_concurrent_writers_of_one_target_never_mix_or_leave_temps(tmp_path):
    import multiprocessing

    target = tmp_path / "leaderboard.md"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_write_many, args=(str(target), w, 40)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * 4
    text = target.read_text()
    assert text.count("x") == 20000 and text.endswith(":39\n")
    assert _temps(tmp_path) == []


# ---- Item 5: permissions as open() gives them ----


@pytest.fixture(params=[0o022, 0o002], ids=["umask022", "umask002"])
def umask(request):
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@posix_only
def test_outputs_respect_the_umask(tmp_path, umask):
    from odinw_bench.report import build
    from odinw_bench.report.grid import build_report

    expected = 0o666 & ~umask
    record = make_test_record()
    path = write_record(record_path(tmp_path, record), record)
    write_predictions(tmp_path / "predictions.json", [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 2, 2],
                                                      "score": 0.5}])
    csv_path = tmp_path / "leaderboard.csv"
    leaderboard.append_leaderboard_row(csv_path, record)
    assert _mode(csv_path) == expected  # created by an append
    leaderboard.append_leaderboard_row(csv_path, {**record, "metrics": {"AP": 0.9}})  # rewritten atomically
    assert float(_rows(csv_path)[0]["AP"]) == pytest.approx(0.9)
    outputs = build.produce(build_report([record]), tmp_path / "report/", formats=("csv", "md", "tex"), plots=True)
    written = [path, tmp_path / "predictions.json", csv_path, *outputs.paths.values()]
    assert {str(p): oct(_mode(p)) for p in written} == {str(p): oct(expected) for p in written}


@posix_only
def test_weights_written_by_safetensors_respect_the_umask(tmp_path, umask):
    """safetensors recreates the file it writes (0600); the atomic target gives it open()'s mode back."""
    import torch
    from safetensors.torch import save_file

    target = tmp_path / "weights.safetensors"
    with atomic.atomic_target(target) as tmp:
        save_file({"w": torch.zeros(2)}, str(tmp))
    assert _mode(target) == 0o666 & ~umask


@posix_only
def test_a_rewrite_keeps_the_mode_of_the_file_it_replaces(tmp_path):
    target = tmp_path / "record.json"
    atomic.atomic_write_text(target, json.dumps({"a": 1}))
    target.chmod(0o640)  # the user restricted it: a rewrite must not widen it
    atomic.atomic_write_text(target, json.dumps({"a": 2}))
    assert _mode(target) == 0o640 and json.loads(target.read_text()) == {"a": 2}
