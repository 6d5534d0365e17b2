"""Published ODinW numbers as data, and the comparison of our zero-shot rows against them.

The files in ``odinw_bench/resources/published/*.csv`` hold one reference per line: ``model`` (the published
name, e.g. ``GLIP-T(C)``), ``task`` (our task name, or a suite name such as ``odinw13`` for the suite average),
``AP`` (a fraction in [0, 1], as in our records), the ``split`` and ``prompt`` the source used (``unstated``
when it does not say), ``source`` and ``note``. ``#`` lines at the top describe the file and its provenance.

A reference applies to a zero-shot row (regime ``zero-shot``, shots ``0``) of a model that maps onto its published
name (:data:`MODEL_ALIASES`). The comparison states the split and prompt on both sides and flags where they differ:
a number measured on ``test`` is not the same quantity as one measured on ``val``.

Example::

    refs = load_references()
    frame = compare(rep, refs)           # one row per (our row, column, reference)
    print(comparison_text(frame))
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from odinw_bench import paths
from odinw_bench.errors import UserError
from odinw_bench.report.grid import SCALE, Report

logger = logging.getLogger(__name__)

#: Our model presets -> the names the published tables use.
MODEL_ALIASES = {"glip-t-a": "GLIP-T(A)", "glip-t-b": "GLIP-T(B)", "glip-t-c": "GLIP-T(C)", "glip-t": "GLIP-T",
                 "glip-l": "GLIP-L"}  # fmt: skip
#: Published prompt names -> our prompt variants (the odinw_13 configs' names are our default prompts).
PROMPT_ALIASES = {"odinw_13": "default"}
UNSTATED = "unstated"
COLUMNS = ("model", "task", "AP", "split", "prompt", "source", "note")
ZERO_SHOT = ("zero-shot", "0")


@dataclass(frozen=True)
class Reference:
    """One published number; ``ap`` is a fraction in [0, 1]; ``file`` is where it was read from."""

    model: str
    task: str
    ap: float
    split: str
    prompt: str
    source: str
    note: str
    file: str


def published_dir() -> Path:
    """Folder of the shipped reference files."""
    return paths.RESOURCES_DIR / "published"


def load_references(paths: Sequence[str | Path] | None = None) -> list[Reference]:
    """Read reference CSVs (default: every shipped file), checking each row.

    Raises:
        UserError: Naming the file and ``row N.<column>`` for a missing column, an empty model/task/source or an
            AP that is not a fraction in [0, 1].
    """
    files = [Path(p) for p in paths] if paths is not None else sorted(published_dir().glob("*.csv"))
    refs = []
    for path in files:
        try:
            lines = [line for line in path.read_text(encoding="utf-8").splitlines() if not line.startswith("#")]
        except OSError as err:
            raise UserError(f"cannot read published numbers ({err.strerror})", path=path) from None
        reader = csv.DictReader(lines)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise UserError(f"missing column(s) {', '.join(missing)}", path=path, field="header")
        for number, row in enumerate(reader, start=1):
            refs.append(_parse_row(row, path, number))
    return refs


def _parse_row(row: Mapping[str, str | None], path: Path, number: int) -> Reference:
    values = {c: (row.get(c) or "").strip() for c in COLUMNS}
    for column in ("model", "task", "split", "prompt", "source"):
        if not values[column]:
            raise UserError(f"empty {column}", path=path, field=f"row {number}.{column}")
    try:
        ap = float(values["AP"])
    except ValueError:
        raise UserError(f"AP {values['AP']!r} is not a number", path=path, field=f"row {number}.AP") from None
    if not 0.0 <= ap <= 1.0:
        raise UserError(f"AP {ap} is not a fraction in [0, 1]", path=path, field=f"row {number}.AP")
    return Reference(values["model"], values["task"], ap, values["split"], values["prompt"], values["source"],
                     values["note"], path.name)  # fmt: skip


def reference_model(name: str) -> str | None:
    """Published name of one of our model presets (``glip-t-c`` -> ``GLIP-T(C)``); None if it has none."""
    key = str(name).strip().lower().replace("_", "-")
    return MODEL_ALIASES.get(key)


def _suite_tasks() -> dict[str, list[str]]:
    """Suite name -> task names, from ``tasks/suites.yaml`` (empty if it cannot be read)."""
    from odinw_bench.tasks.registry import load_suites

    try:
        return {name: list(spec.tasks) for name, spec in load_suites().items()}
    except (UserError, OSError) as err:
        logger.warning("suite averages not compared: %s", err)
        return {}


def _protocol_check(our_splits: Sequence[str], ref_split: str, our_prompts: Sequence[str], ref_prompt: str) -> str:
    """``same split and prompt``, or what differs / is unknown between ours and the reference's."""
    issues = []
    pairs = (("split", our_splits, ref_split), ("prompt", our_prompts, PROMPT_ALIASES.get(ref_prompt, ref_prompt)))
    for what, mine, theirs in pairs:
        if theirs == UNSTATED:
            issues.append(f"reference {what} unstated")
        elif set(mine) != {theirs}:
            issues.append(f"{what} differs (ours {'+'.join(mine)}, reference {theirs})")
    return "same split and prompt" if not issues else "; ".join(issues)


def compare(rep: Report, references: Sequence[Reference], suite_tasks: Mapping[str, Sequence[str]] | None = None):
    """Our zero-shot rows next to the published numbers: one line per (row, column, reference).

    Args:
        rep: The leaderboard.
        references: From :func:`load_references`.
        suite_tasks: Suite name -> its tasks; a reference whose ``task`` is a suite applies to our suite average
            only when our columns are exactly that suite's tasks. Default: ``tasks/suites.yaml``.

    Returns:
        DataFrame with model, regime, shots, column, ours (x SCALE), ours_std, our_split, our_prompt, reference
        (x SCALE), delta (= ours - reference, AP points), ref_split, ref_prompt, check, ref_model, source, note.
    """
    import pandas as pd

    suites = _suite_tasks() if suite_tasks is None else suite_tasks
    lines = []
    for row in rep.rows:
        published = reference_model(row[0])
        if (row[1], str(row[2])) != ZERO_SHOT or published is None:
            continue
        found = []
        for ref in (r for r in references if r.model == published):
            target = _target(rep, row, ref, suites)
            if target is not None:
                position = rep.tasks.index(ref.task) if ref.task in rep.tasks else len(rep.tasks)
                found.append((position, ref.file, _comparison_line(row, ref, *target)))
        lines += [line for *_, line in sorted(found, key=lambda item: item[:2])]  # in table column order
    columns = ["model", "regime", "shots", "column", "ours", "ours_std", "our_split", "our_prompt", "reference",
               "delta", "ref_split", "ref_prompt", "check", "ref_model", "source", "note"]  # fmt: skip
    return pd.DataFrame(lines, columns=columns)


def _target(rep: Report, row: tuple, ref: Reference, suites: Mapping[str, Sequence[str]]):
    """(label, mean, std, cells) of the table entry ``ref`` applies to in ``row``, or None."""
    if ref.task in rep.tasks:
        cell = rep.cells[(row, ref.task)]
        return rep.display[ref.task], cell.mean, cell.std, [cell]
    if ref.task in suites and set(suites[ref.task]) == set(rep.tasks):
        stats = rep.suite_stats[row]
        return rep.suite, stats["mean"], stats["std"], [rep.cells[(row, t)] for t in rep.tasks]
    return None


def _comparison_line(row: tuple, ref: Reference, label: str, mean: float, std: float, cells) -> dict:
    splits = sorted({str(c.protocol["split"]) for c in cells if c.protocol})
    prompts = sorted({str(c.protocol["prompt"]) for c in cells if c.protocol})
    reference = ref.ap * SCALE
    return {"model": row[0], "regime": row[1], "shots": row[2], "column": label, "ours": mean, "ours_std": std,
            "our_split": "+".join(splits), "our_prompt": "+".join(prompts), "reference": reference,
            "delta": mean - reference if not math.isnan(mean) else math.nan, "ref_split": ref.split,
            "ref_prompt": ref.prompt, "check": _protocol_check(splits, ref.split, prompts, ref.prompt),
            "ref_model": ref.model, "source": ref.source, "note": ref.note}  # fmt: skip


def comparison_rows(frame) -> tuple[list[str], list[list[str]], list[str]]:
    """Header, string rows and numbered source lines of a :func:`compare` frame, for text/Markdown/LaTeX."""
    sources = list(dict.fromkeys(frame["source"])) if len(frame) else []
    header = ["model", "regime", "shots", "column", "ours", "reference", "delta", "ours: split / prompt",
              "reference: split / prompt", "check", "source"]  # fmt: skip
    body = []
    for _, line in frame.iterrows():
        ours = "—" if math.isnan(line["ours"]) else f"{line['ours']:.1f}"
        if not math.isnan(line["ours_std"]):
            ours += f" ± {line['ours_std']:.1f}"
        delta = "—" if math.isnan(line["delta"]) else f"{line['delta']:+.1f}"
        body.append([str(line["model"]), str(line["regime"]), str(line["shots"]), str(line["column"]), ours,
                     f"{line['reference']:.1f}", delta, f"{line['our_split']} / {line['our_prompt']}",
                     f"{line['ref_split']} / {line['ref_prompt']}", str(line["check"]),
                     f"[{sources.index(line['source']) + 1}]"])  # fmt: skip
    notes = [f"[{i}] {s}" for i, s in enumerate(sources, start=1)]
    return header, body, notes
