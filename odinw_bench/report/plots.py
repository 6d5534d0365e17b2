"""Data-efficiency plots: AP against shots (0, 1, 3, 5, 10, all on a categorical axis), one line per regime
(and model), mean over seeds with a ±std band — for the suite average and as small multiples per task.

Drawn with matplotlib's Agg canvas on explicit ``Figure`` objects (no pyplot state, no display needed). The
numbers plotted are returned as :class:`EfficiencyData`, so a caller (or a test) can check them.

Example::

    data = efficiency_data(rep)
    paths = write_plots(rep, "results/leaderboard")   # leaderboard_efficiency.png, leaderboard_efficiency_tasks.png
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from odinw_bench.atomic import atomic_write
from odinw_bench.report.formats import path_namer
from odinw_bench.report.grid import SCALE, Report

logger = logging.getLogger(__name__)

SHOTS_ORDER = ("0", "1", "3", "5", "10", "all")
_PANEL_COLUMNS = 4


@dataclass
class Series:
    """One line: ``mean`` and ``std`` per x position (NaN where the row has no value / one seed)."""

    label: str
    mean: list[float]
    std: list[float]


@dataclass
class EfficiencyData:
    """What the plots show: ``x`` shot labels and, per panel (suite first, then tasks), its lines."""

    metric: str
    x: list[str]
    panels: dict[str, list[Series]] = field(default_factory=dict)


def _shots_key(shots: str) -> tuple:
    if shots in SHOTS_ORDER:
        return (SHOTS_ORDER.index(shots), 0)
    return (len(SHOTS_ORDER), int(shots) if shots.isdigit() else math.inf)


def efficiency_data(rep: Report) -> EfficiencyData:
    """Group the rows of ``rep`` into lines (model, regime) over the shots present, per panel."""
    x = sorted({str(row[2]) for row in rep.rows}, key=_shots_key)
    lines: dict[tuple, dict[str, tuple]] = {}
    for row in rep.rows:
        lines.setdefault((row[0], row[1]), {})[str(row[2])] = row
    several_models = len({model for model, _ in lines}) > 1
    data = EfficiencyData(rep.metric, x)

    def series(label: str, stat) -> Series:
        points = [stat(rows[s]) if s in rows else (math.nan, math.nan) for s in x]
        return Series(label, [p[0] for p in points], [p[1] for p in points])

    for (model, regime), rows in lines.items():
        label = f"{model} {regime}" if several_models else regime
        suite = series(label, lambda r: (rep.suite_stats[r]["mean"], rep.suite_stats[r]["std"]))
        data.panels.setdefault(rep.suite, []).append(suite)
        for task in rep.tasks:
            cell_series = series(label, lambda r, t=task: (rep.cells[(r, t)].mean, rep.cells[(r, t)].std))
            data.panels.setdefault(rep.display[task], []).append(cell_series)
    return data


def _draw(ax: Any, x: list[str], lines: list[Series], title: str, ylabel: str | None) -> None:
    """One panel: a line per series over the finite points, a band where std is known."""
    for line in lines:
        idx = [i for i, v in enumerate(line.mean) if not math.isnan(v)]
        if not idx:
            continue
        ys = [line.mean[i] for i in idx]
        (handle,) = ax.plot(idx, ys, marker="o", label=line.label)
        band = [i for i in idx if not math.isnan(line.std[i])]
        if len(band) == 1:  # a lone point (zero-shot) has no width for a band: an error bar instead
            i = band[0]
            ax.errorbar([i], [line.mean[i]], yerr=[line.std[i]], capsize=4, color=handle.get_color())
        elif band:
            low = [line.mean[i] - line.std[i] for i in band]
            high = [line.mean[i] + line.std[i] for i in band]
            ax.fill_between(band, low, high, alpha=0.2, color=handle.get_color(), linewidth=0)
    ax.set_xticks(range(len(x)), x)
    ax.set_xlim(-0.5, len(x) - 0.5)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("shots per category")
    if ylabel:
        ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


def _save(fig: Any, path: Path) -> Path:
    """Save a figure as PNG atomically."""
    return atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=100, bbox_inches="tight"), binary=True)


def plot_suite(data: EfficiencyData, suite: str, path: str | Path) -> Path:
    """The suite-average panel alone, as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    _draw(ax, data.x, data.panels.get(suite, []), f"{suite}: {data.metric} vs shots (mean ± std over seeds)",
          f"{data.metric} (x{SCALE:g})")  # fmt: skip
    ax.legend(fontsize=8)
    return _save(fig, Path(path))


def plot_tasks(data: EfficiencyData, suite: str, path: str | Path) -> Path:
    """Small multiples: one panel per task (suite panel excluded), shared legend, as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = [name for name in data.panels if name != suite]
    ncols = min(_PANEL_COLUMNS, max(1, len(names)))
    nrows = max(1, math.ceil(len(names) / ncols))
    fig = Figure(figsize=(3.2 * ncols, 2.6 * nrows + 0.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= len(names):
            ax.set_visible(False)
            continue
        _draw(ax, data.x, data.panels[names[i]], names[i], data.metric if i % ncols == 0 else None)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper center", ncol=min(4, len(labels)), fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))
    return _save(fig, Path(path))


def write_plots(rep: Report, out: str | Path) -> tuple[dict[str, Path], EfficiencyData]:
    """Write ``<out>_efficiency.png`` (suite) and ``<out>_efficiency_tasks.png``; return the paths and the data."""
    data = efficiency_data(rep)
    name = path_namer(out)
    paths = {"plot_suite": plot_suite(data, rep.suite, name("efficiency", ".png")),
             "plot_tasks": plot_tasks(data, rep.suite, name("efficiency_tasks", ".png"))}  # fmt: skip
    return paths, data
