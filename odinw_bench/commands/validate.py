"""``python -m odinw_bench validate``: check a task's files before spending GPU time on it."""

from __future__ import annotations

import argparse
import sys

HELP = "check a task's data: folders, annotation JSONs, categories, boxes, images, few-shot files and prompts"

EPILOG = """\
examples:
  python -m odinw_bench validate --task aquarium --data-root DATASET/odinw
  python -m odinw_bench validate --task odinw13 --data-root DATASET/odinw       # every task of a suite
  python -m odinw_bench validate --task path/to/my_task.yaml --data-root data   # a custom COCO task
  python -m odinw_bench validate --task demo                                    # generates the demo data if absent

Lines marked i are information: quirks of the data (images without boxes, annotations without iscrowd,
grayscale or RGBA images, boxes under 4 px, boxes touching or crossing the border) that are handled as GLIP does.
exit status: 0 when every check passes (warnings and information allowed), 2 otherwise.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the command's options."""
    parser.add_argument(
        "--task",
        required=True,
        metavar="SPEC",
        help="task name, task YAML path, suite (odinw13, odinw35) or a comma list of them",
    )
    parser.add_argument(
        "--data-root",
        metavar="DIR",
        help="folder holding the datasets (default: $ODINW_ROOT, else DATASET/odinw)",
    )
    parser.add_argument(
        "--images",
        type=int,
        default=25,
        metavar="N",
        help="images per split to decode, spread over the split (0: all; default 25)",
    )


def _marks() -> tuple[str, str, str, str]:
    """Pass / fail / warning / information marks, in ASCII where stdout cannot encode the symbols."""
    try:
        "✓✗⚠".encode(sys.stdout.encoding or "ascii")
        return "✓", "✗", "⚠", "i"
    except (UnicodeEncodeError, LookupError):
        return "OK", "FAIL", "WARN", "INFO"


def run(args: argparse.Namespace) -> int:
    """Validate the tasks; raise UserError (exit 2) if any check fails."""
    from odinw_bench.data.task_files import prepare_data_root
    from odinw_bench.data.validation import validate_task
    from odinw_bench.errors import UserError
    from odinw_bench.tasks.registry import resolve_tasks

    if args.images < 0:
        raise UserError("must be >= 0", field="--images")
    passed, failed, warned, info = _marks()
    failures = []
    for task, _ in resolve_tasks(args.task):
        report = validate_task(task, prepare_data_root(task, args.data_root), max_images=args.images)
        print(f"{task.name} ({task.display_name}), data root {report.data_root}")
        for check in report.checks:
            mark = info if check.info else passed if check.ok else (warned if check.warning else failed)
            print(f"  {mark} {check.name}" + (f": {check.detail}" if check.detail else ""))
        failures += [(task.name, check) for check in report.failures]
    if failures:
        name, first = failures[0]
        more = f" (and {len(failures) - 1} more failed checks above)" if len(failures) > 1 else ""
        raise UserError(f"{name}: {first.name}: {first.detail}{more}", field=None)
    print("all checks passed")
    return 0
