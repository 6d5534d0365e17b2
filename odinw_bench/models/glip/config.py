"""GLIP model configuration: a frozen dataclass and named presets.

The defaults of every dataclass are the merged values of GLIP-T (``configs/pretrain/glip_Swin_T_O365_GoldG.yaml``
on top of ``maskrcnn_benchmark/config/defaults.py``), so a preset only states how it differs from GLIP-T.
Official GLIP YAML files are read by :func:`~odinw_bench.models.glip.official_config.from_official_yaml`, which
is also importable from here. Only the standard library is imported here: the CLI reads configs at start-up.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from odinw_bench.errors import UserError

logger = logging.getLogger(__name__)

# `BertConfig.from_pretrained("bert-base-uncased")`, spelled out so that building a model never needs the network.
BERT_BASE_UNCASED: dict[str, Any] = {
    "vocab_size": 30522,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-12,
    "pad_token_id": 0,
    "position_embedding_type": "absolute",
}


@dataclass(frozen=True)
class SwinConfig:
    """Swin Transformer body (``MODEL.SWINT.*``); stage outputs C2..C5 have ``out_channels`` channels."""

    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 7
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.2
    patch_size: int = 4
    out_channels: tuple[int, ...] = (96, 192, 384, 768)
    # "RETINANET" backbones leave C2 without a norm (Identity) and put a LayerNorm on C3..C5.
    out_norm: tuple[bool, ...] = (False, True, True, True)
    use_checkpoint: bool = False


@dataclass(frozen=True)
class FPNConfig:
    """FPN on C3..C5 with P6/P7 (``MODEL.BACKBONE.OUT_CHANNELS``, ``MODEL.FPN.*``); DropBlock acts in training only."""

    out_channels: int = 256
    drop_block_prob: float = 0.3
    drop_block_size: int = 3


@dataclass(frozen=True)
class LanguageConfig:
    """Language backbone (``MODEL.LANGUAGE_BACKBONE.*``); ``bert`` holds the ``transformers.BertConfig`` fields."""

    bert: dict[str, Any] = field(default_factory=lambda: dict(BERT_BASE_UNCASED))
    lang_dim: int = 768
    max_query_len: int = 256
    n_layers: int = 1
    tokenizer: str = "bert-base-uncased"
    use_checkpoint: bool = False

    def bert_config(self) -> Any:
        """Build the ``transformers.BertConfig`` (imported lazily) used by BERT and by the head's BERT layers."""
        from transformers import BertConfig

        return BertConfig(**self.bert)


@dataclass(frozen=True)
class DyHeadConfig:
    """VLDyHead (``MODEL.DYHEAD.*`` incl. ``FUSE_CONFIG``). ``num_classes`` only sizes the unused ``cls_logits``."""

    channels: int = 256
    num_convs: int = 6
    num_classes: int = 81
    early_fuse: bool = True
    use_fused_dot_product: bool = True
    use_checkpoint: bool = True
    prior_prob: float = 0.01
    log_scale: float = 0.0
    group_norm_groups: int = 16
    # GLIP hard-codes the MHA-B fusion size (embed 2048, 8 heads) rather than reading JOINT_EMB_SIZE for it.
    fuse_embed_dim: int = 2048
    fuse_num_heads: int = 8
    add_linear_layer: bool = False


@dataclass(frozen=True)
class AnchorConfig:
    """ATSS anchors (``MODEL.RPN.ANCHOR_SIZES`` / ``ANCHOR_STRIDE``): one square anchor per location and level."""

    sizes: tuple[int, ...] = (64, 128, 256, 512, 1024)
    strides: tuple[int, ...] = (8, 16, 32, 64, 128)


@dataclass(frozen=True)
class PostProcessConfig:
    """ATSS post-processing (``MODEL.ATSS.*``)."""

    pre_nms_thresh: float = 0.05
    pre_nms_top_n: int = 1000
    nms_thresh: float = 0.6
    detections_per_img: int = 100


@dataclass(frozen=True)
class LossConfig:
    """ATSS assignment and losses (``MODEL.ATSS.TOPK``/``REG_LOSS_WEIGHT``, ``MODEL.FOCAL.*``, token focal loss)."""

    topk: int = 9
    reg_loss_weight: float = 2.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    token_alpha: float = 0.25
    token_gamma: float = 2.0
    dot_product_token_loss_weight: float = 1.0


@dataclass(frozen=True)
class InputConfig:
    """Image transforms (``INPUT.*``, ``AUGMENT.*``, ``DATALOADER.SIZE_DIVISIBILITY``); mean/std are BGR, 0..255."""

    min_size_test: int = 800
    max_size_test: int = 1333
    min_size_train: tuple[int, ...] = (480, 560, 640, 720, 800)
    max_size_train: int = 1333
    pixel_mean: tuple[float, ...] = (103.53, 116.28, 123.675)
    pixel_std: tuple[float, ...] = (57.375, 57.12, 58.395)
    size_divisibility: int = 32
    flip_prob_train: float = 0.5


_SECTIONS: dict[str, type] = {
    "swin": SwinConfig,
    "fpn": FPNConfig,
    "language": LanguageConfig,
    "dyhead": DyHeadConfig,
    "anchors": AnchorConfig,
    "postprocess": PostProcessConfig,
    "loss": LossConfig,
    "input": InputConfig,
}


@dataclass(frozen=True)
class GLIPConfig:
    """Everything needed to build, feed and train a GLIP model. Defaults are GLIP-T's.

    Frozen and comparable with ``==``; not hashable (``language.bert`` is a dict). Building one that the official
    code could not build (e.g. DyHead channels != FPN channels) raises :class:`UserError` naming the field.

    Attributes:
        name: Preset name or the source file it was read from (recorded in results).
        freeze_conv_body_at: ``MODEL.BACKBONE.FREEZE_CONV_BODY_AT``: -1 freezes nothing, 2 freezes the Swin patch
            embedding and stage 1 (GLIP-L's default; the README's ODinW fine-tuning command sets it for GLIP-T).
    """

    name: str = "glip-t"
    swin: SwinConfig = field(default_factory=SwinConfig)
    fpn: FPNConfig = field(default_factory=FPNConfig)
    language: LanguageConfig = field(default_factory=LanguageConfig)
    dyhead: DyHeadConfig = field(default_factory=DyHeadConfig)
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    postprocess: PostProcessConfig = field(default_factory=PostProcessConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    input: InputConfig = field(default_factory=InputConfig)
    freeze_conv_body_at: int = -1

    def __post_init__(self) -> None:
        for section, message in _consistency_errors(self):
            raise UserError(message, field=section)

    def replace(self, **changes: Any) -> GLIPConfig:
        """Return a copy with top-level fields replaced (sections are replaced whole)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (tuples become lists) for recording in results."""
        return _jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str | Path | None = None) -> GLIPConfig:
        """Inverse of :meth:`to_dict`. Unknown keys are an error; absent keys take the defaults.

        Args:
            data: A dict as written by :meth:`to_dict`.
            source: File the dict came from, named in error messages.
        """
        if not isinstance(data, dict):
            raise UserError("a GLIP config must be a mapping", path=source)
        kwargs = _known_fields(cls, data, prefix="", source=source)
        for section, section_cls in _SECTIONS.items():
            if section in kwargs:
                sub = kwargs[section]
                if not isinstance(sub, dict):
                    raise UserError("must be a mapping", path=source, field=section)
                kwargs[section] = section_cls(**_coerce(section_cls, _known_fields(section_cls, sub, section, source)))
        try:
            return cls(**_coerce(cls, kwargs))
        except UserError as err:
            raise UserError(err.message, path=source, field=err.field) from None


def _known_fields(cls: type, data: dict, prefix: str, source: str | Path | None) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            dotted = f"{prefix}.{key}" if prefix else str(key)
            raise UserError(f"unknown GLIP config key{hint}", path=source, field=dotted)
    return dict(data)


def _coerce(cls: type, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Turn lists back into tuples for tuple-typed fields so that round trips compare equal."""
    tuple_fields = {f.name for f in dataclasses.fields(cls) if str(f.type).startswith("tuple")}
    return {k: tuple(v) if k in tuple_fields and isinstance(v, list) else v for k, v in kwargs.items()}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _consistency_errors(cfg: GLIPConfig) -> list[tuple[str, str]]:
    """Combinations the official model cannot be built with; (field, message) pairs."""
    errors = []
    swin = cfg.swin
    if not len(swin.depths) == len(swin.num_heads) == len(swin.out_channels) == len(swin.out_norm) == 4:
        errors.append(("swin", "depths, num_heads, out_channels and out_norm need 4 stages each"))
    elif tuple(swin.out_channels) != tuple(swin.embed_dim * 2**i for i in range(4)):
        want = tuple(swin.embed_dim * 2**i for i in range(4))
        errors.append(("swin.out_channels", f"must be embed_dim x (1, 2, 4, 8) = {want}, got {swin.out_channels}"))
    if cfg.dyhead.channels != cfg.fpn.out_channels:
        errors.append(("dyhead.channels", "must equal the FPN output channels (the head takes the FPN levels as is)"))
    hidden = cfg.language.bert.get("hidden_size")
    if hidden != cfg.language.lang_dim:
        errors.append(("language.lang_dim", f"must equal the BERT hidden size ({hidden}), got {cfg.language.lang_dim}"))
    if len(cfg.anchors.sizes) != len(cfg.anchors.strides):
        errors.append(("anchors", "sizes and strides need one entry per FPN level"))
    return errors


# --------------------------------------------------------------------------------------------- presets


def _glip_l() -> GLIPConfig:
    swin = SwinConfig(
        embed_dim=192,
        depths=(2, 2, 18, 2),
        num_heads=(6, 12, 24, 48),
        window_size=12,
        drop_path_rate=0.4,
        out_channels=(192, 384, 768, 1536),
    )
    # glip_Swin_L.yaml leaves FREEZE_CONV_BODY_AT unset, so GLIP's default 2 applies.
    return GLIPConfig(name="glip-l", swin=swin, dyhead=DyHeadConfig(num_convs=8), freeze_conv_body_at=2)


def _glip_micro() -> GLIPConfig:
    """GLIP-T code paths at a tiny size, for tests and the offline demo.

    The architecture is the golden fixture's except for the fusion width: GLIP hard-codes a 2048-wide, 8-head
    MHA-B at every model size, which dominates a tiny model's CPU time (B·heads·N_visual·256 attention maps), so
    glip-micro fuses at 256 wide with 4 heads. Input sizes match the 160×128 images of the built-in demo task.
    """
    bert = dict(BERT_BASE_UNCASED, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256)
    bert.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return GLIPConfig(
        name="glip-micro",
        swin=SwinConfig(embed_dim=32, num_heads=(1, 2, 4, 8), depths=(2, 2, 2, 2), drop_path_rate=0.0,
                        out_channels=(32, 64, 128, 256)),
        fpn=FPNConfig(out_channels=64, drop_block_prob=0.0),
        language=LanguageConfig(bert=bert, lang_dim=64),
        dyhead=DyHeadConfig(channels=64, num_convs=2, fuse_embed_dim=256, fuse_num_heads=4),
        input=InputConfig(min_size_test=160, max_size_test=256, min_size_train=(128, 144, 160), max_size_train=256),
    )


def _glip_nano() -> GLIPConfig:
    """The smallest GLIP that pre-trains usefully on a 2-core CPU: the model this project pre-trains and ships.

    Sized by the measured time of a pre-training step (``pretrain``, batch 8 of 160x128 images, fp32, 2 CPU cores:
    about 0.8 s with the trimmed text and gather-based deformable convolutions, 2.5 s before them, so 2 hours allow
    about 8,000 steps) and by the shipped file (7.9 M parameters, 15.7 MB in fp16):

    * Swin at a third of Swin-T's width (embed 32, head dim 32 as Swin-T) with Swin-T's depths (2, 2, 6, 2): stage
      3 is where Swin-T spends its depth, and at 1/16 resolution it is cheap on 160-px images;
    * FPN and DyHead 96 wide with 2 tower blocks: every tower block added ~40% to the step (deformable convolutions
      on five levels, measured with torchvision's kernels), and a third block bought less than more steps do;
    * BERT of 2 layers, hidden 96 (3 heads of 32), trained from scratch on the packaged bert-base-uncased
      vocabulary: its 30,522 x 96 word embeddings are 2.9 M of the parameters, so a wider one breaks the size cap;
    * fusion 256 wide with 4 heads (as glip-micro: GLIP's hard-coded 2048 x 8 dominates a small model's time);
    * no dropout, drop path or DropBlock: a model this small trained this briefly underfits, it does not overfit;
    * no gradient checkpointing: memory is not the limit on the CPU, recomputation only costs time.

    Images of 160x128 (the demo tasks' size) are read as they are: short side 128 at test time and in
    pre-training, as GLIP tests at its largest training size (training sizes 96..128, as GLIP's 480..800).
    """
    bert = dict(BERT_BASE_UNCASED, hidden_size=96, num_hidden_layers=2, num_attention_heads=3, intermediate_size=384)
    bert.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return GLIPConfig(
        name="glip-nano",
        swin=SwinConfig(embed_dim=32, num_heads=(1, 2, 4, 8), depths=(2, 2, 6, 2), drop_path_rate=0.0,
                        out_channels=(32, 64, 128, 256)),
        fpn=FPNConfig(out_channels=96, drop_block_prob=0.0),
        language=LanguageConfig(bert=bert, lang_dim=96),
        dyhead=DyHeadConfig(channels=96, num_convs=2, fuse_embed_dim=256, fuse_num_heads=4, use_checkpoint=False),
        input=InputConfig(min_size_test=128, max_size_test=256, min_size_train=(96, 112, 128), max_size_train=256),
    )


def _presets() -> dict[str, GLIPConfig]:
    """Built on call (never at import) so that nothing global is shared or mutated."""
    no_fusion = DyHeadConfig(early_fuse=False, use_fused_dot_product=False)
    return {
        "glip-t-a": GLIPConfig(name="glip-t-a", dyhead=no_fusion),
        # T(B), T(C) and the released GLIP-T share one architecture; their pretraining data differ.
        "glip-t-b": GLIPConfig(name="glip-t-b"),
        "glip-t-c": GLIPConfig(name="glip-t-c"),
        "glip-t": GLIPConfig(name="glip-t"),
        "glip-l": _glip_l(),
        "glip-micro": _glip_micro(),
        "glip-nano": _glip_nano(),
    }


def list_presets() -> list[str]:
    """Names accepted by :func:`get_preset`."""
    return list(_presets())


def get_preset(name: str) -> GLIPConfig:
    """Return the named preset (``glip-t-a``, ``glip-t-b``, ``glip-t-c``, ``glip-t``, ``glip-l``, ``glip-micro``,
    ``glip-nano``).

    Raises:
        UserError: For an unknown name, suggesting the closest known one.
    """
    presets = _presets()
    key = name.strip().lower().replace("_", "-")
    if key in presets:
        return presets[key]
    close = difflib.get_close_matches(key, presets, n=1, cutoff=0.4)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise UserError(f"unknown GLIP preset '{name}'; {hint}known presets: {', '.join(presets)}", field="model")
