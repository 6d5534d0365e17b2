"""A registered task's files: where its data root is, generating built-in synthetic data, reading its splits.

This is where a task (a :class:`~odinw_bench.tasks.spec.TaskSpec`) meets the files on disk: reading a COCO file
(:mod:`odinw_bench.data.coco`) knows nothing of tasks or of the demo generator. Example::

    from odinw_bench.data.task_files import load_task_split, prepare_data_root
    from odinw_bench.tasks.registry import load_task

    task = load_task("demo")
    root = prepare_data_root(task)              # <cache>/data, with the demo export generated on first use
    train = load_task_split(task, "train", root)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from odinw_bench.data.coco import read_split, resolve_ann_file
from odinw_bench.errors import UserError
from odinw_bench.tasks.registry import resolve_data_root

if TYPE_CHECKING:  # pragma: no cover
    from odinw_bench.data.coco import CocoSplit
    from odinw_bench.tasks.spec import TaskSpec


def prepare_data_root(task: TaskSpec, data_root: str | Path | None = None) -> Path:
    """:func:`~odinw_bench.tasks.registry.resolve_data_root`, then generate a synthetic task's data if absent.

    Returns:
        The data root.
    """
    root = resolve_data_root(task, data_root)
    if task.synthetic:
        from odinw_bench.data.synthetic import ensure_demo_data

        ensure_demo_data(root)
    return root


def load_task_split(task: TaskSpec, split: str, data_root: str | Path) -> CocoSplit:
    """Read a registered split of a task from ``data_root`` with the task's categories.

    Built-in synthetic tasks are generated under ``data_root`` on first use.

    Raises:
        UserError: For an unknown split, or when the task's data is not under ``data_root`` (the message names
            the ``download`` command that fetches it).
    """
    data_root = Path(data_root)
    if split not in task.splits:
        raise UserError(
            f"task '{task.name}' has no split '{split}'; it has: {', '.join(task.splits)}", field="split"
        )
    if task.synthetic:
        prepare_data_root(task, data_root)
    ann_file, img_dir = task.split_files(split, data_root)
    ann_file = resolve_ann_file(ann_file)
    if not ann_file.is_file():
        where = "data root" if not data_root.is_dir() else "annotation file"
        raise UserError(
            f"{where} not found for task '{task.name}' split '{split}'; get the data with: "
            f"python -m odinw_bench download --task {task.name} --data-root {data_root}",
            path=data_root if not data_root.is_dir() else ann_file,
        )
    return read_split(ann_file, img_dir, task.categories)
