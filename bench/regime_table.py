"""Every regime on the demo suite, with and without the val search: AP, trainable parameters and wall time.

Usage:
    python bench/regime_table.py --output /tmp/regimes              # run the sweeps, then print the table
    python bench/regime_table.py --output /tmp/regimes --table-only # print the table of runs already there

Runs, with glip-nano (pre-trained here, shipped), seed 3 and the demo's recipe (``configs/glip_nano_demo.yaml``),
the README's comparison grid through ``python -m odinw_bench sweep`` (one process per command, ``--workers``
runs at a time, one thread each):

* ``--shots 0,1,3,10 --regimes linear-probe,lora,full``;
* ``--shots 1,3,10 --regimes prompt optim.lr=0.05`` and ``--regimes deep-prompt optim.lr=0.1`` (the regimes' own
  learning rates: the demo recipe's ``optim.lr`` would otherwise apply to them);
* the same three again with ``--search lr --search-epochs 3``.

A rerun skips every run whose record exists. The table averages each cell's test AP (x 100) over the 4 tasks; the
wall time in brackets is a run's mean duration, its search trials included (their records' durations), so it
depends on what else the machine runs. It is printed as Markdown, then the report of the same records can be built
with ``python -m odinw_bench report OUTPUT/runs --suite demo_suite``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ORDER = ("zero-shot", "linear-probe", "prompt", "deep-prompt", "lora", "full")
SHOTS = (1, 3, 10)
SEARCH = ["--search", "lr", "--search-epochs", "3"]
COMMANDS = (
    ["--shots", "0,1,3,10", "--regimes", "linear-probe,lora,full"],
    ["--shots", "1,3,10", "--regimes", "prompt", "optim.lr=0.05"],
    ["--shots", "1,3,10", "--regimes", "deep-prompt", "optim.lr=0.1"],
    ["--shots", "1,3,10", "--regimes", "linear-probe,lora,full", *SEARCH],
    ["--shots", "1,3,10", "--regimes", "prompt", *SEARCH, "optim.lr=0.05"],
    ["--shots", "1,3,10", "--regimes", "deep-prompt", *SEARCH, "optim.lr=0.1"],
)


def run_sweeps(output: Path, workers: int) -> None:
    """The grid's sweep commands, one after another (each resumes what exists)."""
    common = ["--suite", "demo_suite", "--seeds", "3", "--models", "glip-nano", "--recipe",
              "configs/glip_nano_demo.yaml", "--output", str(output), "--workers", str(workers), "--threads", "1",
              "--no-progress"]
    for extra in COMMANDS:
        argv = [sys.executable, "-m", "odinw_bench", "sweep", *common, *extra]
        print("$", " ".join(argv[1:]), flush=True)
        subprocess.run(argv, cwd=ROOT, check=True)


def _trial_seconds(output: Path, record: dict) -> float:
    """Summed durations of a searched run's trials (their records under ``search/<run id>/``)."""
    total = 0.0
    for trial in (record.get("search") or {}).get("trials", []):
        found = list((output / "search").glob(f"*/runs/*/*/*/*_{trial['run_id']}.json"))
        total += json.loads(found[0].read_text())["duration_s"] if found else 0.0
    return total


def collect(output: Path) -> dict[tuple[str, int], list[tuple[float, int, float]]]:
    """(regime label, shots) -> [(test AP, trainable parameters, seconds incl. trials)] of glip-nano's runs."""
    cells: dict[tuple[str, int], list[tuple[float, int, float]]] = defaultdict(list)
    for path in sorted(output.glob("runs/*/glip-nano/*/*.json")):
        if path.stem.endswith("_predictions"):
            continue
        record = json.loads(path.read_text())
        if record["status"] != "ok":
            continue
        label = record["regime"] + ("+search" if record.get("search") else "")
        seconds = record["duration_s"] + _trial_seconds(output, record)
        cells[(label, record["shots"])].append((record["metrics"]["AP"], record["params"]["trainable"], seconds))
    return cells


def markdown_table(cells: dict[tuple[str, int], list[tuple[float, int, float]]], tasks: int = 4) -> str:
    """The README's table; a cell with fewer than ``tasks`` runs shows how many it has. Zero-shot does not depend
    on k: its row repeats the one value in every column."""
    lines = ["| regime | trainable | 1-shot | 3-shot | 10-shot |", "|---|---:|---:|---:|---:|"]
    for regime in ORDER:
        for label in (regime,) if regime == "zero-shot" else (regime, f"{regime}+search"):
            found = {shots: runs for (name, shots), runs in cells.items() if name == label}
            if not found:
                continue
            trainable = next(iter(found.values()))[0][1]
            row = []
            for shots in SHOTS:
                runs = found.get(0 if regime == "zero-shot" else shots, [])  # zero-shot: the same k-free reference
                if len(runs) < tasks:
                    row.append(f"{len(runs)}/{tasks} runs")
                    continue
                ap = 100 * statistics.mean(r[0] for r in runs)
                row.append(f"{ap:.1f} ({statistics.mean(r[2] for r in runs):.0f} s)")
            lines.append(f"| {label} | {trainable:,} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, required=True, help="results folder of the sweeps")
    parser.add_argument("--workers", type=int, default=2, help="runs at a time (default 2)")
    parser.add_argument("--table-only", action="store_true", help="only tabulate the records already there")
    args = parser.parse_args()
    if not args.table_only:
        run_sweeps(args.output.resolve(), args.workers)
    cells = collect(args.output)
    if not cells:
        print(f"no glip-nano run records under {args.output}/runs", file=sys.stderr)
        return 2
    print(markdown_table(cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
