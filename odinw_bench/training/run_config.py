"""The run configuration: everything a fine-tuning or evaluation run needs beyond the task and the model.

Values come from ``configs/glip_odinw.yaml`` (GLIP's ODinW recipe, each value annotated with its GLIP source), then
from an optional user file, then from ``key=value`` overrides on the command line. The schema is an OmegaConf
structured config, so an unknown key or a value of the wrong type is an error naming the key (and the file).

Example:
    >>> cfg = load_run_config(overrides=["optim.lr=2e-4", "data.batch_size=2"])
    >>> cfg.optim.lr, cfg.data.batch_size
    (0.0002, 2)
    >>> resolved = load_run_config().resolved_for("prompt", shots=5)
    >>> resolved["optim"]["lr"], resolved["optim"]["weight_decay"], resolved["data"]["dataset_copies"]
    (0.05, 0.25, 2)
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from odinw_bench import paths
from odinw_bench.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    from odinw_bench.training.regimes import Regime

logger = logging.getLogger(__name__)

#: GLIP's ``GENERAL_COPY`` per shot count (README: ``1_200_8``, ``3_200_4``, ``5_200_2``, ``10_200_1``).
GLIP_DATASET_COPIES: dict[int, int] = {1: 8, 3: 4, 5: 2, 10: 1}
SAMPLERS = ("auto", "glip", "prepared")
WANDB_MODES = ("off", "offline", "online")
PRECISIONS = ("auto", "64", "64-true", "32", "32-true", "16", "16-mixed", "bf16", "bf16-mixed", "16-true",
              "bf16-true")
# Keys a regime may set (Regime.lr / Regime.weight_decay) unless the user set them.
_REGIME_KEYS = {"optim.lr": "lr", "optim.weight_decay": "weight_decay"}
_KEY_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


@dataclass
class OptimConfig:
    """AdamW and its parameter-group rules (GLIP's ``make_optimizer``)."""

    lr: float = 1e-4
    language_lr: float = 1e-5
    weight_decay: float = 0.05
    bias_lr_factor: float = 2.0
    weight_decay_bias: float = 0.0
    grad_clip_norm: float = 1.0  # full-model L2 norm; 0 disables clipping


@dataclass
class ScheduleConfig:
    """Epochs, ReduceLROnPlateau on val AP and early stopping; ``*_full`` apply when shots is ``all``."""

    max_epochs: int = 200
    plateau_factor: float = 0.1
    plateau_patience: int = 3
    plateau_patience_full: int = 2
    min_lr: float = 1e-6
    early_stop_patience: int = 8
    early_stop_patience_full: int = 4


@dataclass
class DataConfig:
    """Loaders and sampling; ``dataset_copies`` None means GLIP's 8/4/2/1 rule (:func:`glip_dataset_copies`)."""

    batch_size: int = 4
    eval_batch_size: int = 1
    num_workers: int = 2
    sampler: str = "auto"
    dataset_copies: Optional[int] = None  # noqa: UP045 (OmegaConf reads typing.Optional)
    subsample_val: bool = True


@dataclass
class ModelConfig:
    """Model options that are part of the recipe rather than of the checkpoint."""

    freeze_conv_body_at: int = 2


@dataclass
class TrainerConfig:
    """Lightning ``Trainer`` options; precision ``auto`` is bf16/16-mixed AMP on a GPU and 32-bit on the CPU."""

    precision: str = "auto"
    accelerator: str = "auto"
    devices: int = 1
    limit_train_batches: Optional[Union[int, float]] = None  # noqa: UP007, UP045
    deterministic: bool = True
    log_every_n_steps: int = 10


@dataclass
class WandbConfig:
    """Weights & Biases logging (never blocks a run)."""

    mode: str = "off"
    project: str = "odinw_bench"
    entity: Optional[str] = None  # noqa: UP045
    log_images: int = 4


@dataclass
class RunConfig:
    """The whole run configuration (see ``configs/glip_odinw.yaml`` for the source of each default)."""

    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def __post_init__(self) -> None:
        # Not a field: which dotted keys the user set (overrides, or a user file's values that differ from the
        # recipe). Regime defaults never replace them.
        self._explicit: frozenset[str] = frozenset()

    @property
    def explicit_keys(self) -> list[str]:
        """Dotted keys the user set explicitly, sorted."""
        return sorted(self._explicit)

    def to_dict(self) -> dict[str, Any]:
        """The configuration as plain data, for run records."""
        return dataclasses.asdict(self)

    def resolved_for(self, regime: Regime | str, shots: int | str) -> dict[str, Any]:
        """The values one run uses, with the regime's and the data size's rules applied.

        * ``optim.lr`` / ``optim.weight_decay`` take the regime's values (prompt tuning: 0.05 / 0.25) unless the
          user set them explicitly;
        * ``schedule.plateau_patience`` / ``early_stop_patience`` take the ``*_full`` values when ``shots`` is
          ``"all"`` (GLIP's README: ``STEP_PATIENCE 2``, ``AUTO_TERMINATE_PATIENCE 4`` for full data); the
          ``*_full`` keys are dropped from the result;
        * ``data.dataset_copies`` None becomes :func:`glip_dataset_copies` of ``shots``.

        Args:
            regime: A :class:`~odinw_bench.training.regimes.Regime` or its name.
            shots: k, ``0`` (zero-shot) or ``"all"``.

        Returns:
            ``{"regime", "shots", "optim", "schedule", "data", "model", "trainer", "wandb"}``, plain data.
        """
        from odinw_bench.data.sampling import parse_shots
        from odinw_bench.training.regimes import get_regime

        regime = get_regime(regime) if isinstance(regime, str) else regime
        shots = parse_shots(shots)
        out = self.to_dict()
        for key, attr in _REGIME_KEYS.items():
            value = getattr(regime, attr)
            if value is not None and key not in self._explicit:
                out["optim"][attr] = value
        schedule = out["schedule"]
        plateau_full = schedule.pop("plateau_patience_full")
        stop_full = schedule.pop("early_stop_patience_full")
        if shots == "all":
            schedule["plateau_patience"], schedule["early_stop_patience"] = plateau_full, stop_full
        if out["data"]["dataset_copies"] is None:
            out["data"]["dataset_copies"] = glip_dataset_copies(shots)
        return {"regime": regime.name, "shots": shots, **out}


def glip_dataset_copies(shots: int | str) -> int:
    """GLIP's ``GENERAL_COPY``: how many times the training set is repeated per epoch.

    The README's settings are 8/4/2/1 for 1/3/5/10 shots and 1 for full data; any other k gets 1 (GLIP has no
    rule for it: set ``data.dataset_copies``). ``odinw_bench.training.datamodule`` applies the same rule.
    """
    return GLIP_DATASET_COPIES.get(shots, 1) if isinstance(shots, int) else 1


def default_config_path() -> Path:
    """The recipe file, ``configs/glip_odinw.yaml`` at the repository root."""
    return paths.REPO_DIR / "configs" / "glip_odinw.yaml"


def load_run_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> RunConfig:
    """Read the recipe, then ``path`` (if given), then ``key=value`` overrides.

    Args:
        path: A YAML file with any subset of the keys (on top of the recipe).
        overrides: Dotted ``key=value`` strings, e.g. ``["optim.lr=2e-4", "trainer.precision=32"]``; values are
            YAML (``null`` for None).

    Raises:
        UserError: For an unreadable file, an unknown key, a value of the wrong type or out of range, or a
            malformed override; naming the key and the file.
    """
    recipe = default_config_path()
    config, user, override_keys = merge_recipe(RunConfig, recipe, path, overrides)
    user_keys: set[str] = set()
    if user is not None:
        defaults = OmegaConf.to_container(OmegaConf.structured(RunConfig))
        user_keys = {k for k, v in _leaves(OmegaConf.to_container(user)) if _get(defaults, k) != v}
    _check_values(config, set(override_keys), Path(path) if path is not None else recipe)
    config._explicit = frozenset(user_keys | set(override_keys))
    return config


def merge_recipe(schema: type, recipe: Path, path: str | Path | None, overrides: Sequence[str]) -> tuple:
    """Schema defaults, then the recipe file, a user YAML and ``key=value`` overrides, each checked on merge.

    The fine-tuning recipe and the pre-training recipe are read alike: same checks, same error messages.

    Args:
        schema: The structured-config dataclass (its defaults are the recipe where the file is absent).
        recipe: The recipe YAML shipped in ``configs/`` (skipped when an installed copy lacks it).
        path: A user YAML with any subset of the keys, or None.
        overrides: Dotted ``key=value`` strings.

    Returns:
        ``(config, user, override_keys)``: the config object, the user YAML as read (None without one) and the
        override keys in order.

    Raises:
        UserError: For an unreadable file, an unknown key, a value of the wrong type or a malformed override.
    """
    merged = OmegaConf.structured(schema)
    if recipe.is_file():
        merged = _merge(merged, _read_yaml(recipe), recipe)
    else:  # an installed copy without the repository's configs/: the schema defaults are the same recipe
        logger.debug("recipe %s not found; using the schema defaults", recipe)
    user = None
    if path is not None:
        user = _read_yaml(Path(path))
        merged = _merge(merged, user, Path(path))
    override_keys = []
    for item in overrides:
        key, dotlist = _parse_override(item)
        merged = _merge(merged, dotlist, None, key)
        override_keys.append(key)
    try:
        config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:  # pragma: no cover - merge already validated every value
        raise _config_error(err, None) from None
    if config.wandb.mode == "False":  # YAML 1.1 reads a bare `off` as false
        config.wandb.mode = "off"
    return config, user, override_keys


def _read_yaml(path: Path) -> DictConfig:
    """A YAML mapping read with OmegaConf's loader (duplicate keys are errors)."""
    try:
        text = path.read_text(encoding="utf-8")
        raw = OmegaConf.create(text) if text.strip() else OmegaConf.create({})
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UserError(f"invalid YAML{where}: {err.problem or err.context}", path=path) from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError, OmegaConfBaseException) as err:
        raise UserError(f"cannot read run config: {err}", path=path) from None
    if not isinstance(raw, DictConfig):
        raise UserError("expected a mapping of config sections at the top level", path=path)
    return raw


def _parse_override(item: str) -> tuple[str, DictConfig]:
    """``"a.b=value"`` -> ``("a.b", {a: {b: value}})``, the value parsed as YAML."""
    key, sep, value = str(item).partition("=")
    key = key.strip()
    if not sep or not _KEY_PATTERN.match(key):
        raise UserError(f"expected key=value (e.g. optim.lr=2e-4), found {item!r}", field=key or str(item))
    try:
        return key, OmegaConf.from_dotlist([f"{key}={value}"])
    except (OmegaConfBaseException, yaml.YAMLError) as err:
        raise UserError(f"cannot parse the value {value!r}: {err}", field=key) from None


def _merge(base: DictConfig, update: DictConfig, path: Path | None, key: str | None = None) -> DictConfig:
    try:
        return OmegaConf.merge(base, update)
    except OmegaConfBaseException as err:
        raise _config_error(err, path, key) from None


def _config_error(err: OmegaConfBaseException, path: Path | None, fallback_key: str | None = None) -> UserError:
    """An OmegaConf schema error as a UserError naming the dotted key (and the file, or the command line)."""
    key = str(getattr(err, "full_key", "") or "") or fallback_key
    message = str(err).splitlines()[0]  # the rest is OmegaConf's context block
    object_type = getattr(err, "object_type", None)
    if isinstance(err, ConfigKeyError) and dataclasses.is_dataclass(object_type):
        known = [f.name for f in dataclasses.fields(object_type)]
        close = difflib.get_close_matches(str(getattr(err, "key", key)), known, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        message = f"unknown key{hint} (allowed: {', '.join(known)})"
    elif "is not a subclass of" in message:
        message = "expected a section (a mapping of keys), found a single value"
    elif "is not Optional" in message or "Incompatible value 'None'" in message:
        message = "null is not allowed here"
    where = "" if path is not None else " (command-line override)"
    return UserError(message + where, path=path, field=key)


def _leaves(tree: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if not isinstance(tree, Mapping):
        return [(prefix, tree)]
    out = []
    for key, value in tree.items():
        out += _leaves(value, f"{prefix}.{key}" if prefix else str(key))
    return out


def _get(tree: Mapping, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(tree, Mapping) or part not in tree:
            return object()  # never equal to a user's value
        tree = tree[part]
    return tree


def _check_values(config: RunConfig, from_command_line: set[str], path: Path) -> None:
    """Ranges and choices the types cannot express; errors name the key and where its value came from."""
    data = config.to_dict()

    def fail(key: str, message: str) -> None:
        if key in from_command_line:
            raise UserError(f"{message} (command-line override)", field=key)
        raise UserError(message, path=path, field=key)

    for key, value in _leaves(data):
        if isinstance(value, float) and not math.isfinite(value):
            fail(key, f"expected a finite number, found {value}")
    positive = ("optim.lr", "optim.language_lr", "optim.bias_lr_factor", "schedule.max_epochs",
                "schedule.early_stop_patience", "schedule.early_stop_patience_full", "data.batch_size",
                "data.eval_batch_size", "trainer.devices", "trainer.log_every_n_steps")
    # A plateau patience of 0 is valid (torch: lower the lr after the first evaluation without gain).
    non_negative = ("optim.weight_decay", "optim.weight_decay_bias", "optim.grad_clip_norm", "schedule.min_lr",
                    "schedule.plateau_patience", "schedule.plateau_patience_full", "data.num_workers",
                    "wandb.log_images")
    for key in positive:
        if _get(data, key) <= 0:
            fail(key, f"expected a value > 0, found {_get(data, key)}")
    for key in non_negative:
        if _get(data, key) < 0:
            fail(key, f"expected a value >= 0, found {_get(data, key)}")
    if not 0 < config.schedule.plateau_factor < 1:
        fail("schedule.plateau_factor", f"expected a value in (0, 1), found {config.schedule.plateau_factor}")
    if config.data.dataset_copies is not None and config.data.dataset_copies < 1:
        fail("data.dataset_copies", f"expected null (GLIP's rule) or >= 1, found {config.data.dataset_copies}")
    limit = config.trainer.limit_train_batches
    if limit is not None and (limit <= 0 or (isinstance(limit, float) and limit > 1)):
        fail("trainer.limit_train_batches", f"expected a number of batches >= 1 or a fraction in (0, 1], "
                                            f"found {limit}")
    for key, value, allowed in (("data.sampler", config.data.sampler, SAMPLERS),
                                ("wandb.mode", config.wandb.mode, WANDB_MODES),
                                ("trainer.precision", config.trainer.precision, PRECISIONS)):
        if value not in allowed:
            fail(key, f"expected one of {', '.join(allowed)}, found {value!r}")


def resolve_precision(precision: str, accelerator: str = "auto") -> str:
    """Lightning's precision for ``precision="auto"``: AMP on a GPU (bf16 where supported, else fp16 with a
    GradScaler, as GLIP's ``SOLVER.USE_AMP``), full 32-bit on the CPU; other values pass through."""
    if precision != "auto":
        return precision
    if accelerator not in ("auto", "gpu", "cuda"):
        return "32-true"
    import torch

    if not torch.cuda.is_available():
        return "32-true"
    return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"


def eval_placement(trainer: Mapping[str, Any]) -> tuple[str, str | None]:
    """Where a run's own evaluation (the test split after fitting, zero-shot) runs, and under which autocast dtype.

    The trainer's accelerator and first device, with the precision's autocast, as Lightning's validation runs:
    Lightning hands the model back on the CPU after ``fit``, and a zero-shot run never meets a trainer.

    Args:
        trainer: The resolved ``trainer`` section (``accelerator``, ``devices``, ``precision``).

    Returns:
        ``(device, dtype)``: e.g. ``("cuda:0", "bfloat16")`` or ``("cpu", None)`` (no autocast).
    """
    import torch

    accelerator = trainer.get("accelerator", "auto")
    device = "cpu"
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        devices = trainer.get("devices", "auto")
        first = devices[0] if isinstance(devices, (list, tuple)) and devices else 0
        device = f"cuda:{int(first)}"
    precision = resolve_precision(str(trainer.get("precision", "auto")), accelerator)
    dtype = {"bf16-mixed": "bfloat16", "bf16-true": "bfloat16", "16-mixed": "float16",
             "16-true": "float16"}.get(precision)
    return device, dtype


def trainer_kwargs(resolved: Mapping[str, Any]) -> dict[str, Any]:
    """``pl.Trainer`` keyword arguments for a :meth:`RunConfig.resolved_for` result.

    Gradient clipping is Lightning's (full-model L2 norm, after AMP unscaling, as GLIP's ``full_model`` clip).
    Validation runs once per epoch over the duplicated training set, GLIP's ``CHECKPOINT_PER_EPOCH 1.0``.
    """
    trainer = resolved["trainer"]
    clip = resolved["optim"]["grad_clip_norm"]
    kwargs: dict[str, Any] = {
        "max_epochs": resolved["schedule"]["max_epochs"],
        "accelerator": trainer["accelerator"],
        "devices": trainer["devices"],
        "precision": resolve_precision(trainer["precision"], trainer["accelerator"]),
        "gradient_clip_val": clip if clip > 0 else None,
        "gradient_clip_algorithm": "norm",
        "deterministic": trainer["deterministic"],
        "log_every_n_steps": trainer["log_every_n_steps"],
        "check_val_every_n_epoch": 1,
    }
    if trainer["limit_train_batches"] is not None:
        kwargs["limit_train_batches"] = trainer["limit_train_batches"]
    return kwargs
