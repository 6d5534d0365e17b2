"""Aggregation of run records into a leaderboard grid: over seeds per cell, then over the tasks of a suite.

Statistics (stated in every table header):

- A *cell* is one (model, regime, shots, task). Its runs must agree on task version, evaluated split, prompt
  variant and checkpoint; a cell whose runs disagree is *mixed* and never merged.
- Per cell: n seeds, mean, sample std (``ddof=1``; NaN for n = 1, shown as the mean alone), and the 95%
  confidence half-width ``t(0.975, n - 1) * std / sqrt(n)`` with Student's t quantile (``scipy.stats.t``): with
  3 seeds t = 4.30, where the normal approximation's 1.96 would give an interval 2.2x too narrow.
- Zero-shot rows (regime ``zero-shot``): an evaluation without training does not depend on the seed, so a cell
  needs one run, whatever seeds the other rows have. Runs of one zero-shot cell (several seeds of older records,
  or one run recorded under several seeds) are one result: their mean is shown without ± (std and CI NaN), and a
  note says so if their values differ.
- Suite average = unweighted mean of the task means (as GLIP/ODinW). Its std is the std over seeds of the
  per-seed suite means, defined when every task has the same seeds (NaN otherwise); its CI uses the same rule.
- Values are the chosen metric × 100 (AP points), except in the per-run CSV, which keeps record values.
- An incomplete grid (a task missing, a task with fewer seeds than the others or than requested, a mixed cell)
  raises a UserError listing the cells, unless ``allow_partial``; then those cells are marked and the suite
  average is flagged partial.

Example::

    from odinw_bench.results import records
    from odinw_bench.report.grid import build_report

    rep = build_report(records.iter_records(["results/runs"]), tasks=["aquarium", "pothole"], suite="mine")
    print(rep.suite_stats)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from odinw_bench.errors import UserError
from odinw_bench.results.leaderboard import SEARCHED_SUFFIX, leaderboard_row

logger = logging.getLogger(__name__)

CI_LEVEL = 0.95  # two-sided confidence level of the ``ci95`` half-widths
SCALE = 100.0  # tables show AP points, as the GLIP/ODinW papers do
ROW_KEYS = ("model", "regime", "shots")
# Runs of one cell must agree on these; different values are never averaged together.
PROTOCOL_KEYS = ("task_version", "split", "prompt", "checkpoint_sha256")
GROUP_KEYS = (*ROW_KEYS, "task", *PROTOCOL_KEYS)
ZERO_SHOT = "zero-shot"
REGIME_ORDER = (ZERO_SHOT, "linear-probe", "linear-probe-cached", "prompt", "deep-prompt", "lora-language", "lora",
                "language", "full")
# Zero-shot runs of one cell whose values differ by more than this (AP points) are named in the notes.
_ZERO_SHOT_SPREAD = 1e-6


@dataclass
class Cell:
    """Seed statistics of one (row, task), scaled by :data:`SCALE`.

    ``status`` is ``ok``, ``partial`` (fewer seeds than expected), ``missing`` or ``mixed``; ``run_ids`` are the
    runs the statistics come from.
    """

    status: str
    mean: float = math.nan
    std: float = math.nan
    ci95: float = math.nan
    seeds: tuple[int, ...] = ()
    values: dict[int, float] = field(default_factory=dict)
    protocol: dict[str, Any] = field(default_factory=dict)
    run_ids: tuple[str, ...] = ()


@dataclass
class Report:
    """Everything a leaderboard shows.

    Attributes:
        metric: Metric key aggregated (``AP``).
        suite: Name of the suite-average column.
        tasks: Task names in column order.
        display: Task name -> column label.
        rows: Row keys (model, regime, shots) in display order.
        cells: (row, task) -> :class:`Cell`.
        suite_stats: row -> dict(mean, std, ci95, n_tasks, n_seeds, partial).
        runs: One row per run (pandas DataFrame, record values unscaled).
        problems: Human-readable list of incomplete or mixed cells (empty for a complete grid).
        notes: Other remarks (runs ignored, failed runs).
        category_ap: run_id -> {category: per-category metric value (unscaled, None where undefined)}.
    """

    metric: str
    suite: str
    tasks: list[str]
    display: dict[str, str]
    rows: list[tuple]
    cells: dict[tuple, Cell]
    suite_stats: dict[tuple, dict[str, Any]]
    runs: Any
    problems: list[str]
    notes: list[str]
    category_ap: dict[str, dict[str, float | None]] = field(default_factory=dict)


def records_to_frame(records: Iterable[Any], metric: str = "AP"):
    """One row per run: the leaderboard columns, ``task_display``, ``path`` and ``value`` (= ``metrics[metric]``).

    Args:
        records: Run records, or ``(path, record)`` pairs as :func:`odinw_bench.results.records.iter_records` yields.
        metric: Metric key copied into ``value`` (NaN where a run lacks it).
    """
    import pandas as pd

    rows = []
    for item in records:
        path, record = item if isinstance(item, tuple) else (None, item)
        row = leaderboard_row(record)
        row["shots"] = str(row["shots"])
        row["task_display"] = record["task"].get("display_name") or record["task"]["name"]
        row["value"] = record["metrics"].get(metric)
        row["error"] = record.get("error")
        row["path"] = None if path is None else str(path)
        rows.append(row)
    frame = pd.DataFrame(rows)
    if not rows:
        return frame
    frame["value"] = pd.to_numeric(frame["value"], errors="coerce")
    # None in checkpoint/prompt would vanish from groupby keys; give them a visible value instead.
    frame["checkpoint_sha256"] = frame["checkpoint_sha256"].fillna("none")
    return frame


def build_report(
    records: Iterable[Any],
    *,
    tasks: Sequence[str] | None = None,
    suite: str = "mean",
    metric: str = "AP",
    seeds: Sequence[int] | None = None,
    prompts: Mapping[str, str] | None = None,
    display: Mapping[str, str] | None = None,
    allow_partial: bool = False,
) -> Report:
    """Aggregate run records into a leaderboard.

    Args:
        records: Run records or ``(path, record)`` pairs.
        tasks: The suite's task names, in column order. None: every task found in the records.
        suite: Label of the suite-average column (``odinw13``).
        metric: Metric key to aggregate.
        seeds: Seeds every cell must have. None: the union of the seeds run in that row (failed runs count).
        prompts: Task -> prompt variant the suite uses; runs with another variant are left out (and noted).
            Tasks not listed accept any variant, but one cell never mixes two.
        display: Task -> column label; defaults to the records' ``display_name``.
        allow_partial: Report an incomplete grid, marking its cells, instead of raising.

    Raises:
        UserError: No usable runs; one seed of one cell run twice with different settings; or an incomplete
            grid without ``allow_partial`` (the message lists every missing cell).
    """
    records = list(records)  # read twice: the flat frame and the per-category values
    runs = records_to_frame(records, metric)
    if runs.empty:
        raise UserError("no run records to report")
    if runs.loc[runs["status"] == "ok", "value"].isna().all():
        raise UserError(f"no successful run has metric {metric!r}", field="metric")
    notes: list[str] = []
    runs = _select_runs(runs, tasks, prompts, notes)
    task_list = list(tasks) if tasks else sorted(runs["task"].unique())
    if suite in task_list:  # the suite column must not collide with a task column
        suite = "mean"
    labels = dict(zip(runs["task"], runs["task_display"]))
    labels = {t: (display or {}).get(t) or labels.get(t, t) for t in task_list}
    _refuse_duplicates(runs)
    rep = Report(metric, suite, task_list, labels, [], {}, {}, runs, [], notes, category_values(records, metric))
    _fill_grid(rep, seeds)
    if rep.problems and not allow_partial:
        listing = "\n  ".join(rep.problems)
        raise UserError(
            f"incomplete grid ({len(rep.problems)} cells); run the missing cells or pass --allow-partial:\n  {listing}"
        )
    return rep


def category_values(records: Iterable[Any], metric: str = "AP") -> dict[str, dict[str, float | None]]:
    """run_id -> {category: value} from the records' ``<metric>-<category>`` metrics (``AP-fish``), in record order."""
    prefix = f"{metric}-"
    out = {}
    for item in records:
        record = item[1] if isinstance(item, tuple) else item
        metrics = record["metrics"]
        out[record["run_id"]] = {k[len(prefix):]: metrics[k] for k in metrics if k.startswith(prefix)}
    return out


def _fill_grid(rep: Report, seeds: Sequence[int] | None) -> None:
    """Compute every (row, task) cell and each row's suite average; collect the incomplete cells."""
    by_row = {tuple(key): frame for key, frame in rep.runs.groupby(list(ROW_KEYS))}
    rep.rows = sorted(by_row, key=row_order)
    for row in rep.rows:
        in_row = by_row[row]
        zero_shot = is_zero_shot(row)
        if zero_shot:
            expected: tuple[int, ...] = ()  # one run is the whole result; the seed changes nothing
        else:
            expected = tuple(sorted(seeds)) if seeds else tuple(sorted(int(s) for s in in_row["seed"].unique()))
        for task in rep.tasks:
            task_runs = in_row[in_row["task"] == task]
            cell, problem = _make_cell(task_runs, expected, zero_shot=zero_shot)
            rep.cells[(row, task)] = cell
            if problem:
                rep.problems.append(f"{row_label(row)} | {task}: {problem}")
            spread = _spread(task_runs, cell) if zero_shot else 0.0
            if spread > _ZERO_SHOT_SPREAD:
                rep.notes.append(f"{row_label(row)} | {task}: its {len(cell.run_ids)} zero-shot runs differ by up "
                                 f"to {spread:.2f} AP points; the table shows their mean")
        rep.suite_stats[row] = _suite_stats([rep.cells[(row, t)] for t in rep.tasks], zero_shot=zero_shot)


def is_zero_shot(row: tuple) -> bool:
    """Whether a (model, regime, shots) row is zero-shot: one result per cell, no spread over seeds."""
    return row[1] == ZERO_SHOT


def _spread(task_runs, cell: Cell) -> float:
    """Largest difference (AP points) between the runs behind a cell."""
    values = task_runs.loc[task_runs["run_id"].isin(cell.run_ids), "value"] * SCALE
    return float(values.max() - values.min()) if len(values) else 0.0


def _select_runs(runs, tasks, prompts, notes: list[str]):
    """Drop runs outside the suite's tasks or prompt variants, saying so in ``notes``."""
    if tasks:
        outside = runs[~runs["task"].isin(list(tasks))]
        if len(outside):
            names = ", ".join(sorted(set(outside["task"])))
            notes.append(f"ignored {len(outside)} runs of tasks outside the suite: {names}")
        runs = runs[runs["task"].isin(list(tasks))]
    if prompts:
        wanted = runs["task"].map(lambda t: prompts.get(t))
        other = wanted.notna() & (runs["prompt"] != wanted)
        if other.any():
            notes.append(f"ignored {int(other.sum())} runs with a prompt variant other than the suite's")
        runs = runs[~other]
    if runs.empty:
        raise UserError("no run records for the requested tasks and prompt variants")
    return runs


def _refuse_duplicates(runs) -> None:
    """One seed of one cell must come from one run: two would be counted twice in the mean.

    Zero-shot cells are exempt: their runs are one result whatever their seeds (see :func:`_make_cell`).
    """
    ok = runs[(runs["status"] == "ok") & (runs["regime"] != ZERO_SHOT)]
    dup = ok[ok.duplicated([*GROUP_KEYS, "seed"], keep=False)]
    if dup.empty:
        return
    lines = [
        f"{row_label(tuple(r[k] for k in ROW_KEYS))} | {r['task']} seed {r['seed']}: run {r['run_id']} ({r['path']})"
        for _, r in dup.iterrows()
    ]
    raise UserError(
        "the same cell and seed has several runs (different configs?); keep one of each:\n  " + "\n  ".join(lines)
    )


def _make_cell(task_runs, expected: tuple[int, ...], *, zero_shot: bool = False) -> tuple[Cell, str | None]:
    """Statistics of one cell and, if it is incomplete or mixed, a description of the problem.

    A zero-shot cell keeps one run per run id (a run recorded under several seeds counts once) and has no std.
    """
    ok = task_runs[(task_runs["status"] == "ok") & task_runs["value"].notna()]
    failed = sorted(int(s) for s in task_runs.loc[task_runs["status"] != "ok", "seed"])
    failed_text = f" (failed: seeds {_join(failed)})" if failed else ""
    if ok.empty:
        return Cell("missing"), f"no runs{failed_text}"
    protocols = ok[list(PROTOCOL_KEYS)].drop_duplicates()
    if len(protocols) > 1:
        differing = [k for k in PROTOCOL_KEYS if protocols[k].nunique() > 1]
        desc = "; ".join(f"{k} {' / '.join(map(str, sorted(protocols[k].unique(), key=str)))}" for k in differing)
        return Cell("mixed"), f"runs differ in {desc}; not merged"
    if zero_shot:
        ok = ok.drop_duplicates("run_id")
        values = {int(s): float(v) * SCALE for s, v in zip(ok["seed"], ok["value"])}
        mean = sum(float(v) * SCALE for v in ok["value"]) / len(ok)
        cell = Cell("ok", mean, math.nan, math.nan, tuple(sorted(values)), values)
    else:
        values = {int(s): float(v) * SCALE for s, v in zip(ok["seed"], ok["value"])}
        cell = _seed_stats(values)
    cell.protocol = {k: protocols.iloc[0][k] for k in PROTOCOL_KEYS}
    cell.run_ids = tuple(ok["run_id"])
    missing = sorted(set(expected) - set(values))
    if missing:
        cell.status = "partial"
        return cell, f"missing seeds {_join(missing)}{failed_text}; has {_join(sorted(values))}"
    return cell, None


def t_quantile(n: int, level: float = CI_LEVEL) -> float:
    """Two-sided Student's t quantile for ``n`` values (``n - 1`` degrees of freedom); NaN for n < 2."""
    if n < 2:
        return math.nan
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2, n - 1))


def ci_half_width(std: float, n: int, level: float = CI_LEVEL) -> float:
    """Half-width of the ``level`` confidence interval of a mean of ``n`` values: ``t * std / sqrt(n)``."""
    if n < 2 or math.isnan(std):
        return math.nan
    return t_quantile(n, level) * std / math.sqrt(n)


def _seed_stats(values: Mapping[int, float]) -> Cell:
    """Mean, sample std (ddof=1, NaN for one seed) and 95% CI half-width (Student's t) of per-seed values."""
    n = len(values)
    mean = sum(values.values()) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values.values()) / (n - 1)) if n > 1 else math.nan
    return Cell("ok", mean, std, ci_half_width(std, n), tuple(sorted(values)), dict(values))


def _suite_stats(cells: list[Cell], *, zero_shot: bool = False) -> dict[str, Any]:
    """Suite average over the usable cells of one row (see module docstring); no std for zero-shot."""
    used = [c for c in cells if c.status in ("ok", "partial")]
    stats = {"mean": math.nan, "std": math.nan, "ci95": math.nan, "n_tasks": len(used), "n_seeds": 0}
    stats["partial"] = len(used) < len(cells) or any(c.status != "ok" for c in cells)
    if not used:
        return stats
    stats["mean"] = sum(c.mean for c in used) / len(used)
    if zero_shot:
        stats["n_seeds"] = 1  # one evaluation per task
        return stats
    seed_sets = {c.seeds for c in used}
    if len(seed_sets) == 1:
        seeds = next(iter(seed_sets))
        per_seed = {s: sum(c.values[s] for c in used) / len(used) for s in seeds}
        by_seed = _seed_stats(per_seed)
        stats.update(std=by_seed.std, ci95=by_seed.ci95, n_seeds=len(seeds))
    return stats


def _join(items: Iterable[Any]) -> str:
    return ",".join(str(i) for i in items)


def row_order(row: tuple) -> tuple:
    """Sort key of a (model, regime, shots) row: model, regimes in protocol order, shots numerically then 'all'."""
    model, regime, shots = row
    shots_rank = (0, int(shots), "") if str(shots).isdigit() else (1, 0, str(shots))
    return (model, regime_rank(regime), shots_rank)


def regime_rank(regime: str) -> tuple:
    """Sort key of a regime label: protocol order, a searched one (``prompt+search``) right after its regime."""
    base = regime.removesuffix(SEARCHED_SUFFIX)
    return (REGIME_ORDER.index(base) if base in REGIME_ORDER else len(REGIME_ORDER), base, base != regime)


def row_label(row: tuple) -> str:
    """``glip-t prompt 1-shot`` / ``... full data``."""
    model, regime, shots = row
    return f"{model} {regime} {'full data' if shots == 'all' else f'{shots}-shot'}"


def join_values(items: Iterable[Any]) -> str:
    """Comma-joined text of ``items`` (seeds, run ids)."""
    return _join(items)


def used_run_ids(rep: Report) -> set[str]:
    """Run ids whose values enter some cell of the table (ok runs of ok/partial cells)."""
    return {run_id for cell in rep.cells.values() for run_id in cell.run_ids}


def protocol_warnings(rep: Report) -> list[str]:
    """Tasks whose rows were evaluated under different task versions, splits or prompts.

    A cell never mixes protocols (see :func:`build_report`), but two rows of one column may: e.g. zero-shot on
    ``val`` next to fine-tuning on ``test``. Such numbers sit side by side yet are not comparable, so say so. The
    one expected difference, GLIP's (zero-shot rows on the task's zero-shot split, trained rows on another),
    is said once for all the columns it concerns; any other difference gets a ``MIXED PROTOCOL`` line per column.
    """
    warnings, zero_shot_split_only = _contamination_warnings(rep), []
    for task in rep.tasks:
        by_protocol: dict[tuple, list[tuple]] = {}
        for row in rep.rows:
            cell = rep.cells[(row, task)]
            if cell.protocol:
                key = tuple(cell.protocol[k] for k in ("task_version", "split", "prompt"))
                by_protocol.setdefault(key, []).append(row)
        if len(by_protocol) <= 1:
            continue
        if _zero_shot_split_only(by_protocol):
            zero_shot_split_only.append(task)
            continue
        parts = [f"v{v} split={s} prompt={p} ({'; '.join(map(row_label, rows))})" for (v, s, p), rows in sorted(
            by_protocol.items(), key=lambda kv: tuple(map(str, kv[0])))]  # fmt: skip
        warnings.append(f"MIXED PROTOCOL in column {rep.display[task]}: " + " vs ".join(parts))
    if zero_shot_split_only:
        splits = {zero: set() for zero in (True, False)}
        for (row, task), cell in rep.cells.items():
            if task in zero_shot_split_only and cell.protocol:
                splits[is_zero_shot(row)].add(str(cell.protocol["split"]))
        warnings.append(
            f"zero-shot rows are scored on {'/'.join(sorted(splits[True]))}, the trained rows on "
            f"{'/'.join(sorted(splits[False]))}, in columns {', '.join(rep.display[t] for t in zero_shot_split_only)} "
            "(GLIP's protocol: zero-shot on the validation split, fine-tuned models on test)")
    return warnings


def _contamination_warnings(rep: Report) -> list[str]:
    """A line per model whose pre-training data included ODinW (its preset says so, with the source)."""
    from odinw_bench.models.catalog import pretraining_includes_odinw

    models = sorted({row[0] for row in rep.rows})
    return [f"NOT ZERO-SHOT: {model}'s pre-training data included ODinW-35 (see its preset's source), so its "
            "zero-shot rows are not zero-shot and its fine-tuned rows start from weights that saw these tasks"
            for model in models if pretraining_includes_odinw(str(model))]


def _zero_shot_split_only(by_protocol: Mapping[tuple, list[tuple]]) -> bool:
    """Whether zero-shot rows share one protocol, trained rows another, and the two differ only in split."""
    groups: dict[bool, set[tuple]] = {True: set(), False: set()}
    for key, rows in by_protocol.items():
        for row in rows:
            groups[is_zero_shot(row)].add(key)
    if len(groups[True]) != 1 or len(groups[False]) != 1:
        return False
    (zero,), (trained,) = groups[True], groups[False]
    return (zero[0], zero[2]) == (trained[0], trained[2]) and zero[1] != trained[1]
