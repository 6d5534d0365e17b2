"""Per-category AP: one table per task, rows model × regime × shots, columns the task's categories.

Each value is the mean over seeds of the records' ``metrics["AP-<category>"]`` (× 100), taken from exactly the
runs behind the leaderboard cell (mixed and missing cells stay empty). A category without ground truth in the
evaluated split has no AP (``None`` in the record); such seeds are left out of that category's mean and the
count of seeds used is kept beside it.

Example::

    tables = category_tables(rep)
    print(category_markdown(tables, rep))
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from odinw_bench.atomic import atomic_write_text
from odinw_bench.report.formats import markdown_table, path_namer
from odinw_bench.report.grid import ROW_KEYS, SCALE, Report

logger = logging.getLogger(__name__)


@dataclass
class CategoryTable:
    """Per-category means of one task.

    Attributes:
        task: Task name.
        display: Its column label in the leaderboard.
        categories: Category names in record order.
        rows: (model, regime, shots) keys that have usable runs for this task.
        means: (row, category) -> mean over seeds x SCALE (NaN when no seed has a value).
        counts: (row, category) -> number of seeds with a value.
    """

    task: str
    display: str
    categories: list[str] = field(default_factory=list)
    rows: list[tuple] = field(default_factory=list)
    means: dict[tuple, float] = field(default_factory=dict)
    counts: dict[tuple, int] = field(default_factory=dict)


def category_tables(rep: Report) -> list[CategoryTable]:
    """One :class:`CategoryTable` per task of ``rep`` whose runs carry per-category values (tasks in order)."""
    tables = []
    for task in rep.tasks:
        table = CategoryTable(task, rep.display[task])
        for row in rep.rows:
            cell = rep.cells[(row, task)]
            per_run = [rep.category_ap.get(run_id, {}) for run_id in cell.run_ids]
            if not any(per_run):
                continue
            table.rows.append(row)
            for values in per_run:
                table.categories += [c for c in values if c not in table.categories]
            for category in table.categories:
                got = [v for v in (values.get(category) for values in per_run) if v is not None]
                table.means[(row, category)] = sum(got) / len(got) * SCALE if got else math.nan
                table.counts[(row, category)] = len(got)
        if table.rows:
            tables.append(table)
        else:
            logger.info("no per-category values for task %s", task)
    return tables


def category_frame(table: CategoryTable):
    """The table as a DataFrame: model, regime, shots, then one column per category (mean x SCALE) and ``n``.

    ``n`` is the largest number of seeds behind any category of the row.
    """
    import pandas as pd

    records = []
    for row in table.rows:
        rec = dict(zip(ROW_KEYS, row))
        rec.update({c: table.means.get((row, c), math.nan) for c in table.categories})
        rec["n"] = max((table.counts.get((row, c), 0) for c in table.categories), default=0)
        records.append(rec)
    return pd.DataFrame(records, columns=[*ROW_KEYS, *table.categories, "n"])


def _text(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.1f}"


def category_markdown(tables: Sequence[CategoryTable], rep: Report) -> str:
    """All tasks' tables in one Markdown document, a section per task."""
    out = [f"# Per-category {rep.metric} (x {SCALE:g}, mean over seeds)", ""]
    for table in tables:
        header = [*ROW_KEYS, *table.categories]
        body = [[*map(str, row), *(_text(table.means[(row, c)]) for c in table.categories)] for row in table.rows]
        out += [f"## {table.display} (`{table.task}`)", "", markdown_table(header, body), ""]
    return "\n".join(out)


def write_category_tables(tables: Sequence[CategoryTable], rep: Report, out: str | Path,
                          formats: Sequence[str]) -> dict[str, Path]:
    """Write ``<out>_per_category_<task>.csv`` per task (``csv``) and ``<out>_per_category.md`` (``md``)."""
    name = path_namer(out)
    written = {}
    if "csv" in formats:
        for table in tables:
            path = name(f"per_category_{table.task}", ".csv")
            written[f"per_category_{table.task}"] = atomic_write_text(path, category_frame(table).to_csv(index=False))
    if "md" in formats and tables:
        written["per_category_md"] = atomic_write_text(name("per_category", ".md"), category_markdown(tables, rep))
    return written
