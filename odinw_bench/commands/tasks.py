"""``python -m odinw_bench tasks``: list tasks, their categories and, where data is present, split sizes."""

from __future__ import annotations

import argparse
import json
import sys

HELP = "list tasks and suites: categories and, where the data is present, images and boxes per split"

EPILOG = """\
examples:
  python -m odinw_bench tasks                                   # every task in tasks/, then the suites
  python -m odinw_bench tasks --suite odinw13                   # the 13 ODinW tasks of the GLIP paper
  python -m odinw_bench tasks --suite odinw13 --data-root DATASET/odinw   # ... with image/box counts
  python -m odinw_bench tasks --suite odinw35 --json > odinw35.json
  python -m odinw_bench tasks --suite aquarium,raccoon,path/to/my_task.yaml
"""

# Width of the category column in the text listing; --json always has every name.
_CATEGORY_WIDTH = 64


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the command's options."""
    parser.add_argument(
        "--suite",
        metavar="SPEC",
        help="suite (odinw13, odinw35), task name, task YAML path, or a comma list of them (default: all tasks)",
    )
    parser.add_argument(
        "--data-root",
        metavar="DIR",
        help="folder holding the datasets (default: $ODINW_ROOT, else DATASET/odinw); used for the counts",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")


def _entries(args: argparse.Namespace) -> list[dict]:
    from odinw_bench.data.validation import split_counts
    from odinw_bench.tasks import registry

    if args.suite:
        pairs = registry.resolve_tasks(args.suite)
    else:
        pairs = [(registry.load_task(name), None) for name in registry.list_task_names()]
    entries = []
    for task, variant in pairs:
        # Listing must never write: synthetic data is only counted if it was generated before.
        root = registry.resolve_data_root(task, args.data_root)
        counts = split_counts(task, root) if task.task_dir(root).is_dir() else {s: None for s in task.splits}
        entries.append(
            {
                "name": task.name,
                "display_name": task.display_name,
                "num_categories": len(task.categories),
                "categories": task.category_names,
                "prompt_variant": variant,
                "prompt_variants": sorted(task.prompt_variants),
                "val_split": task.val_split,
                "test_split": task.test_split,
                "data_root": str(root),
                "data_present": task.task_dir(root).is_dir(),
                "splits": counts,
            }
        )
    return entries


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _counts_line(splits: dict) -> str:
    parts = []
    for split, count in splits.items():
        if count is None:
            parts.append(f"{split}: absent")
        elif "error" in count:
            parts.append(f"{split}: unreadable ({count['error']})")
        else:
            parts.append(f"{split}: {count['images']} images, {count['boxes']} boxes")
    return " | ".join(parts)


def _print_table(entries: list[dict]) -> None:
    name_w = max([len("name")] + [len(e["name"]) for e in entries])
    disp_w = max([len("display name")] + [len(e["display_name"]) for e in entries])
    print(f"{'name':<{name_w}}  {'display name':<{disp_w}}  {'#cat':>4}  categories")
    for e in entries:
        names = ", ".join(repr(n) if n != n.strip() or not n else n for n in e["categories"])
        variant = f"  [prompt: {e['prompt_variant']}]" if e["prompt_variant"] else ""
        line = f"{e['name']:<{name_w}}  {e['display_name']:<{disp_w}}  {e['num_categories']:>4}  "
        print(line + _shorten(names, _CATEGORY_WIDTH) + variant)
        if e["data_present"]:
            print(" " * (name_w + 2) + _counts_line(e["splits"]))


def _print_suites() -> None:
    from odinw_bench.tasks.registry import load_suites

    suites = load_suites()
    if suites:
        print("\nsuites:")
    for name, suite in suites.items():
        prompt = f", prompt variant {suite.prompt}" if suite.prompt else ""
        print(f"  {name}: {len(suite.tasks)} tasks{prompt}" + (f"  ({suite.description})" if suite.description else ""))


def _no_data_note(args: argparse.Namespace) -> str:
    """Why no counts are shown: the data root given does not exist, holds none of these tasks, or none was given."""
    import os
    from pathlib import Path

    from odinw_bench.tasks.registry import DATA_ROOT_ENV

    if args.data_root:
        given, source = args.data_root, "--data-root"
    else:
        given, source = os.environ.get(DATA_ROOT_ENV), f"${DATA_ROOT_ENV}"
    if not given:
        return f"no data found; pass --data-root DIR or set ${DATA_ROOT_ENV} to show image and box counts"
    if not Path(given).expanduser().is_dir():
        return f"{source} {given} does not exist: no image and box counts; fetch data with `download`"
    return f"none of these tasks has data under {given}; fetch it with `download`"


def run(args: argparse.Namespace) -> int:
    """List the tasks; return 0."""
    entries = _entries(args)
    if args.json:
        json.dump(entries, sys.stdout, indent=2, ensure_ascii=False)
        print()
        return 0
    _print_table(entries)
    if not any(e["data_present"] for e in entries):
        print("\n(" + _no_data_note(args) + ")")
    if not args.suite:
        _print_suites()
    return 0
