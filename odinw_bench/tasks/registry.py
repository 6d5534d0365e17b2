"""The task registry: task YAMLs, suites and data roots.

Tasks are data: one flat YAML per task in ``tasks/`` (or ``$ODINW_BENCH_TASKS``), parsed against the
:class:`~odinw_bench.tasks.spec.TaskSpec` schema with OmegaConf structured configs, and suites in
``tasks/suites.yaml``. Nothing is read at import time; every call reads the files it needs. Example::

    from odinw_bench.tasks.registry import load_task, resolve_data_root, resolve_tasks

    aquarium = load_task("aquarium")                     # or any task YAML path (a custom COCO task)
    for task, variant in resolve_tasks("odinw35"):       # variant: "odinw_35" where the task defines it
        prompt = task.prompt_for(variant)
    root = resolve_data_root(aquarium, "DATASET/odinw")

Checks of a task against its files live in :mod:`odinw_bench.data.validation`.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import (
    ConfigKeyError,
    MissingMandatoryValue,
    OmegaConfBaseException,
)

from odinw_bench import paths
from odinw_bench.errors import UserError
from odinw_bench.tasks.spec import CaptionPart, CategorySpec, TaskSpec

logger = logging.getLogger(__name__)

TASKS_DIR_ENV = "ODINW_BENCH_TASKS"
DATA_ROOT_ENV = "ODINW_ROOT"
#: GLIP's ``odinw/download.py`` default, relative to the working directory.
DEFAULT_DATA_ROOT = "DATASET/odinw"
SUITES_FILE = "suites.yaml"
#: Shots and seeds of GLIP's prepared ``fewshot_*_shot{k}_seed{s}.json`` files.
FEWSHOT_SHOTS = (1, 3, 5, 10)
FEWSHOT_SEEDS = (3, 30, 300)
# Names end up in file names, comma lists and results; keep them to one safe token.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
#: A zip name becomes ``<data_root>/<name>.zip`` and a URL: letters, digits, '_' and '-' only (the ODinW zips are
#: alphanumeric), so it can never be a path that leaves the data root.
DOWNLOAD_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


@dataclass
class SuiteSpec:
    """One entry of ``suites.yaml``: task names and the prompt variant the suite runs them with."""

    tasks: list[str] = MISSING
    prompt: str | None = None
    description: str = ""


def tasks_dir() -> Path:
    """The task folder: ``$ODINW_BENCH_TASKS`` if set, else the repository's ``tasks/``."""
    env = os.environ.get(TASKS_DIR_ENV)
    return Path(env) if env else paths.REPO_DIR / "tasks"


def list_task_names() -> list[str]:
    """Sorted names of the task YAMLs in :func:`tasks_dir` (file stems, ``suites.yaml`` excluded)."""
    folder = tasks_dir()
    if not folder.is_dir():
        raise UserError(f"task folder not found (set ${TASKS_DIR_ENV} to a folder of task YAMLs)", path=folder)
    return sorted(p.stem for p in folder.glob("*.yaml") if p.name != SUITES_FILE)


def _read_yaml(path: Path, text: str | None = None) -> DictConfig:
    """Parse a YAML mapping (OmegaConf's loader: duplicate keys are errors); ``text`` if already read."""
    try:
        text = path.read_text(encoding="utf-8") if text is None else text
        raw = OmegaConf.create(text) if text.strip() else OmegaConf.create({})
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UserError(f"invalid YAML{where}: {err.problem or err.context}", path=path) from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise UserError(f"cannot read YAML: {err}", path=path) from None
    if not isinstance(raw, DictConfig):
        raise UserError("expected a mapping of fields at the top level", path=path)
    return raw


def _config_error(err: OmegaConfBaseException, path: Path, prefix: str = "") -> UserError:
    """Turn an OmegaConf schema error into a UserError naming the file and the dotted field."""
    key = str(getattr(err, "full_key", "") or "")
    name = f"{prefix}.{key}" if prefix and key else (prefix or key or None)
    message = str(err).splitlines()[0]  # the rest is OmegaConf's context block
    if isinstance(err, ConfigKeyError) and dataclasses.is_dataclass(getattr(err, "object_type", None)):
        known = [f.name for f in dataclasses.fields(err.object_type)]
        close = difflib.get_close_matches(str(getattr(err, "key", key)), known, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        message = f"unknown key{hint} (allowed: {', '.join(known)})"
    elif isinstance(err, MissingMandatoryValue):
        message = "missing required field"
    return UserError(message, path=path, field=name)


def _check_items(items: Any, schema: type, prefix: str, path: Path) -> None:
    """Check each element of a list of dataclasses on its own, so errors name ``field[i].key``."""
    if not isinstance(items, ListConfig):
        return
    for index, item in enumerate(items):
        try:
            OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), item))
        except OmegaConfBaseException as err:
            raise _config_error(err, path, f"{prefix}[{index}]") from None


def _structured(raw: DictConfig, path: Path) -> TaskSpec:
    """Merge the YAML into the TaskSpec schema: unknown keys, missing fields and wrong types fail here."""
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TaskSpec), raw))
    except OmegaConfBaseException as err:
        error = _config_error(err, path)
    # OmegaConf's error inside a list element lacks the element's index: check list items one by one to name it.
    _check_items(raw.get("categories"), CategorySpec, "categories", path)
    prompts = {"prompt": raw.get("prompt")}
    variants = raw.get("prompt_variants")
    if isinstance(variants, DictConfig):
        prompts.update({f"prompt_variants.{k}": v for k, v in variants.items()})
    for prefix, spec in prompts.items():
        if isinstance(spec, DictConfig):
            _check_items(spec.get("caption"), CaptionPart, f"{prefix}.caption", path)
    raise error


def _first_duplicate(values: list[Any]) -> tuple[Any, int, int] | None:
    seen: dict[Any, int] = {}
    for index, value in enumerate(values):
        if value in seen:
            return value, seen[value], index
        seen[value] = index
    return None


def _check_task(task: TaskSpec, path: Path) -> None:
    """Checks the schema cannot express: names, unique categories, known splits, prompt lengths."""

    def fail(message: str, name: str) -> None:
        raise UserError(message, path=path, field=name)

    if not _NAME_RE.match(task.name):
        fail(f"{task.name!r} is not a valid task name (letters, digits, '_', '-', '.')", "name")
    if task.name != path.stem:
        fail(f"{task.name!r} must equal the file name stem {path.stem!r}", "name")
    if task.download and not DOWNLOAD_NAME_RE.match(task.download):
        fail(f"{task.download!r} is not a zip name (letters, digits, '_' and '-', without '.zip'; e.g. 'Aquarium')",
             "download")
    if task.synthetic_recipe and not task.synthetic:
        fail("a generator recipe needs `synthetic: true` (only synthetic tasks are generated)", "synthetic_recipe")
    if not task.categories:
        fail("a task needs at least one category", "categories")
    for attr in ("id", "name"):
        dup = _first_duplicate([getattr(c, attr) for c in task.categories])
        if dup:
            fail(f"duplicate category {attr} {dup[0]!r} (categories[{dup[1]}] and categories[{dup[2]}])", "categories")
    negative = [c.id for c in task.categories if c.id < 0]
    if negative:
        fail(f"category ids must be >= 0, got {negative}", "categories")
    if not task.splits:
        fail("a task needs at least one split", "splits")
    for attr in ("val_split", "test_split", "zero_shot_split"):
        if getattr(task, attr) not in task.splits:
            fail(f"{getattr(task, attr)!r} is not one of the task's splits {sorted(task.splits)}", attr)
    for split, pattern in task.fewshot.items():
        if split not in task.splits:
            fail(f"{split!r} is not one of the task's splits {sorted(task.splits)}", f"fewshot.{split}")
        if "{shots}" not in pattern or "{seed}" not in pattern:
            fail("a few-shot pattern needs both {shots} and {seed}", f"fewshot.{split}")
        try:
            pattern.format(shots=1, seed=3)
        except (KeyError, IndexError, ValueError) as err:
            fail(f"only {{shots}} and {{seed}} may be used in the pattern ({err!r})", f"fewshot.{split}")
    if "default" in task.prompt_variants:
        fail("'default' is reserved for the task's own prompt", "prompt_variants.default")
    specs = {"prompt": task.prompt, **{f"prompt_variants.{k}": v for k, v in task.prompt_variants.items()}}
    for prefix, spec in specs.items():
        for attr in ("names", "caption"):
            values = getattr(spec, attr)
            if values is not None and len(values) != len(task.categories):
                count = f"has {len(values)} entries but the task has {len(task.categories)} categories"
                fail(count, f"{prefix}.{attr}")


def load_task_file(path: str | Path) -> TaskSpec:
    """Parse and check one task YAML (any path: a custom COCO task works like a built-in one).

    Raises:
        UserError: Naming the file and the field, for any schema or consistency problem.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError("task file not found", path=path) from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read: {err}", path=path) from None
    # OmegaConf parsing is slow-ish and suites load the same files repeatedly: memoize on path and content.
    return copy.deepcopy(_parse_task_text(str(path), text))


@functools.lru_cache(maxsize=256)
def _parse_task_text(path: str, text: str) -> TaskSpec:
    task = _structured(_read_yaml(Path(path), text), Path(path))
    _check_task(task, Path(path))
    logger.debug("parsed task %s from %s", task.name, path)
    return task


def _looks_like_path(spec: str) -> bool:
    return spec.endswith((".yaml", ".yml")) or "/" in spec or os.sep in spec


def _unknown(kind: str, name: str, known: list[str]) -> UserError:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f"; did you mean: {', '.join(close)}?" if close else ""
    return UserError(f"unknown {kind} {name!r}{hint} (`python -m odinw_bench tasks` lists them; a YAML path works too)")


def load_task(name_or_path: str | Path) -> TaskSpec:
    """Load a task by name (a file in :func:`tasks_dir`) or from any task YAML path."""
    spec = str(name_or_path)
    if isinstance(name_or_path, Path) or _looks_like_path(spec):
        return load_task_file(spec)
    path = tasks_dir() / f"{spec}.yaml"
    if not path.is_file():
        raise _unknown("task", spec, list_task_names())
    return load_task_file(path)


def load_suites() -> dict[str, SuiteSpec]:
    """All suites of ``suites.yaml`` (empty if the file does not exist)."""
    path = tasks_dir() / SUITES_FILE
    if not path.is_file():
        return {}
    raw = _read_yaml(path)
    suites = {}
    for name, entry in raw.items():
        if (tasks_dir() / f"{name}.yaml").is_file():
            raise UserError("a suite may not share its name with a task", path=path, field=str(name))
        try:
            suites[str(name)] = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(SuiteSpec), entry))
        except OmegaConfBaseException as err:
            raise _config_error(err, path, str(name)) from None
    return suites


def _suite(name: str) -> SuiteSpec:
    suites = load_suites()
    if name not in suites:
        raise _unknown("suite", name, list(suites))
    return suites[name]


def load_suite(name: str) -> list[TaskSpec]:
    """The tasks of a suite, in the order ``suites.yaml`` lists them."""
    return [task for task, _ in _suite_tasks(name, _suite(name))]


def _suite_tasks(name: str, suite: SuiteSpec) -> list[tuple[TaskSpec, str | None]]:
    path = tasks_dir() / SUITES_FILE
    tasks = []
    for index, task_name in enumerate(suite.tasks):
        if not (tasks_dir() / f"{task_name}.yaml").is_file():
            raise UserError(f"no task file {task_name}.yaml", path=path, field=f"{name}.tasks[{index}]")
        tasks.append(load_task_file(tasks_dir() / f"{task_name}.yaml"))
    if suite.prompt and not any(suite.prompt in t.prompt_variants for t in tasks):
        message = f"no task of the suite defines prompt variant {suite.prompt!r}"
        raise UserError(message, path=path, field=f"{name}.prompt")
    # A suite's variant applies where a task defines it; elsewhere the task's default prompt is that suite's prompt.
    return [(t, suite.prompt if suite.prompt in t.prompt_variants else None) for t in tasks]


def resolve_tasks(spec: str) -> list[tuple[TaskSpec, str | None]]:
    """Tasks and prompt variants from a task name, suite name, task YAML path, or a comma list of them.

    Returns:
        ``(task, variant)`` pairs in the given order without repeats; ``variant`` is the suite's prompt variant
        for tasks that define it, else ``None`` (the task's default prompt).
    """
    items = [s.strip() for s in str(spec).split(",") if s.strip()]
    if not items:
        raise UserError("no task given (a task name, suite, YAML path or comma list)", field="task")
    suites = None
    result: dict[str, tuple[TaskSpec, str | None]] = {}
    for item in items:
        if _looks_like_path(item):
            pairs = [(load_task_file(item), None)]
        else:
            suites = load_suites() if suites is None else suites
            if item in suites:
                pairs = _suite_tasks(item, suites[item])
            elif (tasks_dir() / f"{item}.yaml").is_file():
                pairs = [(load_task_file(tasks_dir() / f"{item}.yaml"), None)]
            else:
                raise _unknown("task or suite", item, list_task_names() + list(suites))
        for task, variant in pairs:
            result.setdefault(task.name, (task, variant))
    return list(result.values())


def resolve_data_root(task: TaskSpec, data_root: str | Path | None = None) -> Path:
    """Where the task's dataset folder lives (a path only: nothing is read or generated).

    Real tasks: ``data_root`` (the ``--data-root`` flag), else ``$ODINW_ROOT``, else ``DATASET/odinw``.
    Synthetic tasks: ``data_root`` or ``<cache>/data``. :func:`odinw_bench.data.task_files.prepare_data_root`
    also generates a synthetic task's data there.
    """
    if task.synthetic:
        return Path(data_root).expanduser() if data_root else paths.cache_dir() / "data"
    return Path(data_root or os.environ.get(DATA_ROOT_ENV) or DEFAULT_DATA_ROOT).expanduser()


def task_sha256(task: TaskSpec) -> str:
    """SHA-256 of the parsed task (every field, canonical JSON): equal for equal content, whatever the formatting."""
    text = json.dumps(dataclasses.asdict(task), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
