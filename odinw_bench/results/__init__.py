"""Results: run records (the single source of truth), the leaderboard derived from them, and COCO evaluation.

Holds:
    schema: the run-record schema (TypedDicts checked by pydantic in strict mode) and its rules.
    records: run ids, making, writing (atomically), reading and finding run records.
    leaderboard: the CSV leaderboard, one row per run, safe under concurrent writers.
    provenance: git state, library versions and GPU of a run.
    evaluation: COCO AP with pycocotools, predictions files.
    external: a run record for predictions made elsewhere (``evaluate --model-name``).

May import: ``models``, ``data``, ``tasks`` and the base modules; never ``training``, ``runs``, ``report`` or
the CLI.
"""
