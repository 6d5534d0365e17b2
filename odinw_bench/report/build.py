"""Reports from run records, as the papers show them: the leaderboard, data-efficiency plots, per-category AP,
published numbers side by side, and a W&B copy.

The pieces live in their own modules; this one assembles them into the files one ``report`` command writes:

- :mod:`odinw_bench.report.grid`: aggregation over seeds and tasks (statistics stated in its docstring).
- :mod:`odinw_bench.report.formats`: text, Markdown, LaTeX and CSV tables, and the ``*_sources.txt`` listing.
- :mod:`odinw_bench.report.categories`: per-category AP tables.
- :mod:`odinw_bench.report.plots`: AP vs shots plots.
- :mod:`odinw_bench.report.published`: published numbers (zero-shot, few-shot and full data, per regime) and the
  comparison with our rows.
- :mod:`odinw_bench.report.wandb_upload`: tables and plots to a W&B run of job type ``report``.
- :mod:`odinw_bench.report.ownership`: a report replaces only files a report wrote (never the run leaderboard).

Example::

    from odinw_bench.report.build import produce
    from odinw_bench.report.formats import format_table
    from odinw_bench.report.grid import build_report
    from odinw_bench.results.records import iter_records

    rep = build_report(iter_records(["results/runs"]), tasks=["aquarium", "pothole"], suite="mine")
    print(format_table(rep))
    outputs = produce(rep, "results/report/odinw13", plots=True, per_category=True)
    print(outputs.text)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from odinw_bench.atomic import atomic_write_text
from odinw_bench.report.formats import (
    FORMATS,
    check_formats,
    format_table,
    latex_escape,
    latex_table,
    markdown_table,
    output_paths,
    path_namer,
    summary_frame,
    text_table,
    wide_frame,
    write_report,
)  # fmt: skip
from odinw_bench.report.grid import (
    Report,
    used_run_ids,
)  # fmt: skip
from odinw_bench.report.ownership import check_overwrites, remember_outputs

logger = logging.getLogger(__name__)

@dataclass
class ReportOutputs:
    """What :func:`produce` made.

    Attributes:
        paths: Key -> file written (``wide``, ``markdown``, ``latex``, ``sources``, ``compare_csv``, ``plot_suite``,
            ``per_category_<task>``, ...).
        text: The terminal text: leaderboard, then the comparison with published numbers if any.
        comparison: :func:`odinw_bench.report.published.compare` frame (None when not compared).
        efficiency: Plotted values (:class:`odinw_bench.report.plots.EfficiencyData`) when plots were made.
        categories: Per-category tables when requested.
        wandb_dir: Local W&B run folder, when pushed.
    """

    paths: dict[str, Path] = field(default_factory=dict)
    text: str = ""
    comparison: Any = None
    efficiency: Any = None
    categories: list = field(default_factory=list)
    wandb_dir: Path | None = None


def comparison_text(frame, fmt: str = "text") -> str:
    """The comparison with published numbers as ``text``, ``md`` or ``tex``, with its numbered sources."""
    from odinw_bench.report.published import comparison_rows

    header, body, notes = comparison_rows(frame)
    title = ("published numbers of the same model, regime and shots (AP x 100, mean ± std over seeds where given; "
             "delta = ours - reference; check = split/prompt agreement; protocol = how the reference's protocol "
             "differs from ours, lettered below)")
    if fmt == "md":
        return "\n".join([f"{title}  ", "", markdown_table(header, body, n_left=4), "",
                          *(f"{n}  " for n in notes)]) + "\n"  # fmt: skip
    if fmt == "tex":
        rows = [[latex_escape(c) for c in r[:4]] + [latex_escape(c).replace("±", r"$\pm$") for c in r[4:]]
                for r in body]  # fmt: skip
        return latex_table(header, rows, n_left=4, comments=[title], footer=notes)
    return "\n".join([title, text_table(header, body), *notes]) + "\n"


def _compare(rep: Report, compare: bool | None, references: Sequence[Any] | None):
    """The comparison frame, or None when there is nothing (or nothing asked) to compare."""
    if compare is False:
        return None
    from odinw_bench.report.published import MODEL_ALIASES, load_references
    from odinw_bench.report.published import compare as compare_rows

    frame = compare_rows(rep, load_references() if references is None else references)
    if frame.empty:
        if compare:
            logger.warning("no published numbers apply: they cover rows of %s (zero-shot; full, prompt and "
                           "linear-probe at 1, 3, 5, 10 shots and all)", ", ".join(MODEL_ALIASES))  # fmt: skip
        return None
    return frame


def produce(rep: Report, out: str | Path | None, *, formats: Sequence[str] = FORMATS, plots: bool = False,
            per_category: bool = False, compare: bool | None = None, references: Sequence[Any] | None = None,
            wandb: str = "off", wandb_dir: str | Path | None = None) -> ReportOutputs:
    """Render and write everything asked for.

    Args:
        rep: From :func:`build_report`.
        out: Output folder or prefix (see :func:`output_paths`); None writes no files (text only).
        formats: Table formats among ``csv``, ``md``, ``tex``; the sources listing is always written.
        plots: Write the data-efficiency PNGs.
        per_category: Write per-category AP tables.
        compare: True: compare with published numbers (warn if none apply); None: compare when some apply;
            False: never.
        references: Published numbers to use (default: the shipped files).
        wandb: ``off``, ``offline`` or ``online``; tables and plots go to a W&B run of job type ``report``.
        wandb_dir: Folder for the W&B run (default: the folder of ``out``).

    Raises:
        UserError: Before any file is written, if one to be replaced is not a report's own
            (:mod:`odinw_bench.report.ownership`), e.g. the run leaderboard that ``run`` appends to.
    """
    formats = check_formats(formats)
    result = ReportOutputs(text=format_table(rep))
    result.comparison = _compare(rep, compare, references)
    if result.comparison is not None:
        result.text += "\n" + comparison_text(result.comparison)
    if out is None:
        return result
    if per_category:
        from odinw_bench.report.categories import category_tables

        result.categories = category_tables(rep)
    check_overwrites(planned_paths(out, formats, compare=result.comparison is not None, plots=plots,
                                   category_tasks=[t.task for t in result.categories]))
    try:
        _write_files(rep, result, out, formats, plots=plots, per_category=per_category)
    finally:  # also what was written before a failure: the next report may replace it
        remember_outputs(result.paths.values())
    if wandb != "off":
        result.wandb_dir = _push(rep, result, wandb, wandb_dir or result.paths["sources"].parent)
    return result


def planned_paths(out: str | Path, formats: Sequence[str], *, compare: bool = False, plots: bool = False,
                  category_tasks: Sequence[str] = ()) -> list[Path]:
    """Every file :func:`produce` writes for these options (checked before writing, so it lists them all)."""
    name = path_namer(out)
    tables = output_paths(out)
    paths = [tables[key] for key, fmt in (("wide", "csv"), ("long", "csv"), ("runs", "csv"), ("markdown", "md"),
                                          ("latex", "tex")) if fmt in formats]  # fmt: skip
    paths.append(tables["sources"])
    if compare:
        paths += [name("compare", f".{fmt}") for fmt in formats]
    if "csv" in formats:
        paths += [name(f"per_category_{task}", ".csv") for task in category_tasks]
    if "md" in formats and category_tasks:
        paths.append(name("per_category", ".md"))
    if plots:
        paths += [name("efficiency", ".png"), name("efficiency_tasks", ".png")]
    return paths


def _write_files(rep: Report, result: ReportOutputs, out: str | Path, formats: Sequence[str], *, plots: bool,
                 per_category: bool) -> None:
    """Write the tables, comparison, per-category tables and plots, adding each file to ``result.paths``."""
    result.paths.update(write_report(rep, out, formats))
    name = path_namer(out)
    if result.comparison is not None:
        writers = {"csv": lambda: result.comparison.to_csv(index=False), "md": lambda: comparison_text(
            result.comparison, "md"), "tex": lambda: comparison_text(result.comparison, "tex")}  # fmt: skip
        for fmt in formats:
            result.paths[f"compare_{fmt}"] = atomic_write_text(name("compare", f".{fmt}"), writers[fmt]())
    if per_category:
        from odinw_bench.report.categories import write_category_tables

        result.paths.update(write_category_tables(result.categories, rep, out, formats))
    if plots:
        from odinw_bench.report.plots import write_plots

        plot_paths, result.efficiency = write_plots(rep, out)
        result.paths.update(plot_paths)


def _push(rep: Report, result: ReportOutputs, mode: str, save_dir: str | Path) -> Path | None:
    """Send the leaderboard, comparison, per-category tables and plots to W&B (never raises for W&B errors)."""
    from odinw_bench.report.categories import category_frame
    from odinw_bench.report.wandb_upload import push_report

    tables = {"leaderboard": wide_frame(rep), "summary": summary_frame(rep)}
    if result.comparison is not None:
        tables["published_comparison"] = result.comparison
    tables.update({f"per_category/{t.task}": category_frame(t) for t in result.categories})
    images = {k: p for k, p in result.paths.items() if k.startswith("plot_")}
    config = {"metric": rep.metric, "suite": rep.suite, "tasks": rep.tasks,
              "run_ids": sorted(used_run_ids(rep))}  # fmt: skip
    return push_report(mode, save_dir=save_dir, tables=tables, images=images, config=config,
                       name=f"report-{rep.suite}-{rep.metric}")  # fmt: skip
