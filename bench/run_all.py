"""Every benchmark of this folder with its default settings, one after the other (``make bench``).

Usage:
    python bench/run_all.py                      # all of them (about 10 minutes on 2 CPU cores)
    python bench/run_all.py --only regimes,eval_cache

Each script runs in its own process and prints what it measured; ``bench_grounding.py`` first gets a small
held-out corpus (``python -m odinw_bench corpus --seed 7``, another seed than the pre-training's) in a temporary
folder. Ends with a summary line per script and exits 1 if any failed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def scripts() -> list[str]:
    """The benchmark names (``bench_<name>.py``), sorted."""
    return sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))


def _command(name: str, scratch: Path) -> list[list[str]]:
    """The commands of one benchmark: its preparation (if any), then the script with its defaults."""
    script = [sys.executable, str(HERE / f"bench_{name}.py")]
    if name == "grounding":
        corpus = scratch / "heldout"
        return [[sys.executable, "-m", "odinw_bench", "corpus", "--out", str(corpus), "--images", "60", "--seed", "7"],
                [*script, "--corpus", str(corpus)]]
    return [script]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=None, help=f"comma list of {', '.join(scripts())}")
    args = parser.parse_args()
    chosen = args.only.split(",") if args.only else scripts()
    unknown = sorted(set(chosen) - set(scripts()))
    if unknown:
        print(f"error: unknown benchmark {', '.join(unknown)} (known: {', '.join(scripts())})", file=sys.stderr)
        return 2
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="odinw_bench_") as scratch:
        for name in chosen:
            print(f"\n=== bench_{name}.py", flush=True)
            started = time.time()
            code = 0
            for command in _command(name, Path(scratch)):
                code = subprocess.run(command, cwd=REPO).returncode
                if code:
                    break
            outcomes.append((name, code, time.time() - started))
    print("\nsummary:")
    for name, code, seconds in outcomes:
        print(f"  bench_{name}.py  {'ok' if code == 0 else f'failed (exit {code})'}  {seconds:.0f} s")
    return 1 if any(code for _, code, _ in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
