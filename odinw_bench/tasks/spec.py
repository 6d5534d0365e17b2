"""The task schema: what one ``tasks/<name>.yaml`` holds.

These dataclasses are OmegaConf structured-config schemas: a YAML key that is not declared here is an error,
and so is a missing required field. Loading, suites and validation live in :mod:`odinw_bench.tasks.registry`.

Paths in a task are relative to the task's dataset folder ``<data_root>/<root>``, exactly as GLIP's
``configs/odinw_13`` register them (e.g. ``train/annotations_without_background.json``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import MISSING


@dataclass
class CategorySpec:
    """One category as GLIP's ``OVERRIDE_CATEGORY`` lists it.

    ``id`` is the category id in the annotation JSON; ``name`` is the (overridden) name used for the prompt
    and for evaluation.
    """

    id: int = MISSING
    name: str = MISSING
    supercategory: str = ""


@dataclass
class SplitSpec:
    """One registered split: an annotation file and the folder its ``file_name`` entries are relative to."""

    ann_file: str = MISSING
    img_dir: str = MISSING


@dataclass
class CaptionPart:
    """GLIP ``CAPTION_PROMPT`` entry for one category: only ``name`` is the positive span."""

    prefix: str = ""
    name: str = MISSING
    suffix: str = ""


@dataclass
class PromptSpec:
    """How category names become a text prompt.

    Attributes:
        separator: Text between categories (GLIP: ``". "``); no trailing separator is added.
        names: Optional renamed categories, one per category in task order (GLIP ``odinw_35`` overrides).
        caption: Optional per-category prefix/name/suffix entries (GLIP ``CAPTION_PROMPT``), one per category.
    """

    separator: str = ". "
    names: list[str] | None = None
    caption: list[CaptionPart] | None = None


@dataclass
class TaskSpec:
    """One detection task.

    Attributes:
        name: Lower-case identifier, equal to the YAML file stem (``aquarium``).
        display_name: Short name used in tables (``Aquarium``).
        version: Bumped whenever anything that changes numbers changes; records carry it.
        source: GLIP config this task mirrors (e.g. ``configs/odinw_13/Aquarium_...yaml``), for provenance.
        download: Zip name (without ``.zip``) in ``GLIPModel/GLIP/odinw_35`` that contains the task.
        root: Dataset folder relative to the data root (``Aquarium/Aquarium Combined.v2-raw-1024.coco``).
        categories: Categories in contiguous-label order (label i+1 = categories[i]).
        splits: Registered splits by name: ``train``, ``val``, ``test``, and ``minival`` where GLIP has it.
        fewshot: Prepared k-shot file patterns by split name, with ``{shots}`` and ``{seed}`` placeholders.
        val_split: Split used for model selection and early stopping (GLIP ``DATASETS.TEST``).
        test_split: Split reported as test (PascalVOC's ``test`` points at its valid folder).
        zero_shot_split: Default split for zero-shot evaluation (GLIP README: the validation split).
        prompt: The default prompt (GLIP ``odinw_13``: plain category names).
        prompt_variants: Named alternative prompts, e.g. ``odinw_35`` (caption prompts, renamed categories).
        synthetic: True for built-in tasks whose data odinw_bench generates (the ``demo`` task, the demo suite).
        synthetic_recipe: Which generator writes a synthetic task's data: ``""`` is the fruit ``demo`` generator
            (:mod:`odinw_bench.data.synthetic`), any other name a recipe of :mod:`odinw_bench.data.demo_suite`.
    """

    name: str = MISSING
    display_name: str = MISSING
    version: int = 1
    source: str = ""
    download: str = ""
    root: str = MISSING
    categories: list[CategorySpec] = MISSING
    splits: dict[str, SplitSpec] = MISSING
    fewshot: dict[str, str] = field(default_factory=dict)
    val_split: str = "val"
    test_split: str = "test"
    zero_shot_split: str = "val"
    prompt: PromptSpec = field(default_factory=PromptSpec)
    prompt_variants: dict[str, PromptSpec] = field(default_factory=dict)
    synthetic: bool = False
    synthetic_recipe: str = ""

    @property
    def category_names(self) -> list[str]:
        """Category names in label order."""
        return [c.name for c in self.categories]

    @property
    def category_ids(self) -> list[int]:
        """Annotation-JSON category ids in label order."""
        return [c.id for c in self.categories]

    def task_dir(self, data_root: str | Path) -> Path:
        """The task's dataset folder under ``data_root``."""
        return Path(data_root) / self.root

    def split_files(self, split: str, data_root: str | Path) -> tuple[Path, Path]:
        """Absolute ``(ann_file, img_dir)`` of a registered split.

        Raises:
            KeyError: If the task has no such split (callers turn this into a UserError).
        """
        spec = self.splits[split]
        base = self.task_dir(data_root)
        return base / spec.ann_file, base / spec.img_dir

    def fewshot_file(self, split: str, shots: int, seed: int, data_root: str | Path) -> Path:
        """Absolute path of GLIP's prepared ``fewshot_*_shot{k}_seed{s}.json`` for ``split``."""
        return self.task_dir(data_root) / self.fewshot[split].format(shots=shots, seed=seed)

    def prompt_for(self, variant: str | None = None) -> PromptSpec:
        """The default prompt, or a named variant (``None`` or ``"default"`` gives the default)."""
        if variant in (None, "default"):
            return self.prompt
        return self.prompt_variants[variant]
