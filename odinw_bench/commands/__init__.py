"""Subcommands of ``python -m odinw_bench``: one thin module each (see :mod:`odinw_bench.cli`).

Each parses its arguments and calls the layers below; command modules import only the standard library at module
level, so ``--help`` stays fast. May import every package; nothing imports a command except the CLI.
"""
