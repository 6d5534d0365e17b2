"""Sweeps: a grid of runs (tasks × shots × seeds × regimes × models), planned, resumed and launched.

Planning expands the grid into cells and computes each cell's run id without running anything
(:func:`odinw_bench.runs.identity.run_identity`, the function ``run`` itself uses). A cell is then

- ``done``: a record with its run id and status ``ok`` exists under the output folder: it is skipped;
- ``failed``: its record has status ``failed`` (or cannot be read): it is reported, and rerun only when asked;
- ``left``: no record yet: it runs.

The records are also the source of the leaderboard: before anything runs, :func:`repair_rows` restores the
rows of records whose run was killed after writing its record (such a cell is done and would never run again).

Shots 0 is zero-shot: such cells get the ``zero-shot`` regime whatever ``regimes`` says, one per task × model
(× its checkpoint, split and prompt), whatever ``seeds`` says: without training neither the regime nor the seed
changes anything. The cell runs under the first seed; its run id leaves the seed out
(:func:`odinw_bench.runs.identity.identity_seed`), so a zero-shot record written under any seed counts as done.
The report shows such rows without ±.

Example::

    from odinw_bench.runs.sweep import GridSpec, plan_sweep, run_sweep
    from odinw_bench.runs.launchers import LocalLauncher

    spec = GridSpec(tasks="demo", shots=[0, 1], seeds=[3, 30], regimes=["prompt"], models=["glip-micro"],
                    output=Path("results"), run_args=["--data-root", "data"], overrides=["schedule.max_epochs=1"])
    cells = plan_sweep(spec)
    summary = run_sweep(cells, LocalLauncher(), print)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from odinw_bench.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    from odinw_bench.runs.launchers import CellFn, Launcher
    from odinw_bench.runs.request import RunRequest

logger = logging.getLogger(__name__)

ZERO_SHOT = "zero-shot"
STATES = ("done", "failed", "left")


@dataclass(frozen=True)
class GridSpec:
    """What to sweep.

    Attributes:
        tasks: Task names, suites or task YAML paths, comma-separated (as ``run --task``).
        shots: Shot counts (ints, ``0`` = zero-shot) and/or ``"all"``.
        seeds: Seeds.
        regimes: Regimes for shots > 0 (``zero-shot`` may be listed; it only pairs with shots 0).
        models: Model presets; empty when ``config`` names an official GLIP YAML instead.
        output: Results folder of every run.
        config: Official GLIP YAML (instead of ``models``).
        run_args: Further ``run`` options passed to every cell (``--data-root``, ``--checkpoint``, ...).
        overrides: ``key=value`` recipe overrides passed to every cell.
    """

    tasks: str
    shots: Sequence[int | str]
    seeds: Sequence[int]
    regimes: Sequence[str]
    models: Sequence[str]
    output: Path
    config: str | None = None
    run_args: Sequence[str] = ()
    overrides: Sequence[str] = ()


@dataclass
class Cell:
    """One run of the grid.

    Attributes:
        task, shots, seed, regime, model: Its coordinates (model: preset name or official config stem).
        argv: Arguments of the ``run`` that performs it (exactly one run).
        run_id: Its run id; None if it cannot be known yet (a zoo checkpoint not downloaded in a dry run).
        record_path: Where its record goes.
        state: ``done``, ``failed`` or ``left`` (see the module docstring).
        error: Error text of a failed cell.
    """

    task: str
    shots: int | str
    seed: int
    regime: str
    model: str
    argv: list[str]
    run_id: str | None = None
    record_path: Path | None = None
    state: str = "left"
    error: str | None = None

    @property
    def label(self) -> str:
        return f"{self.task} k{self.shots} s{self.seed} {self.regime} {self.model}"


def parse_shots_list(text: str) -> list[int | str]:
    """``"0,1,3,all"`` -> ``[0, 1, 3, "all"]`` (order kept, repeats dropped)."""
    values: list[int | str] = []
    for item in (s.strip() for s in text.split(",") if s.strip()):
        try:
            value: int | str = "all" if item == "all" else int(item)
        except ValueError:
            raise UserError(f"shots must be integers >= 0 or 'all', got {item!r}", field="--shots") from None
        if isinstance(value, int) and value < 0:
            raise UserError(f"shots must be >= 0, got {value}", field="--shots")
        if value not in values:
            values.append(value)
    if not values:
        raise UserError("no shot count given", field="--shots")
    return values


def parse_int_list(text: str, flag: str) -> list[int]:
    """``"3,30,300"`` -> ``[3, 30, 300]`` (order kept, repeats dropped)."""
    try:
        values = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"expected comma-separated integers, got {text!r}", field=flag) from None
    if not values:
        raise UserError("empty list", field=flag)
    return list(dict.fromkeys(values))


def grid_regimes(shots: Sequence[int | str], regimes: Sequence[str]) -> dict[int | str, list[str]]:
    """The regimes each shot count runs: ``zero-shot`` alone for 0, the training regimes for the others.

    Raises:
        UserError: For unknown regimes, a zero-shot regime without shots 0, or shots > 0 with no training regime.
    """
    from odinw_bench.training.regimes import get_regime

    names = list(dict.fromkeys(get_regime(r).name for r in regimes))
    training = [r for r in names if r != ZERO_SHOT]
    if ZERO_SHOT in names and 0 not in shots:
        raise UserError("zero-shot runs are the shots-0 cells: add 0 to --shots", field="--regimes")
    if any(s != 0 for s in shots) and not training:
        raise UserError("shots > 0 need a training regime (linear-probe, prompt, full, language)", field="--regimes")
    return {s: [ZERO_SHOT] if s == 0 else training for s in shots}


def _looks_like_path(item: str) -> bool:
    # The rule `run --task` uses to tell a task YAML path from a task or suite name.
    return item.endswith((".yaml", ".yml")) or "/" in item or os.sep in item


def _task_args(tasks: str) -> dict[str, str]:
    """Task name -> what a cell passes to ``run --task`` for it (its name, or its YAML path)."""
    from odinw_bench.tasks.registry import resolve_tasks

    args: dict[str, str] = {}
    for item in (s.strip() for s in tasks.split(",") if s.strip()):
        for task, _ in resolve_tasks(item):
            args.setdefault(task.name, item if _looks_like_path(item) else task.name)
    return args


def _model_flags(spec: GridSpec) -> list[tuple[str, list[str]]]:
    if spec.config and spec.models:
        raise UserError("give --models (presets) or --config (an official GLIP YAML), not both", field="--config")
    if spec.config:
        return [(Path(spec.config).stem, ["--config", str(spec.config)])]
    if not spec.models:
        raise UserError("no model given", field="--models")
    if len(spec.models) > 1 and "--checkpoint" in spec.run_args:
        raise UserError("one --checkpoint cannot serve several models; sweep one model per checkpoint",
                        field="--checkpoint")
    return [(m, ["--model", m]) for m in dict.fromkeys(spec.models)]


def plan_sweep(spec: GridSpec, *, fetch: bool = True, check_data: bool = True) -> list[Cell]:
    """Expand the grid into cells with run ids and states (ordered by model, shots, regime, task, seed).

    Every cell's request is built by the ``run`` command's own argument handling, so a bad task, regime, model,
    prompt, split or override is one error before anything runs.

    Args:
        spec: The grid.
        fetch: Download zoo checkpoints that are not cached yet (once, here, rather than in every worker). A dry
            run passes False; its cells of such models have no run id yet.
        check_data: Refuse a grid whose data is not on disk (naming the download command). A dry run passes
            False: the plan needs no data.
    """
    from odinw_bench.runs.arguments import parse_run_args
    from odinw_bench.runs.request import requests_from_args

    task_args = _task_args(spec.tasks)
    per_shots = grid_regimes(spec.shots, spec.regimes)
    seeds = [str(s) for s in spec.seeds]
    cells: list[Cell] = []
    for model, model_flags in _model_flags(spec):
        for shots, regimes in per_shots.items():
            for regime in regimes:
                cell_seeds = seeds[:1] if regime == ZERO_SHOT else seeds  # one zero-shot run serves every seed
                group = ["--task", spec.tasks, "--shots", str(shots), "--regime", regime, *model_flags,
                         *spec.run_args, "--output", str(spec.output), "--seed", *cell_seeds]
                args = parse_run_args([*group, "--no-progress", *spec.overrides])
                for req in requests_from_args(args, check_data=check_data):
                    cells.append(_make_cell(req, task_args[req.task.name], model, model_flags, spec, fetch))
    classify(cells)
    return cells


def _make_cell(req: RunRequest, task_arg: str, model: str, model_flags: list[str], spec: GridSpec,
               fetch: bool) -> Cell:
    from odinw_bench.results.records import record_path
    from odinw_bench.runs.identity import CheckpointNotDownloaded, run_identity

    argv = ["--task", task_arg, "--shots", str(req.shots), "--seed", str(req.seed), "--regime", req.regime.name,
            *model_flags, *spec.run_args, "--output", str(spec.output)]
    if req.prompt_variant is not None and "--prompt" not in spec.run_args:
        argv += ["--prompt", req.prompt_variant]  # a suite's prompt variant, made explicit for the single task
    cell = Cell(req.task.name, req.shots, req.seed, req.regime.name, model, argv)
    try:
        ident = run_identity(req, fetch=fetch)
    except CheckpointNotDownloaded:
        ident = None
    if ident is not None:
        cell.run_id = ident.run_id
        cell.record_path = record_path(spec.output, {
            "task": {"name": req.task.name}, "model": {"name": ident.model["name"]}, "regime": req.regime.name,
            "shots": req.shots, "seed": req.seed, "run_id": ident.run_id})
        if (spec.output / "checkpoints" / ident.run_id / "last.ckpt").is_file():
            argv.append("--resume")  # a cell killed mid-training continues from its last epoch
    # Overrides last: after the flag, argparse cannot mistake them for values of an option.
    argv += ["--no-progress", *spec.overrides]
    return cell


def classify(cells: Sequence[Cell]) -> None:
    """Set each cell's state from the record at its record path (the records are the source of truth).

    A zero-shot cell is also done when a record of its run id was written under another seed (see the module
    docstring).
    """
    from odinw_bench.results.records import read_record

    for cell in cells:
        cell.state, cell.error = "left", None
        candidates = _record_candidates(cell)
        if not candidates:
            continue
        for path in candidates:  # the first ok record wins; otherwise the cell keeps the first failure
            try:
                record = read_record(path)
            except UserError as err:
                state, error = "failed", f"unreadable record: {err}"
            else:
                state, error = ("done" if record["status"] == "ok" else "failed"), record["error"]
            if cell.state == "left" or state == "done":
                cell.state, cell.error = state, error
            if state == "done":
                break


def _record_candidates(cell: Cell) -> list[Path]:
    """Existing record files of a cell: its record path, then (zero-shot) its run id under any other seed."""
    if cell.record_path is None:
        return []
    found = [cell.record_path] if cell.record_path.is_file() else []
    if cell.regime == ZERO_SHOT and cell.run_id and cell.record_path.parent.is_dir():
        pattern = f"k{cell.shots}_s*_{cell.run_id}.json"
        found += sorted(p for p in cell.record_path.parent.glob(pattern) if p != cell.record_path)
    return found


def listing(cells: Sequence[Cell]) -> str:
    """The planned cells as a table: task, shots, seed, regime, model, run id, state."""
    width = max([len("task"), *(len(c.task) for c in cells)])
    lines = [f"{'task':<{width}} {'shots':>5} {'seed':>5} {'regime':<12} {'model':<14} {'run_id':<12} state"]
    for c in cells:
        lines.append(f"{c.task:<{width}} {c.shots!s:>5} {c.seed:>5} {c.regime:<12} {c.model:<14} "
                     f"{c.run_id or '(download)':<12} {c.state}")
    return "\n".join(lines)


def counts(cells: Sequence[Cell]) -> dict[str, int]:
    """Cells per state."""
    return {state: sum(c.state == state for c in cells) for state in STATES}


@dataclass
class SweepSummary:
    """What a sweep did: ``ran`` cells that finished running, ``skipped_done``, ``skipped_failed`` (not retried),
    the errors reported by the launcher, and the final state of every cell."""

    cells: list[Cell]
    ran: int = 0
    skipped_done: int = 0
    skipped_failed: int = 0
    errors: dict[str, str] = field(default_factory=dict)
    interrupted: bool = False

    @property
    def counts(self) -> dict[str, int]:
        return counts(self.cells)

    @property
    def ok(self) -> bool:
        return self.counts["done"] == len(self.cells)

    def text(self) -> str:
        """The final summary: counts, then every cell that is not done with its reason."""
        c = self.counts
        head = "sweep interrupted" if self.interrupted else "sweep"
        lines = [f"{head}: {len(self.cells)} cells: {c['done']} done, {c['failed']} failed, {c['left']} left "
                 f"(ran {self.ran}; skipped {self.skipped_done} already done, {self.skipped_failed} failed before)"]
        for cell in self.cells:
            if cell.state != "done":
                reason = self.errors.get(cell.label) or cell.error or "not run"
                lines.append(f"  {cell.state:<6} {cell.label} {cell.run_id or ''}: {reason}")
        if c["failed"]:
            lines.append("failed cells are rerun only with --retry-failed; a rerun without it runs the left ones")
        return "\n".join(lines)


def run_sweep(cells: list[Cell], launcher: Launcher, out: Callable[[str], Any], *, retry_failed: bool = False,
              cell_fn: CellFn | None = None) -> SweepSummary:
    """Launch the cells that are not done (failed ones only with ``retry_failed``), printing progress to ``out``.

    After the launcher returns (or is interrupted: the summary is printed, then ``KeyboardInterrupt`` re-raised)
    every cell is classified again from the records on disk; a cell whose run ended without a record keeps the
    launcher's error and stays failed in the summary (on disk it is still missing, so a rerun runs it).
    """
    from odinw_bench.runs.launchers import run_cell

    todo = [c for c in cells if c.state == "left" or (retry_failed and c.state == "failed")]
    summary = SweepSummary(cells, skipped_done=sum(c.state == "done" for c in cells),
                           skipped_failed=sum(c.state == "failed" for c in cells) if not retry_failed else 0)
    for cell in todo:
        cell.state = "left"
    finished = 0

    def on_finish(index: int, result: dict) -> None:
        nonlocal finished
        finished += 1
        summary.ran = finished
        cell = todo[index]
        cell.state = "done" if result.get("status") == "ok" else "failed"
        if cell.state == "failed":
            summary.errors[cell.label] = result.get("error") or "failed"
        c = counts(cells)
        running = min(launcher.concurrency or len(todo), len(todo) - finished)
        out(f"[{finished}/{len(todo)}] {cell.state:<6} {cell.label} {cell.run_id or ''}  | done {c['done']}, "
            f"running {running}, failed {c['failed']}, left {c['left'] - running}")

    retried = "failed ones retried" if retry_failed else f"{summary.skipped_failed} failed before left alone"
    out(f"sweep: {len(cells)} cells, {len(todo)} to run, {summary.skipped_done} already done, {retried}")
    for csv_path, run_ids in repair_rows(cells).items():
        out(f"{csv_path}: restored {len(run_ids)} row(s) from their records (a run was stopped before its row)")
    try:
        if todo:
            launcher.launch([c.argv for c in todo], cell_fn or run_cell, on_finish)
    except KeyboardInterrupt:
        _reclassify(cells, summary)
        summary.interrupted = True
        out(summary.text())  # what is safe on disk, before the interrupt ends the command
        raise
    _reclassify(cells, summary)
    return summary


def repair_rows(cells: Sequence[Cell]) -> dict[Path, list[str]]:
    """Restore the leaderboard rows of the records in the cells' output folders; return the run ids per file.

    A cell counts as done from its record alone, so a run killed after its record but before its row would
    otherwise never get the row: the rows are derived from the records again before anything runs.
    """
    from odinw_bench.results.leaderboard import repair_leaderboard

    # record_path is <output>/runs/<task>/<model>/<regime>/<file> (results.records.record_path).
    outputs = dict.fromkeys(c.record_path.parents[4] for c in cells if c.record_path is not None)
    repaired = {out / "leaderboard.csv": repair_leaderboard(out / "leaderboard.csv", out / "runs") for out in outputs}
    return {path: run_ids for path, run_ids in repaired.items() if run_ids}


def _reclassify(cells: Sequence[Cell], summary: SweepSummary) -> None:
    """Read the states back from disk; a cell that reported a failure but left no record stays failed."""
    reported = {c.label: c.state for c in cells}
    classify(cells)
    for cell in cells:
        if cell.state == "left" and reported[cell.label] == "failed":
            cell.state = "failed"  # e.g. bad input or a killed job: no record, but never silently dropped
            cell.error = summary.errors.get(cell.label)
