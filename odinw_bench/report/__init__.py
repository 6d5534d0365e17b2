"""Reports: the paper-style tables, plots and comparisons built from run records.

Holds:
    grid: aggregation over seeds and tasks into rows model x regime x shots (statistics in its docstring).
    formats: text, CSV, Markdown and LaTeX tables and the sources listing.
    plots: data-efficiency plots (AP vs shots).
    categories: per-category AP tables.
    published: published numbers shipped as data files, and the comparison with ours.
    wandb_upload: a copy of the report in W&B.
    ownership: a report replaces only files a report wrote (never the run leaderboard).
    build: assembling all of the above into the files one ``report`` command writes.

May import: every package below the CLI (``runs``, ``training``, ``results``, ``tasks``, ...); never ``commands``
or ``cli``.
"""
