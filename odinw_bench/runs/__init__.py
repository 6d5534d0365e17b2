"""Runs: one run from its arguments to its record, and grids of runs (sweeps) on local workers or SLURM.

Holds:
    arguments: the arguments of ``run`` (shared by the CLI, sweeps and sweep workers).
    request: a run's request, checked (model name, data on disk) before anything is built.
    identity: a run's id and checkpoint hash, computed without loading weights or data.
    runner: one run: build the model, fit or evaluate, write the record, predictions and leaderboard row.
    inference: predicting and scoring a whole split with a backend.
    cache: what one process reuses across its runs (checkpoints, indexed splits).
    sweep, launchers: planning a grid, resuming it, and running its cells in-process, in workers or via submitit.
    submitted: the jobs a sweep submitted and that have not ended (so a rerun never submits them twice).

May import: ``training``, ``results``, ``models``, ``data``, ``tasks`` and the base modules; never ``report`` or
the CLI.
"""
