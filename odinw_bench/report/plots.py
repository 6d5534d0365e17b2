"""Data-efficiency plots: AP against shots (1, 3, 5, 10, all on a categorical axis), mean over seeds with a ±std
band, for the suite average and as small multiples per task.

How a reader tells the lines apart:

- one colour per regime (:data:`REGIME_COLORS`), the same in every panel and every report;
- one line style and marker per model (:data:`MODEL_STYLES`, in the order the models appear);
- zero-shot, which has no shots, is a horizontal reference line across the whole shot axis, in the model's line
  style (with one model and no trained rows, the axis shows the single position ``0``);
- the legend lists the regimes by colour and, with several models, the models by style, rather than every
  combination;
- the AP axis starts at 0.

Drawn with matplotlib's Agg canvas on explicit ``Figure`` objects (no pyplot state, no display needed). The
numbers plotted are returned as :class:`EfficiencyData`, and :func:`suite_figure` / :func:`tasks_figure` return
the figures, so a caller (or a test) can check both.

Example::

    data = efficiency_data(rep)
    paths = write_plots(rep, "results/report/odinw13")   # odinw13_efficiency.png, odinw13_efficiency_tasks.png
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from odinw_bench.atomic import atomic_write
from odinw_bench.report.formats import path_namer
from odinw_bench.report.grid import SCALE, ZERO_SHOT, Report, regime_rank
from odinw_bench.results.leaderboard import SEARCHED_SUFFIX

logger = logging.getLogger(__name__)

SHOTS_ORDER = ("0", "1", "3", "5", "10", "all")
_PANEL_COLUMNS = 4
#: Colour of each regime (matplotlib's colour-blind-safe tab10 entries); others get the spare ones in order.
REGIME_COLORS = {ZERO_SHOT: "tab:gray", "linear-probe": "tab:green", "linear-probe-cached": "tab:olive",
                 "prompt": "tab:orange", "language": "tab:purple", "lora": "tab:red", "lora-language": "tab:pink",
                 "deep-prompt": "tab:cyan", "full": "tab:blue"}  # fmt: skip
_SPARE_COLORS = ("tab:brown",)
#: (line style, marker) of the 1st, 2nd, ... model.
MODEL_STYLES = (("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"), ((0, (5, 1, 1, 1)), "v"), ((0, (1, 3)), "P"))


@dataclass
class Series:
    """One line: ``mean`` and ``std`` per x position (NaN where the row has no value / one seed).

    A zero-shot series is a reference line: the same mean at every position, no std.
    """

    label: str
    mean: list[float]
    std: list[float]
    model: str = ""
    regime: str = ""

    @property
    def is_reference(self) -> bool:
        return self.regime == ZERO_SHOT


@dataclass
class EfficiencyData:
    """What the plots show: ``x`` shot labels and, per panel (suite first, then tasks), its lines."""

    metric: str
    x: list[str]
    panels: dict[str, list[Series]] = field(default_factory=dict)

    @property
    def models(self) -> list[str]:
        """Models in order of appearance."""
        return list(dict.fromkeys(s.model for lines in self.panels.values() for s in lines))

    @property
    def regimes(self) -> list[str]:
        """Regimes in protocol order."""
        found = {s.regime for lines in self.panels.values() for s in lines}
        return sorted(found, key=regime_rank)


def _shots_key(shots: str) -> tuple:
    if shots in SHOTS_ORDER:
        return (SHOTS_ORDER.index(shots), 0)
    return (len(SHOTS_ORDER), int(shots) if shots.isdigit() else math.inf)


def efficiency_data(rep: Report) -> EfficiencyData:
    """Group the rows of ``rep`` into lines (model, regime) over the shots present, per panel.

    Zero-shot rows are no position of the shot axis but a level across it (see the module docstring).
    """
    trained = {str(row[2]) for row in rep.rows if row[1] != ZERO_SHOT}
    x = sorted(trained, key=_shots_key) or ["0"]
    lines: dict[tuple, dict[str, tuple]] = {}
    for row in rep.rows:
        lines.setdefault((row[0], row[1]), {})[str(row[2])] = row
    several_models = len({model for model, _ in lines}) > 1
    data = EfficiencyData(rep.metric, x)

    def series(model: str, regime: str, rows: dict[str, tuple], stat) -> Series:
        label = f"{model} {regime}" if several_models else regime
        if regime == ZERO_SHOT:
            level = stat(next(iter(rows.values())))[0]
            return Series(label, [level] * len(x), [math.nan] * len(x), model, regime)
        points = [stat(rows[s]) if s in rows else (math.nan, math.nan) for s in x]
        return Series(label, [p[0] for p in points], [p[1] for p in points], model, regime)

    for (model, regime), rows in lines.items():
        suite = series(model, regime, rows, lambda r: (rep.suite_stats[r]["mean"], rep.suite_stats[r]["std"]))
        data.panels.setdefault(rep.suite, []).append(suite)
        for task in rep.tasks:
            cells = series(model, regime, rows, lambda r, t=task: (rep.cells[(r, t)].mean, rep.cells[(r, t)].std))
            data.panels.setdefault(rep.display[task], []).append(cells)
    return data


def regime_color(regime: str, regimes: list[str]) -> str:
    """The colour of ``regime``: its own in :data:`REGIME_COLORS` (a searched one, ``prompt+search``, its
    regime's), else a spare one by its place in ``regimes``."""
    regime = regime.removesuffix(SEARCHED_SUFFIX) if regime.removesuffix(SEARCHED_SUFFIX) in REGIME_COLORS else regime
    if regime in REGIME_COLORS:
        return REGIME_COLORS[regime]
    others = [r for r in regimes if r not in REGIME_COLORS]
    return _SPARE_COLORS[others.index(regime) % len(_SPARE_COLORS)] if regime in others else "black"


def model_style(model: str, models: list[str]) -> tuple[Any, str]:
    """(line style, marker) of ``model``, by its place in ``models``."""
    return MODEL_STYLES[models.index(model) % len(MODEL_STYLES)] if model in models else MODEL_STYLES[0]


def searched_style(regime: str, models: list[str]) -> dict[str, Any]:
    """Extra line settings of a searched regime (``prompt+search``): hollow markers, and with one model a dashed
    line; it shares its regime's colour. Empty for other regimes."""
    if not regime.endswith(SEARCHED_SUFFIX):
        return {}
    return {"markerfacecolor": "white", **({"linestyle": "--"} if len(models) <= 1 else {})}


def _draw(ax: Any, data: EfficiencyData, lines: list[Series], title: str, ylabel: str | None) -> None:
    """One panel: a line per trained series over its finite points with a ±std band, a level per zero-shot one."""
    models, regimes, x = data.models, data.regimes, data.x
    for line in lines:
        color = regime_color(line.regime, regimes)
        style, marker = model_style(line.model, models)
        if line.is_reference:
            if not math.isnan(line.mean[0]):
                ax.axhline(line.mean[0], color=color, linestyle=style, linewidth=1.5, label=line.label)
            continue
        idx = [i for i, v in enumerate(line.mean) if not math.isnan(v)]
        if not idx:
            continue
        ax.plot(idx, [line.mean[i] for i in idx], label=line.label,
                **{"color": color, "linestyle": style, "marker": marker, **searched_style(line.regime, models)})
        band = [i for i in idx if not math.isnan(line.std[i])]
        if len(band) == 1:  # a lone point has no width for a band: an error bar instead
            i = band[0]
            ax.errorbar([i], [line.mean[i]], yerr=[line.std[i]], capsize=4, color=color, linestyle="none")
        elif band:
            low = [line.mean[i] - line.std[i] for i in band]
            high = [line.mean[i] + line.std[i] for i in band]
            ax.fill_between(band, low, high, alpha=0.15, color=color, linewidth=0)
    ax.set_xticks(range(len(x)), x)
    ax.set_xlim(-0.5, len(x) - 0.5)
    ax.set_ylim(bottom=0)  # AP is never negative; a band below 0 would suggest it could be
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("shots per category")
    if ylabel:
        ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


def legend_handles(data: EfficiencyData) -> list[Any]:
    """Legend entries: each regime by its colour (zero-shot marked as the reference level), then, with several
    models, each model by its line style and marker (in gray)."""
    from matplotlib.lines import Line2D

    models = data.models
    handles = [Line2D([], [], color=regime_color(r, data.regimes), linewidth=2,
                      label=f"{r} (reference line)" if r == ZERO_SHOT else r,
                      **({"marker": "o", **searched_style(r, [])} if r.endswith(SEARCHED_SUFFIX) else {}))
               for r in data.regimes]  # fmt: skip
    if len(models) > 1:
        for model in models:
            style, marker = model_style(model, models)
            handles.append(Line2D([], [], color="dimgray", linestyle=style, marker=marker, label=model))
    return handles


def _new_figure(size: tuple[float, float]) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    return fig


def suite_figure(data: EfficiencyData, suite: str) -> Any:
    """The suite-average panel alone, with its legend (a matplotlib ``Figure``)."""
    fig = _new_figure((6.5, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    _draw(ax, data, data.panels.get(suite, []), f"{suite}: {data.metric} vs shots (mean ± std over seeds)",
          f"{data.metric} (x{SCALE:g})")  # fmt: skip
    handles = legend_handles(data)
    if len(handles) > 6:  # a long legend would hide lines: beside the panel (the PNG is cropped to fit it)
        ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    else:
        ax.legend(handles=handles, fontsize=8, loc="best")
    return fig


def tasks_figure(data: EfficiencyData, suite: str) -> Any:
    """Small multiples: one panel per task (suite panel excluded) and one legend above them (a ``Figure``)."""
    names = [name for name in data.panels if name != suite]
    ncols = min(_PANEL_COLUMNS, max(1, len(names)))
    nrows = max(1, math.ceil(len(names) / ncols))
    fig = _new_figure((3.2 * ncols, 2.6 * nrows + 0.6))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= len(names):
            ax.set_visible(False)
            continue
        _draw(ax, data, data.panels[names[i]], names[i], data.metric if i % ncols == 0 else None)
    handles = legend_handles(data)
    if handles:
        fig.legend(handles=handles, loc="upper center", ncol=min(6, len(handles)), fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / fig.get_figheight()))
    return fig


def _save(fig: Any, path: Path) -> Path:
    """Save a figure as PNG atomically."""
    return atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=100, bbox_inches="tight"), binary=True)


def plot_suite(data: EfficiencyData, suite: str, path: str | Path) -> Path:
    """The suite-average panel alone, as a PNG."""
    return _save(suite_figure(data, suite), Path(path))


def plot_tasks(data: EfficiencyData, suite: str, path: str | Path) -> Path:
    """Small multiples, one panel per task, as a PNG."""
    return _save(tasks_figure(data, suite), Path(path))


def write_plots(rep: Report, out: str | Path) -> tuple[dict[str, Path], EfficiencyData]:
    """Write ``<out>_efficiency.png`` (suite) and ``<out>_efficiency_tasks.png``; return the paths and the data."""
    data = efficiency_data(rep)
    name = path_namer(out)
    paths = {"plot_suite": plot_suite(data, rep.suite, name("efficiency", ".png")),
             "plot_tasks": plot_tasks(data, rep.suite, name("efficiency_tasks", ".png"))}  # fmt: skip
    return paths, data
