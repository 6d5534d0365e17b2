"""Leaderboard rendering: terminal text, Markdown, LaTeX (booktabs) and CSV, plus the sources listing.

Every written table names the run records it was built from: ``<out>_sources.txt`` lists each run (used or
not, and why not), and the Markdown / LaTeX files end with a footer pointing at it.

Example::

    from odinw_bench.report import formats as report_formats
    from odinw_bench.report.grid import build_report

    rep = build_report(records, tasks=["aquarium", "pothole"], suite="mine")
    print(report_formats.format_table(rep))
    report_formats.write_report(rep, "results/report/odinw13", formats=("csv", "md", "tex"))
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from odinw_bench.atomic import atomic_write_text
from odinw_bench.report.grid import (
    CI_LEVEL,
    PROTOCOL_KEYS,
    ROW_KEYS,
    SCALE,
    Cell,
    Report,
    join_values,
    protocol_warnings,
    used_run_ids,
)  # fmt: skip

logger = logging.getLogger(__name__)

FORMATS = ("csv", "md", "tex")
_LATEX_SPECIAL = re.compile(r"([\\&%$#_{}~^])")
_LATEX_REPLACEMENT = {"\\": r"\textbackslash{}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def header_lines(rep: Report) -> list[str]:
    """The statistics behind the numbers, printed above every table."""
    return [
        f"metric: {rep.metric} x {SCALE:g}; cell = mean ± sample std (ddof=1) over seeds (one seed: mean alone)",
        "zero-shot rows: one evaluation per task, model, checkpoint, split and prompt (the seed changes nothing): "
        "no ±",
        f"{CI_LEVEL:.0%} CI half-width (CSV) = t·std/√n, t = Student's t quantile with n-1 degrees of freedom "
        "(scipy.stats.t; 4.30 for 3 seeds)",
        f"{rep.suite} = unweighted mean of the {len(rep.tasks)} task means; its ± is the std over seeds of the "
        "per-seed suite means (only when all tasks share the seeds)",
    ]


def fmt_mean_std(mean: float, std: float) -> str:
    """``33.0 ± 3.0``; the mean alone when std is NaN; ``—`` when there is no mean."""
    if math.isnan(mean):
        return "—"
    return f"{mean:.1f}" if math.isnan(std) else f"{mean:.1f} ± {std:.1f}"


def _cell_text(cell: Cell) -> str:
    if cell.status == "missing":
        return "—"
    if cell.status == "mixed":
        return "mixed"
    return fmt_mean_std(cell.mean, cell.std) + ("*" if cell.status == "partial" else "")


def _suite_text(rep: Report, row: tuple) -> str:
    stats = rep.suite_stats[row]
    text = fmt_mean_std(stats["mean"], stats["std"])
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


def legend_lines(rep: Report) -> list[str]:
    """Partial-grid listing, notes, protocol warnings and the protocol of each column group."""
    lines = []
    if rep.problems:
        lines.append("PARTIAL GRID: * = fewer seeds than expected, — = missing, mixed = runs not mergeable:")
        lines += [f"  {p}" for p in rep.problems]
    lines += rep.notes
    lines += protocol_warnings(rep)
    # Which task version, split and prompt the numbers come from, grouped so that odd ones stand out.
    groups: dict[str, set[str]] = {}
    for (_, task), c in rep.cells.items():
        if c.protocol:
            key = f"v{c.protocol['task_version']} split={c.protocol['split']} prompt={c.protocol['prompt']}"
            groups.setdefault(key, set()).add(task)
    lines += [f"{key}: {', '.join(sorted(tasks))}" for key, tasks in sorted(groups.items())]
    return lines


def text_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces, with a dashed rule under the header."""
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in body]
    return "\n".join(line.rstrip() for line in lines)


def format_table(rep: Report) -> str:
    """A plain-text table for the terminal, with the statistics header and the partial-grid legend."""
    header, body = display_rows(rep)
    return "\n".join([*header_lines(rep), "", text_table(header, body), "", *legend_lines(rep)]) + "\n"


def markdown_table(header: Sequence[str], body: Sequence[Sequence[str]], n_left: int = 3) -> str:
    """A Markdown pipe table; the first ``n_left`` columns are left-aligned, the others right-aligned."""

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    rule = ["---"] * n_left + ["---:"] * (len(header) - n_left)
    return "\n".join([line(header), line(rule), *(line(r) for r in body)])


def to_markdown(rep: Report, sources_name: str | None = None) -> str:
    """The leaderboard as a Markdown pipe table, with the statistics header, legend and sources footer."""
    header, body = display_rows(rep)
    out = [*(f"{h}  " for h in header_lines(rep)), "", markdown_table(header, body), ""]
    out += [f"{x}  " for x in legend_lines(rep)]
    out += ["", f"{statistics_note()}.  ", sources_footer(rep, sources_name)]
    return "\n".join(out) + "\n"


def statistics_note() -> str:
    """One sentence under a table saying what ± and the confidence intervals are."""
    return (f"± = sample std over seeds; {CI_LEVEL:.0%} CI in the CSV uses Student's t (n-1 degrees of freedom, "
            "scipy.stats.t)")


def sources_footer(rep: Report, sources_name: str | None) -> str:
    """One sentence naming how many records the table uses and where they are listed."""
    n_used = len(used_run_ids(rep))
    where = f"listed in {sources_name}" if sources_name else "run ids: " + join_values(sorted(used_run_ids(rep)))
    return f"Built from {n_used} run records ({where})."


# ---- LaTeX ----


def latex_escape(text: Any) -> str:
    """Escape LaTeX's special characters in plain text (task names, model names, regimes)."""
    return _LATEX_SPECIAL.sub(lambda m: _LATEX_REPLACEMENT.get(m.group(1), "\\" + m.group(1)), str(text))


def latex_mean_std(mean: float, std: float) -> str:
    """``$33.0 \\pm 3.0$``; ``$33.0$`` without std; ``--`` without mean."""
    if math.isnan(mean):
        return "--"
    return f"${mean:.1f}$" if math.isnan(std) else f"${mean:.1f} \\pm {std:.1f}$"


def latex_table(header: Sequence[str], body: Sequence[Sequence[str]], *, n_left: int = 3,
                comments: Sequence[str] = (), footer: Sequence[str] = ()) -> str:
    """A booktabs ``tabular``; ``header`` is plain text (escaped here), ``body`` cells are LaTeX already.

    Needs ``\\usepackage{booktabs}``. ``comments`` become ``%`` lines above, ``footer`` a ``\\multicolumn`` note.
    """
    spec = "l" * n_left + "r" * (len(header) - n_left)
    lines = [f"% {c}" for c in comments]
    lines += [f"\\begin{{tabular}}{{{spec}}}", "\\toprule", " & ".join(latex_escape(h) for h in header) + r" \\"]
    lines += ["\\midrule", *(" & ".join(row) + r" \\" for row in body), "\\bottomrule"]
    lines += [f"\\multicolumn{{{len(header)}}}{{l}}{{\\footnotesize {latex_escape(f)}}} \\\\" for f in footer]
    lines.append("\\end{tabular}")
    return "\n".join(lines) + "\n"


def _latex_cell(cell: Cell) -> str:
    if cell.status == "missing":
        return "--"
    if cell.status == "mixed":
        return "mixed"
    return latex_mean_std(cell.mean, cell.std) + ("$^{*}$" if cell.status == "partial" else "")


def to_latex(rep: Report, sources_name: str | None = None) -> str:
    """The leaderboard as a booktabs table: escaped names, ``$m \\pm s$`` cells, statistics as comments."""
    header, _ = display_rows(rep)
    body = []
    for row in rep.rows:
        stats = rep.suite_stats[row]
        suite = latex_mean_std(stats["mean"], stats["std"]) + ("$^{\\dagger}$" if stats["partial"] else "")
        body.append([*(latex_escape(v) for v in row), *(_latex_cell(rep.cells[(row, t)]) for t in rep.tasks), suite])
    footer = [statistics_note(), sources_footer(rep, sources_name)]
    if rep.problems:
        footer.insert(0, "* fewer seeds than expected; -- missing; dagger: suite average over an incomplete row")
    footer += protocol_warnings(rep)
    return latex_table(header, body, comments=[*header_lines(rep), *legend_lines(rep)], footer=footer)


# ---- CSV frames ----


def summary_frame(rep: Report):
    """Long table: one row per (row, task) cell plus one suite row per row, values x SCALE."""
    import pandas as pd

    records = []
    for row in rep.rows:
        base = dict(zip(ROW_KEYS, row), metric=f"{rep.metric} x{SCALE:g}")
        for task in rep.tasks:
            c = rep.cells[(row, task)]
            records.append({**base, "task": task, **{k: c.protocol.get(k) for k in PROTOCOL_KEYS},
                            "status": c.status, "n": len(c.seeds), "seeds": join_values(c.seeds),
                            "mean": c.mean, "std": c.std, "ci95": c.ci95,
                            "run_ids": join_values(c.run_ids)})  # fmt: skip
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


def sources_text(rep: Report) -> str:
    """Tab-separated listing of every run record considered: used or not (and why), with its path."""
    used = used_run_ids(rep)
    columns = ["run_id", "used", "status", "model", "regime", "shots", "task", "seed", *PROTOCOL_KEYS[:3], "path"]
    lines = [f"# run records behind this table (metric {rep.metric}); {len(used)} of {len(rep.runs)} used",
             "# used=no: failed run, no metric value, or a mixed cell (see the table legend)",
             "\t".join(columns)]  # fmt: skip
    for _, run in rep.runs.sort_values(["task", "model", "regime", "shots", "seed"]).iterrows():
        values = {**run.to_dict(), "used": "yes" if run["run_id"] in used else "no"}
        lines.append("\t".join("" if values.get(c) is None else str(values.get(c)) for c in columns))
    return "\n".join(lines) + "\n"


# ---- Files ----


def path_namer(out: str | Path) -> Callable[[str, str], Path]:
    """``name(stem, suffix)`` -> output path for ``--out``: a folder (existing, or ending in ``/``) or a prefix.

    Folder: ``<folder>/<stem><suffix>``. Prefix ``P`` (a ``.csv``/``.md``/``.tex`` suffix is dropped):
    ``P_<stem><suffix>``, and ``P<suffix>`` for the empty stem.
    """
    text = str(out)
    if Path(text).is_dir() or text.endswith(("/", "\\")):
        folder = Path(text)
        return lambda stem, suffix: folder / f"{stem or 'leaderboard'}{suffix}"
    prefix = Path(text)
    if prefix.suffix in (".csv", ".md", ".tex"):
        prefix = prefix.with_suffix("")
    return lambda stem, suffix: prefix.with_name(f"{prefix.name}_{stem}{suffix}" if stem else prefix.name + suffix)


def output_paths(out: str | Path) -> dict[str, Path]:
    """Files of the leaderboard itself for ``--out`` (see :func:`path_namer`).

    Folder: ``leaderboard.csv``, ``leaderboard.md``, ``leaderboard.tex``, ``summary.csv``, ``runs.csv``,
    ``sources.txt``. Prefix ``P``: ``P.csv``, ``P.md``, ``P.tex``, ``P_summary.csv``, ``P_runs.csv``,
    ``P_sources.txt``.
    """
    name = path_namer(out)
    return {"wide": name("", ".csv"), "markdown": name("", ".md"), "latex": name("", ".tex"),
            "long": name("summary", ".csv"), "runs": name("runs", ".csv"),
            "sources": name("sources", ".txt")}  # fmt: skip


def check_formats(formats: Sequence[str]) -> tuple[str, ...]:
    """Validate a list of output formats (``csv``, ``md``, ``tex``)."""
    from odinw_bench.errors import UserError

    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise UserError(f"unknown output format(s) {bad or formats}; choose from {','.join(FORMATS)}",
                        field="--formats")  # fmt: skip
    return tuple(dict.fromkeys(formats))


def write_report(rep: Report, out: str | Path, formats: Sequence[str] = FORMATS) -> dict[str, Path]:
    """Write the leaderboard in ``formats`` and the sources listing, atomically; return the paths written.

    ``csv`` writes the wide, long (with 95% CI and run ids) and per-run CSVs; ``md`` and ``tex`` one table each.
    """
    formats = check_formats(formats)
    paths = output_paths(out)
    written = {}
    if "csv" in formats:
        runs = rep.runs.drop(columns=["value"], errors="ignore")
        written["wide"] = atomic_write_text(paths["wide"], wide_frame(rep).to_csv(index=False))
        written["long"] = atomic_write_text(paths["long"], summary_frame(rep).to_csv(index=False))
        written["runs"] = atomic_write_text(paths["runs"], runs.to_csv(index=False))
    sources_name = paths["sources"].name
    if "md" in formats:
        written["markdown"] = atomic_write_text(paths["markdown"], to_markdown(rep, sources_name))
    if "tex" in formats:
        written["latex"] = atomic_write_text(paths["latex"], to_latex(rep, sources_name))
    written["sources"] = atomic_write_text(paths["sources"], sources_text(rep))
    return written
