"""Subcommands of ``python -m odinw_bench`` (one module each; see :mod:`odinw_bench.cli`)."""
