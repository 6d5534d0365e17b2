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

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from odinw_bench.data.coco import read_split, resolve_ann_file
from odinw_bench.errors import UserError
from odinw_bench.tasks.registry import DATA_ROOT_ENV, resolve_data_root

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
        ensure_synthetic_task(task, root)
    return root


def ensure_synthetic_task(task: TaskSpec, data_root: str | Path) -> Path:
    """Generate a synthetic task's data under ``data_root`` with the generator its YAML names, unless up to date.

    ``synthetic_recipe: ""`` is the fruit ``demo`` generator (its folder is ``<data_root>/demo``); any other value
    names a recipe of :mod:`odinw_bench.data.demo_suite`, generated in the task's folder.

    Returns:
        The task's folder.

    Raises:
        UserError: For an unknown recipe (naming the task's YAML and the field), or a data root that cannot be
            written.
    """
    if not task.synthetic_recipe:
        from odinw_bench.data.synthetic import ensure_demo_data

        return ensure_demo_data(data_root)
    from odinw_bench.data.demo_suite import demo_recipes, ensure_demo_task

    recipes = demo_recipes()
    if task.synthetic_recipe not in recipes:
        from odinw_bench.tasks.registry import tasks_dir

        yaml_path = tasks_dir() / f"{task.name}.yaml" if _is_registered(task) else None  # else: no path known
        raise UserError(f"unknown recipe {task.synthetic_recipe!r} of task '{task.name}'; known: "
                        f"{', '.join(recipes)} (or \"\" for the fruit demo generator)", path=yaml_path,
                        field="synthetic_recipe")
    return ensure_demo_task(recipes[task.synthetic_recipe], task.task_dir(data_root))


def load_task_split(task: TaskSpec, split: str, data_root: str | Path) -> CocoSplit:
    """Read a registered split of a task from ``data_root`` with the task's categories.

    Built-in synthetic tasks are generated under ``data_root`` on first use.

    Raises:
        UserError: For an unknown split, or when the task's data is not under ``data_root`` (see
            :func:`require_split_files`).
    """
    data_root = Path(data_root)
    if split not in task.splits:
        raise UserError(
            f"task '{task.name}' has no split '{split}'; it has: {', '.join(task.splits)}", field="split"
        )
    if task.synthetic:
        prepare_data_root(task, data_root)
    require_split_files(task, [split], data_root)
    ann_file, img_dir = task.split_files(split, data_root)
    return read_split(resolve_ann_file(ann_file), img_dir, task.categories)


def require_split_files(task: TaskSpec, splits: Iterable[str], data_root: str | Path) -> None:
    """Check that the annotation files of ``splits`` are under ``data_root``, without reading them.

    A run calls this before it builds (or downloads) a model, naming only the splits it reads: a zero-shot run
    needs just the split it scores.

    Raises:
        UserError: Naming the first missing thing (the data root, the task's folder, or the splits whose
            annotation file is absent) and how to get it: the ``download`` command for a task with a zip, or
            where a custom task's files belong.
    """
    data_root = Path(data_root)
    wanted = list(dict.fromkeys(splits))
    unknown = [split for split in wanted if split not in task.splits]
    if unknown:
        raise UserError(f"task '{task.name}' has no split '{unknown[0]}'; it has: {', '.join(task.splits)}",
                        field="split")
    named = ", ".join(f"'{split}'" for split in wanted)
    needs = f"task '{task.name}' needs split{'s' if len(wanted) > 1 else ''} {named}"
    if not data_root.is_dir():
        raise UserError(f"data root does not exist; {needs}; {how_to_get_data(task, data_root)}", path=data_root)
    task_dir = task.task_dir(data_root)
    if not task_dir.is_dir():
        raise UserError(f"task folder not found; {needs}; {how_to_get_data(task, data_root)}", path=task_dir)
    absent = [split for split in wanted if not resolve_ann_file(task.split_files(split, data_root)[0]).is_file()]
    if absent:
        first = task.split_files(absent[0], data_root)[0]
        others = f" (and {', '.join(repr(s) for s in absent[1:])})" if len(absent) > 1 else ""
        message = f"annotation file of split '{absent[0]}'{others} of task '{task.name}' not found"
        raise UserError(f"{message}; {how_to_get_data(task, data_root)}", path=first)


def how_to_get_data(task: TaskSpec, data_root: str | Path) -> str:
    """How to put a task's data under ``data_root``: the ``download`` command, or where a custom task's files go.

    Only a task with a ``download`` zip can be downloaded; a registered one is named as ``--task <name>``, a task
    from a YAML path as ``--task <its YAML>`` (a name would not resolve).
    """
    if task.synthetic:
        return "it is generated on first use: check that the data root can be written"
    if not task.download:
        return (f"this task has no `download` zip: put its files in {task.task_dir(data_root)} "
                f"(its YAML's paths are relative to that folder) or pass --data-root (or set ${DATA_ROOT_ENV})")
    which = task.name if _is_registered(task) else "<this task's YAML>"
    return f"get it with: python -m odinw_bench download --task {which} --data-root {data_root}"


def _is_registered(task: TaskSpec) -> bool:
    """True when ``task`` is the task YAML of that name in the registry (not a custom file of the same name)."""
    from odinw_bench.tasks.registry import list_task_names, load_task

    return task.name in list_task_names() and load_task(task.name) == task
