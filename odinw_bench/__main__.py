"""Entry point for ``python -m odinw_bench``."""

from odinw_bench.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
