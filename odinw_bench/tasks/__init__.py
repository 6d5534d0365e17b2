"""Tasks as data: the task schema and the registry of task YAMLs and suites.

Holds:
    spec: :class:`~odinw_bench.tasks.spec.TaskSpec` and its parts (categories, splits, prompts), plain dataclasses.
    registry: reading ``tasks/*.yaml`` and ``tasks/suites.yaml`` (checked against the schema), data roots, hashes.

May import: the base modules (``errors``) only. It describes tasks; reading their files is :mod:`odinw_bench.data`.
"""
