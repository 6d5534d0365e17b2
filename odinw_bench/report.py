"""Leaderboards from run records: aggregate over seeds, then over the tasks of a suite.

Statistics (stated in every table header):

- A *cell* is one (model, regime, shots, task). Its runs must agree on task version, evaluated split, prompt
  variant and checkpoint; a cell whose runs disagree is *mixed* and never merged.
- Per cell: n seeds, mean, sample std (``ddof=1``; NaN for n = 1, shown as the mean alone), and the 95%
  confidence half-width ``1.96 * std / sqrt(n)`` (normal approximation, as FsDet's ``aggregate_seeds.py``).
- Suite average = unweighted mean of the task means (as GLIP/ODinW). Its std is the std over seeds of the
  per-seed suite means, defined when every task has the same seeds (NaN otherwise); its CI uses the same rule.
- Values are the chosen metric × 100 (AP points), except in the per-run CSV, which keeps record values.
- An incomplete grid (a task missing, a task with fewer seeds than the others or than requested, a mixed cell)
  raises a UserError listing the cells, unless ``allow_partial``; then those cells are marked and the suite
  average is flagged partial.

Example::

    from odinw_bench import report, results

    records = [rec for _, rec in results.iter_records(["results/runs"])]
    rep = report.build_report(records, tasks=["aquarium", "pothole"], suite="mine")
    print(report.format_table(rep))
    report.write_report(rep, "results/leaderboard")
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from odinw_bench.errors import UserError
from odinw_bench.leaderboard import leaderboard_row
from odinw_bench.results import atomic_write_text

logger = logging.getLogger(__name__)

Z95 = 1.96  # two-sided 95% quantile of the normal distribution (FsDet convention)
SCALE = 100.0  # tables show AP points, as the GLIP/ODinW papers do
ROW_KEYS = ("model", "regime", "shots")
# Runs of one cell must agree on these; different values are never averaged together.
PROTOCOL_KEYS = ("task_version", "split", "prompt", "checkpoint_sha256")
GROUP_KEYS = (*ROW_KEYS, "task", *PROTOCOL_KEYS)
_REGIME_ORDER = ("zero_shot", "linear_probe", "prompt_tuning", "full")


@dataclass
class Cell:
    """Seed statistics of one (row, task), scaled by :data:`SCALE`.

    ``status`` is ``ok``, ``partial`` (fewer seeds than expected), ``missing`` or ``mixed``.
    """

    status: str
    mean: float = math.nan
    std: float = math.nan
    ci95: float = math.nan
    seeds: tuple[int, ...] = ()
    values: dict[int, float] = field(default_factory=dict)
    protocol: dict[str, Any] = field(default_factory=dict)


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


def records_to_frame(records: Iterable[Any], metric: str = "AP"):
    """One row per run: the leaderboard columns, ``task_display``, ``path`` and ``value`` (= ``metrics[metric]``).

    Args:
        records: Run records, or ``(path, record)`` pairs as :func:`odinw_bench.results.iter_records` yields.
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
    rep = Report(metric, suite, task_list, labels, [], {}, {}, runs, [], notes)
    _fill_grid(rep, seeds)
    if rep.problems and not allow_partial:
        listing = "\n  ".join(rep.problems)
        raise UserError(
            f"incomplete grid ({len(rep.problems)} cells); run the missing cells or pass --allow-partial:\n  {listing}"
        )
    return rep


def _fill_grid(rep: Report, seeds: Sequence[int] | None) -> None:
    """Compute every (row, task) cell and each row's suite average; collect the incomplete cells."""
    by_row = {tuple(key): frame for key, frame in rep.runs.groupby(list(ROW_KEYS))}
    rep.rows = sorted(by_row, key=_row_order)
    for row in rep.rows:
        in_row = by_row[row]
        expected = tuple(sorted(seeds)) if seeds else tuple(sorted(int(s) for s in in_row["seed"].unique()))
        for task in rep.tasks:
            cell, problem = _make_cell(in_row[in_row["task"] == task], expected)
            rep.cells[(row, task)] = cell
            if problem:
                rep.problems.append(f"{_row_label(row)} | {task}: {problem}")
        rep.suite_stats[row] = _suite_stats([rep.cells[(row, t)] for t in rep.tasks])


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
    """One seed of one cell must come from one run: two would be counted twice in the mean."""
    ok = runs[runs["status"] == "ok"]
    dup = ok[ok.duplicated([*GROUP_KEYS, "seed"], keep=False)]
    if dup.empty:
        return
    lines = [
        f"{_row_label(tuple(r[k] for k in ROW_KEYS))} | {r['task']} seed {r['seed']}: run {r['run_id']} ({r['path']})"
        for _, r in dup.iterrows()
    ]
    raise UserError(
        "the same cell and seed has several runs (different configs?); keep one of each:\n  " + "\n  ".join(lines)
    )


def _make_cell(task_runs, expected: tuple[int, ...]) -> tuple[Cell, str | None]:
    """Statistics of one cell and, if it is incomplete or mixed, a description of the problem."""
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
    values = {int(s): float(v) * SCALE for s, v in zip(ok["seed"], ok["value"])}
    cell = _seed_stats(values)
    cell.protocol = {k: protocols.iloc[0][k] for k in PROTOCOL_KEYS}
    missing = sorted(set(expected) - set(values))
    if missing:
        cell.status = "partial"
        return cell, f"missing seeds {_join(missing)}{failed_text}; has {_join(sorted(values))}"
    return cell, None


def _seed_stats(values: Mapping[int, float]) -> Cell:
    """Mean, sample std (ddof=1, NaN for one seed) and 95% CI half-width of per-seed values."""
    n = len(values)
    mean = sum(values.values()) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values.values()) / (n - 1)) if n > 1 else math.nan
    ci95 = Z95 * std / math.sqrt(n) if n > 1 else math.nan
    return Cell("ok", mean, std, ci95, tuple(sorted(values)), dict(values))


def _suite_stats(cells: list[Cell]) -> dict[str, Any]:
    """Suite average over the usable cells of one row (see module docstring)."""
    used = [c for c in cells if c.status in ("ok", "partial")]
    stats = {"mean": math.nan, "std": math.nan, "ci95": math.nan, "n_tasks": len(used), "n_seeds": 0}
    stats["partial"] = len(used) < len(cells) or any(c.status != "ok" for c in cells)
    if not used:
        return stats
    stats["mean"] = sum(c.mean for c in used) / len(used)
    seed_sets = {c.seeds for c in used}
    if len(seed_sets) == 1:
        seeds = next(iter(seed_sets))
        per_seed = {s: sum(c.values[s] for c in used) / len(used) for s in seeds}
        by_seed = _seed_stats(per_seed)
        stats.update(std=by_seed.std, ci95=by_seed.ci95, n_seeds=len(seeds))
    return stats


def _join(items: Iterable[Any]) -> str:
    return ",".join(str(i) for i in items)


def _row_order(row: tuple) -> tuple:
    model, regime, shots = row
    regime_rank = _REGIME_ORDER.index(regime) if regime in _REGIME_ORDER else len(_REGIME_ORDER)
    shots_rank = (0, int(shots), "") if str(shots).isdigit() else (1, 0, str(shots))
    return (model, regime_rank, regime, shots_rank)


def _row_label(row: tuple) -> str:
    model, regime, shots = row
    return f"{model} {regime} {'full data' if shots == 'all' else f'{shots}-shot'}"


# ---- Rendering ----


def header_lines(rep: Report) -> list[str]:
    """The statistics behind the numbers, printed above every table."""
    return [
        f"metric: {rep.metric} x {SCALE:g}; cell = mean ± sample std (ddof=1) over seeds (one seed: mean alone)",
        f"95% CI half-width (CSV) = {Z95}·std/√n (normal approximation, as FsDet)",
        f"{rep.suite} = unweighted mean of the {len(rep.tasks)} task means; its ± is the std over seeds of the "
        "per-seed suite means (only when all tasks share the seeds)",
    ]


def _fmt(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "—"
    return f"{mean:.1f}" if math.isnan(std) else f"{mean:.1f} ± {std:.1f}"


def _cell_text(cell: Cell) -> str:
    if cell.status == "missing":
        return "—"
    if cell.status == "mixed":
        return "mixed"
    return _fmt(cell.mean, cell.std) + ("*" if cell.status == "partial" else "")


def _suite_text(rep: Report, row: tuple) -> str:
    stats = rep.suite_stats[row]
    text = _fmt(stats["mean"], stats["std"])
    if stats["partial"] and stats["n_tasks"]:
        text += f" (partial {stats['n_tasks']}/{len(rep.tasks)})"
    return text


def display_rows(rep: Report) -> tuple[list[str], list[list[str]]]:
    """Header and string rows of the leaderboard: model, regime, shots, one column per task, the suite."""
    header = ["model", "regime", "shots", *(rep.display[t] for t in rep.tasks), rep.suite]
    body = [
        [*map(str, row), *(_cell_text(rep.cells[(row, t)]) for t in rep.tasks), _suite_text(rep, row)]
        for row in rep.rows
    ]
    return header, body


def _legend(rep: Report) -> list[str]:
    lines = []
    if rep.problems:
        lines.append("PARTIAL GRID: * = fewer seeds than expected, — = missing, mixed = runs not mergeable:")
        lines += [f"  {p}" for p in rep.problems]
    lines += rep.notes
    # Which task version, split and prompt the numbers come from, grouped so that odd ones stand out.
    groups: dict[str, set[str]] = {}
    for (_, task), c in rep.cells.items():
        if c.protocol:
            key = f"v{c.protocol['task_version']} split={c.protocol['split']} prompt={c.protocol['prompt']}"
            groups.setdefault(key, set()).add(task)
    lines += [f"{key}: {', '.join(sorted(tasks))}" for key, tasks in sorted(groups.items())]
    return lines


def format_table(rep: Report) -> str:
    """A plain-text table for the terminal, with the statistics header and the partial-grid legend."""
    header, body = display_rows(rep)
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = [*header_lines(rep), ""]
    lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in body]
    return "\n".join([*lines, "", *_legend(rep)]) + "\n"


def to_markdown(rep: Report) -> str:
    """The leaderboard as a Markdown pipe table, with the statistics header and legend as text."""
    header, body = display_rows(rep)

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    out = [f"{h}  " for h in header_lines(rep)] + ["", line(header), line(["---"] * 3 + ["---:"] * (len(header) - 3))]
    out += [line(r) for r in body]
    return "\n".join([*out, "", *(f"{x}  " for x in _legend(rep))]) + "\n"


def summary_frame(rep: Report):
    """Long table: one row per (row, task) cell plus one suite row per row, values x SCALE."""
    import pandas as pd

    records = []
    for row in rep.rows:
        base = dict(zip(ROW_KEYS, row), metric=f"{rep.metric} x{SCALE:g}")
        for task in rep.tasks:
            c = rep.cells[(row, task)]
            records.append({**base, "task": task, **{k: c.protocol.get(k) for k in PROTOCOL_KEYS},
                            "status": c.status, "n": len(c.seeds), "seeds": _join(c.seeds),
                            "mean": c.mean, "std": c.std, "ci95": c.ci95})  # fmt: skip
        st = rep.suite_stats[row]
        records.append({**base, "task": rep.suite, "status": "partial" if st["partial"] else "ok",
                        "n": st["n_seeds"], "n_tasks": st["n_tasks"],
                        "mean": st["mean"], "std": st["std"], "ci95": st["ci95"]})  # fmt: skip
    return pd.DataFrame(records)


def wide_frame(rep: Report):
    """Wide table: rows (model, regime, shots); per task mean/std/n/status; suite mean/std/ci95/n_tasks/partial."""
    import pandas as pd

    records = []
    for row in rep.rows:
        rec: dict[str, Any] = dict(zip(ROW_KEYS, row), metric=f"{rep.metric} x{SCALE:g}")
        for task in rep.tasks:
            c = rep.cells[(row, task)]
            rec.update({f"{task}_mean": c.mean, f"{task}_std": c.std, f"{task}_n": len(c.seeds),
                        f"{task}_status": c.status})  # fmt: skip
        st = rep.suite_stats[row]
        for key in ("mean", "std", "ci95", "n_tasks"):
            rec[f"{rep.suite}_{key}"] = st[key]
        rec["partial"] = st["partial"]
        records.append(rec)
    return pd.DataFrame(records)


def output_paths(out: str | Path) -> dict[str, Path]:
    """Files written for ``--out``: a folder (existing, or ending in ``/``) or a path prefix.

    Folder: ``leaderboard.csv``, ``leaderboard.md``, ``summary.csv``, ``runs.csv`` inside it. Prefix ``P``
    (a ``.csv``/``.md`` suffix is dropped): ``P.csv``, ``P.md``, ``P_summary.csv``, ``P_runs.csv``.
    """
    text = str(out)
    if Path(text).is_dir() or text.endswith(("/", "\\")):
        folder = Path(text)
        return {k: folder / f"{n}" for k, n in
                (("wide", "leaderboard.csv"), ("markdown", "leaderboard.md"), ("long", "summary.csv"),
                 ("runs", "runs.csv"))}  # fmt: skip
    prefix = Path(text)
    if prefix.suffix in (".csv", ".md"):
        prefix = prefix.with_suffix("")
    return {
        "wide": prefix.with_name(prefix.name + ".csv"),
        "markdown": prefix.with_name(prefix.name + ".md"),
        "long": prefix.with_name(prefix.name + "_summary.csv"),
        "runs": prefix.with_name(prefix.name + "_runs.csv"),
    }


def write_report(rep: Report, out: str | Path) -> dict[str, Path]:
    """Write the wide and long CSVs, the per-run CSV and the Markdown table atomically; return their paths."""
    paths = output_paths(out)
    runs = rep.runs.drop(columns=["value"], errors="ignore")
    atomic_write_text(paths["wide"], wide_frame(rep).to_csv(index=False))
    atomic_write_text(paths["long"], summary_frame(rep).to_csv(index=False))
    atomic_write_text(paths["runs"], runs.to_csv(index=False))
    atomic_write_text(paths["markdown"], to_markdown(rep))
    return paths
