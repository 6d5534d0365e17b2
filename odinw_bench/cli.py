"""Command-line interface: ``python -m odinw_bench <command> ...``.

Each subcommand lives in ``odinw_bench/commands/<name>.py`` and exposes ``HELP`` (one line), ``EPILOG``
(runnable examples), ``add_arguments(parser)`` and ``run(args) -> int``. Command modules import only the
standard library at module level, so ``--help`` stays fast; heavy packages are imported inside ``run``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from odinw_bench import __version__
from odinw_bench.errors import UserError
from odinw_bench.runs.arguments import OneLineErrorParser

# Order shown in --help. Plain data: the modules are imported when the parser is built, never at package import.
COMMANDS: tuple[str, ...] = ("run", "sweep", "tasks", "validate", "download", "evaluate", "report", "demo",
                             "corpus", "pretrain")

EPILOG = """\
examples:
  python -m odinw_bench run --task aquarium --shots 1          # fine-tune GLIP-T on 1-shot Aquarium, seed 3
  python -m odinw_bench run --task aquarium --shots 3 --regime prompt --seed 3 30 300
  python -m odinw_bench tasks --suite odinw13                 # list the 13 ODinW tasks
  python -m odinw_bench tasks --data-root DATASET/odinw        # ... with image/box counts per split
  python -m odinw_bench download --suite odinw13 --data-root DATASET/odinw
  python -m odinw_bench validate --task aquarium --data-root DATASET/odinw
  python -m odinw_bench evaluate --task aquarium --split test --predictions preds.json
  python -m odinw_bench report results/runs --suite odinw13 --out results/report/odinw13
  python -m odinw_bench demo                                   # offline: glip-nano's transfer, the paper's table
  python -m odinw_bench corpus --out corpus/ --images 10000    # a synthetic grounding corpus
  python -m odinw_bench pretrain --corpus corpus/ --out pretrain/   # pre-train glip-nano on it
"""


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with one sub-parser per command (all of them report errors in one line)."""
    parser = OneLineErrorParser(
        prog="python -m odinw_bench",
        description="Few-shot and prompt-tuning benchmark for grounded detectors (GLIP) on ODinW.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"odinw_bench {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"odinw_bench.commands.{name}")
        cmd = sub.add_parser(
            name,
            help=module.HELP,
            description=module.HELP,
            epilog=getattr(module, "EPILOG", None),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run, _parser=cmd)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """``parse_args``, except that an unrecognized argument points at the command's ``--help``, not the top one."""
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        getattr(args, "_parser", parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen command.

    Returns:
        The process exit code: 0 on success, 2 for a :class:`UserError` (bad input), 1 otherwise.
    """
    parser = build_parser()
    try:
        args = _parse(parser, argv)
    except UserError as err:  # argparse's refusal, one line (OneLineErrorParser)
        print(f"error: {err}", file=sys.stderr)
        return UserError.exit_code
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if args.command is None:
        parser.print_help()
        return 0
    try:
        code = int(args._run(args) or 0)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        # Output piped into e.g. `head` that stopped reading: not an error. Point stdout at devnull so the
        # interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except UserError as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return UserError.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
