"""Published ODinW numbers as data, and the comparison of our rows against them.

The files in ``odinw_bench/resources/published/*.csv`` hold one reference per line: ``model`` (the published
name, e.g. ``GLIP-T(C)``), ``task`` (our task name, or a suite name such as ``odinw13`` for the suite average),
``regime`` and ``shots`` (our names: ``zero-shot``/``0``, ``full``, ``prompt``, ``linear-probe`` at ``1``, ``3``,
``5``, ``10`` or ``all``; a file without these columns holds zero-shot numbers), ``AP`` and ``std`` (fractions in
[0, 1], as in our records; ``std`` empty when none is published), the ``split`` and ``prompt`` the source used
(``unstated`` when it does not say; a suite average over tasks on different splits joins them with ``+``),
``source``, ``protocol`` (``;``-separated codes of ``protocol_flags.csv``: how the published protocol differs from
ours) and ``note``. ``#`` lines at the top describe the file; the folder's README.md describes them all.

A reference applies to the row of our table with the same regime and shots, of a model that maps onto its
published name (:data:`MODEL_ALIASES`). The comparison states the split and prompt on both sides and flags where
they differ (a number measured on ``test`` is not the same quantity as one measured on ``val``), and lists the
protocol differences of each reference.

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
from odinw_bench.report.grid import REGIME_ORDER, SCALE, ZERO_SHOT, Report

logger = logging.getLogger(__name__)

#: Our model presets -> the names the published tables use.
MODEL_ALIASES = {"glip-t-a": "GLIP-T(A)", "glip-t-b": "GLIP-T(B)", "glip-t-c": "GLIP-T(C)", "glip-t": "GLIP-T",
                 "glip-l": "GLIP-L", "gdino-t": "Grounding DINO-T", "gdino-b": "Grounding DINO-B",
                 "mm-gdino-t": "MM-GDINO-T(O365,GoldG,V3Det)"}  # fmt: skip
#: Published prompt names -> our prompt variants (the odinw_13 configs' names are our default prompts).
PROMPT_ALIASES = {"odinw_13": "default"}
UNSTATED = "unstated"
COLUMNS = ("model", "task", "AP", "split", "prompt", "source", "note")
#: Columns a file may leave out, with the value they then have (older files hold zero-shot numbers only).
OPTIONAL_COLUMNS = {"regime": ZERO_SHOT, "shots": "0", "std": "", "protocol": ""}
#: The file that defines the protocol codes (it is not a file of references).
FLAGS_FILE = "protocol_flags.csv"


@dataclass(frozen=True)
class Reference:
    """One published number; ``ap`` and ``std`` are fractions in [0, 1] (``std`` NaN when not published);
    ``protocol`` holds codes of :func:`load_protocol_flags`; ``file`` is where it was read from."""

    model: str
    task: str
    ap: float
    split: str
    prompt: str
    source: str
    note: str
    file: str
    regime: str = ZERO_SHOT
    shots: str = "0"
    std: float = math.nan
    protocol: tuple[str, ...] = ()


def published_dir() -> Path:
    """Folder of the shipped reference files."""
    return paths.RESOURCES_DIR / "published"


def _data_lines(path: Path) -> list[str]:
    try:
        return [line for line in path.read_text(encoding="utf-8").splitlines() if not line.startswith("#")]
    except OSError as err:
        raise UserError(f"cannot read published numbers ({err.strerror})", path=path) from None


def load_references(paths: Sequence[str | Path] | None = None) -> list[Reference]:
    """Read reference CSVs (default: every shipped file), checking each row.

    Raises:
        UserError: Naming the file and ``row N.<column>`` for a missing column, an empty model/task/source, an
            AP or std that is not a fraction in [0, 1], an unknown regime, or shots that do not fit the regime.
    """
    if paths is not None:
        files = [Path(p) for p in paths]
    else:
        files = sorted(p for p in published_dir().glob("*.csv") if p.name != FLAGS_FILE)
    refs = []
    for path in files:
        reader = csv.DictReader(_data_lines(path))
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise UserError(f"missing column(s) {', '.join(missing)}", path=path, field="header")
        for number, row in enumerate(reader, start=1):
            refs.append(_parse_row(row, path, number))
    return refs


def load_protocol_flags(path: str | Path | None = None) -> dict[str, str]:
    """Protocol code -> its text, from ``protocol_flags.csv`` (default: the shipped one).

    Raises:
        UserError: The file cannot be read or lacks the ``code`` / ``text`` columns.
    """
    path = Path(path) if path is not None else published_dir() / FLAGS_FILE
    reader = csv.DictReader(_data_lines(path))
    if not {"code", "text"} <= set(reader.fieldnames or []):
        raise UserError("missing column(s) code, text", path=path, field="header")
    return {row["code"].strip(): (row["text"] or "").strip() for row in reader if row.get("code")}


def _fraction(text: str, column: str, path: Path, number: int) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"{column} {text!r} is not a number", path=path, field=f"row {number}.{column}") from None
    if not 0.0 <= value <= 1.0:
        raise UserError(f"{column} {value} is not a fraction in [0, 1]", path=path, field=f"row {number}.{column}")
    return value


def _parse_row(row: Mapping[str, str | None], path: Path, number: int) -> Reference:
    values = {c: (row.get(c) or "").strip() for c in COLUMNS}
    values.update({c: (row.get(c) or default).strip() for c, default in OPTIONAL_COLUMNS.items()})
    for column in ("model", "task", "split", "prompt", "source"):
        if not values[column]:
            raise UserError(f"empty {column}", path=path, field=f"row {number}.{column}")
    regime, shots = values["regime"], values["shots"]
    if regime not in REGIME_ORDER:
        raise UserError(f"unknown regime {regime!r} (known: {', '.join(REGIME_ORDER)})", path=path,
                        field=f"row {number}.regime")  # fmt: skip
    if not (shots == "all" or shots.isdigit()) or (regime == ZERO_SHOT) != (shots == "0"):
        raise UserError(f"shots {shots!r} do not fit regime {regime!r} (zero-shot is shots 0; the others 1, 3, "
                        "5, 10 or all)", path=path, field=f"row {number}.shots")  # fmt: skip
    ap = _fraction(values["AP"], "AP", path, number)
    std = _fraction(values["std"], "std", path, number) if values["std"] else math.nan
    protocol = tuple(code.strip() for code in values["protocol"].split(";") if code.strip())
    return Reference(values["model"], values["task"], ap, values["split"], values["prompt"], values["source"],
                     values["note"], path.name, regime, str(int(shots)) if shots.isdigit() else shots, std,
                     protocol)  # fmt: skip


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
    """``same split and prompt``, or what differs / is unknown between ours and the reference's.

    A reference split ``a+b`` (a suite average over tasks scored on different splits) matches ours when our
    cells use exactly those splits.
    """
    issues = []
    pairs = (("split", our_splits, ref_split), ("prompt", our_prompts, PROMPT_ALIASES.get(ref_prompt, ref_prompt)))
    for what, mine, theirs in pairs:
        if theirs == UNSTATED:
            issues.append(f"reference {what} unstated")
        elif set(mine) != set(theirs.split("+")):
            issues.append(f"{what} differs (ours {'+'.join(mine)}, reference {theirs})")
    return "same split and prompt" if not issues else "; ".join(issues)


def compare(rep: Report, references: Sequence[Reference], suite_tasks: Mapping[str, Sequence[str]] | None = None):
    """Our rows next to the published numbers of the same model, regime and shots: one line per (row, column,
    reference).

    Args:
        rep: The leaderboard.
        references: From :func:`load_references`.
        suite_tasks: Suite name -> its tasks; a reference whose ``task`` is a suite applies to our suite average
            only when our columns are exactly that suite's tasks. Default: ``tasks/suites.yaml``.

    Returns:
        DataFrame with model, regime, shots, column, ours (x SCALE), ours_std, our_split, our_prompt, reference
        and reference_std (x SCALE), delta (= ours - reference, AP points), ref_split, ref_prompt, check (split
        and prompt agreement), protocol (the reference's protocol codes, ``;``-joined), ref_model, source, note.
    """
    import pandas as pd

    suites = _suite_tasks() if suite_tasks is None else suite_tasks
    lines = []
    for row in rep.rows:
        published = reference_model(row[0])
        if published is None:
            continue
        found = []
        for ref in references:
            if (ref.model, ref.regime, ref.shots) != (published, row[1], str(row[2])):
                continue
            target = _target(rep, row, ref, suites)
            if target is not None:
                position = rep.tasks.index(ref.task) if ref.task in rep.tasks else len(rep.tasks)
                found.append((position, ref.file, _comparison_line(row, ref, *target)))
        lines += [line for *_, line in sorted(found, key=lambda item: item[:2])]  # in table column order
    return pd.DataFrame(lines, columns=COMPARISON_COLUMNS)


COMPARISON_COLUMNS = ["model", "regime", "shots", "column", "ours", "ours_std", "our_split", "our_prompt",
                      "reference", "reference_std", "delta", "ref_split", "ref_prompt", "check", "protocol",
                      "ref_model", "source", "note"]  # fmt: skip


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
            "reference_std": ref.std * SCALE, "delta": mean - reference if not math.isnan(mean) else math.nan,
            "ref_split": ref.split, "ref_prompt": ref.prompt,
            "check": _protocol_check(splits, ref.split, prompts, ref.prompt), "protocol": ";".join(ref.protocol),
            "ref_model": ref.model, "source": ref.source, "note": ref.note}  # fmt: skip


def _mean_std_text(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "—"
    return f"{mean:.1f}" if math.isnan(std) else f"{mean:.1f} ± {std:.1f}"


def comparison_rows(frame, flags: Mapping[str, str] | None = None) -> tuple[list[str], list[list[str]], list[str]]:
    """Header, string rows and footnotes of a :func:`compare` frame, for text/Markdown/LaTeX.

    Sources are numbered ``[1]``, ``[2]``, ...; protocol differences lettered ``(a)``, ``(b)``, ... in the
    ``protocol`` column, each explained once below the table with its text from ``flags`` (default: the shipped
    :func:`load_protocol_flags`; an unknown code is shown as it is).
    """
    flags = load_protocol_flags() if flags is None else flags
    sources = list(dict.fromkeys(frame["source"])) if len(frame) else []
    codes = list(dict.fromkeys(c for text in (frame["protocol"] if len(frame) else []) for c in text.split(";") if c))
    letters = {code: _letter(i) for i, code in enumerate(codes)}
    header = ["model", "regime", "shots", "column", "ours", "reference", "delta", "ours: split / prompt",
              "reference: split / prompt", "check", "protocol", "source"]  # fmt: skip
    body = []
    for _, line in frame.iterrows():
        delta = "—" if math.isnan(line["delta"]) else f"{line['delta']:+.1f}"
        marks = ",".join(letters[c] for c in line["protocol"].split(";") if c) or "—"
        body.append([str(line["model"]), str(line["regime"]), str(line["shots"]), str(line["column"]),
                     _mean_std_text(line["ours"], line["ours_std"]),
                     _mean_std_text(line["reference"], line["reference_std"]), delta,
                     f"{line['our_split']} / {line['our_prompt']}", f"{line['ref_split']} / {line['ref_prompt']}",
                     str(line["check"]), marks, f"[{sources.index(line['source']) + 1}]"])  # fmt: skip
    notes = [f"[{i}] {s}" for i, s in enumerate(sources, start=1)]
    notes += [f"({letters[c]}) {flags.get(c, c)}" for c in codes]
    return header, body, notes


def _letter(index: int) -> str:
    """a, b, ..., z, aa, ab, ... for footnote ``index``."""
    return _letter(index // 26 - 1) + chr(ord("a") + index % 26) if index >= 26 else chr(ord("a") + index)
