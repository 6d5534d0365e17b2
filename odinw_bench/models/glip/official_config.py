"""Read official GLIP YAML files (``configs/pretrain/*.yaml`` or a full yacs dump) into a :class:`GLIPConfig`.

Keys a file leaves out take GLIP's ``maskrcnn_benchmark/config/defaults.py`` values, exactly as yacs merges them.
Values this port does not implement are refused with a :class:`~odinw_bench.errors.UserError` naming the file and
the key, rather than silently approximated. PyYAML is imported only when a file is read.

Example::

    from odinw_bench.models.glip.official_config import from_official_yaml

    cfg = from_official_yaml("configs/pretrain/glip_Swin_T_O365_GoldG.yaml")
    cfg.swin.depths  # (2, 2, 6, 2)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from odinw_bench.errors import UserError
from odinw_bench.models.glip.config import (
    BERT_BASE_UNCASED,
    AnchorConfig,
    DyHeadConfig,
    FPNConfig,
    GLIPConfig,
    InputConfig,
    LanguageConfig,
    LossConfig,
    PostProcessConfig,
    SwinConfig,
)


def from_official_yaml(path: str | Path, *, bert_config: dict[str, Any] | None = None) -> GLIPConfig:
    """Read an official GLIP YAML (a full yacs dump or a pretrain file of overrides) into a :class:`GLIPConfig`.

    Args:
        path: The YAML file.
        bert_config: ``transformers.BertConfig`` fields to use instead of bert-base-uncased's (GLIP fetches them
            from the hub by ``MODEL.LANGUAGE_BACKBONE.MODEL_TYPE``; reduced test models must pass theirs).

    Raises:
        UserError: Naming the file and key for unreadable files, bad values and architectures this port lacks.
    """
    path = Path(path)
    flat = _read_yaml_flat(path)

    def get(key: str) -> Any:
        return flat.get(key, _GLIP_DEFAULTS[key])

    _check_supported(path, get)
    typed = _TypedReader(path, get)
    bert = dict(BERT_BASE_UNCASED, **(bert_config or {}))
    if typed.int("MODEL.LANGUAGE_BACKBONE.LANG_DIM") != bert["hidden_size"]:
        raise UserError(
            f"LANG_DIM must equal the BERT hidden size {bert['hidden_size']} "
            f"({'given' if bert_config else 'of bert-base-uncased'}); pass the BERT config of a reduced model",
            path=path, field="MODEL.LANGUAGE_BACKBONE.LANG_DIM",
        )
    try:
        return _config_from_reader(typed, bert, name=str(path))
    except UserError as err:
        raise UserError(err.message, path=path, field=err.field) from None


# GLIP's `maskrcnn_benchmark/config/defaults.py` values of every key read or checked here, by section; a pretrain
# YAML only overrides some of them, exactly as yacs merges it.
_DEFAULTS_BY_SECTION: dict[str, dict[str, Any]] = {
    "MODEL": {"META_ARCHITECTURE": "GeneralizedRCNN", "RPN_ARCHITECTURE": "RPN", "RPN_ONLY": False},
    "MODEL.BACKBONE": {"CONV_BODY": "R-50-C4", "OUT_CHANNELS": 1024, "FREEZE_CONV_BODY_AT": 2, "USE_CHECKPOINT": False},
    "MODEL.SWINT": {
        "EMBED_DIM": 96, "OUT_CHANNELS": (96, 192, 384, 768), "DEPTHS": (2, 2, 6, 2), "NUM_HEADS": (3, 6, 12, 24),
        "WINDOW_SIZE": 7, "MLP_RATIO": 4, "DROP_PATH_RATE": 0.2, "APE": False, "VERSION": "v1", "OUT_NORM": True,
        "LAYER_SCALE": 0,
    },
    "MODEL.FPN": {
        "USE_GN": False, "USE_RELU": False, "DROP_BLOCK": True, "DROP_PROB": 0.3, "DROP_SIZE": 3, "USE_SPP": False,
        "USE_PAN": False, "USE_DYHEAD": False,
    },
    "MODEL.LANGUAGE_BACKBONE": {
        "MODEL_TYPE": "bert-base-uncased", "TOKENIZER_TYPE": "bert-base-uncased", "LANG_DIM": 768, "MAX_QUERY_LEN": 256,
        "N_LAYERS": 1, "MASK_SPECIAL": False, "PAD_MAX": True, "USE_CHECKPOINT": False,
    },
    "MODEL.RPN": {
        "ANCHOR_SIZES": (32, 64, 128, 256, 512), "ANCHOR_STRIDE": (16,), "ASPECT_RATIOS": (0.5, 1.0, 2.0),
        "SCALES_PER_OCTAVE": 3, "ANCHOR_SHIFT": (0.0, 0.0, 0.0, 0.0), "USE_RELATIVE_SIZE": False,
    },
    "MODEL.DYHEAD": {
        "CHANNELS": 128, "NUM_CONVS": 4, "NUM_CLASSES": 81, "PRIOR_PROB": 0.01, "LOG_SCALE": 0.0, "SCORE_AGG": "MEAN",
        "USE_GN": False, "USE_DYRELU": False, "USE_DFCONV": False, "USE_DYFUSE": False, "CONV_FUNC": "",
        "COSINE_SCALE": -1.0, "USE_CHECKPOINT": False,
    },
    "MODEL.DYHEAD.FUSE_CONFIG": {
        "EARLY_FUSE_ON": False, "TYPE": "", "USE_FUSED_FEATURES_DOT_PRODUCT": False,
        "USE_DOT_PRODUCT_TOKEN_LOSS": False,
        "DOT_PRODUCT_TOKEN_LOSS_WEIGHT": 1.0, "TOKEN_ALPHA": 0.25, "TOKEN_GAMMA": 2.0, "USE_TOKEN_LOSS": False,
        "USE_CONTRASTIVE_ALIGN_LOSS": False, "USE_SHALLOW_CONTRASTIVE_LOSS": False,
        "USE_BACKBONE_SHALLOW_CONTRASTIVE_LOSS": False, "MLM_LOSS": False, "SEPARATE_BIDIRECTIONAL": False,
        "STABLE_SOFTMAX_2D": False, "USE_LAYER_SCALE": True, "CLAMP_MIN_FOR_UNDERFLOW": False,
        "CLAMP_MAX_FOR_OVERFLOW": False, "CLAMP_BERTATTN_MIN_FOR_UNDERFLOW": False,
        "CLAMP_BERTATTN_MAX_FOR_OVERFLOW": False, "CLAMP_DOT_PRODUCT": False, "ADD_LINEAR_LAYER": False,
    },
    "MODEL.GROUP_NORM": {"NUM_GROUPS": 16, "DIM_PER_GP": -1},
    "MODEL.ATSS": {
        "INFERENCE_TH": 0.05, "PRE_NMS_TOP_N": 1000, "NMS_TH": 0.6, "DETECTIONS_PER_IMG": 100, "TOPK": 9,
        "REG_LOSS_WEIGHT": 2.0,
    },
    "MODEL.FOCAL": {"LOSS_ALPHA": 0.25, "LOSS_GAMMA": 2.0},
    "INPUT": {
        "MIN_SIZE_TRAIN": 800, "MAX_SIZE_TRAIN": 1333, "MIN_SIZE_TEST": 800, "MAX_SIZE_TEST": 1333,
        "PIXEL_MEAN": (102.9801, 115.9465, 122.7717), "PIXEL_STD": (1.0, 1.0, 1.0), "TO_BGR255": True, "FORMAT": "",
        "FIX_RES": False,
    },
    "AUGMENT": {"MULT_MIN_SIZE_TRAIN": (), "FLIP_PROB_TRAIN": 0.5, "VERTICAL_FLIP_PROB_TRAIN": 0.0},
    "DATALOADER": {"SIZE_DIVISIBILITY": 0},
}
_GLIP_DEFAULTS = {f"{sec}.{key}": v for sec, table in _DEFAULTS_BY_SECTION.items() for key, v in table.items()}

# The values this port implements (those of GLIP-T, GLIP-T(A) and GLIP-L); anything else would build a different
# network than the official code, so it is refused rather than silently approximated.
_SUPPORTED: dict[str, tuple] = {
    "MODEL.META_ARCHITECTURE": ("GeneralizedVLRCNN",),
    "MODEL.RPN_ARCHITECTURE": ("VLDYHEAD",),
    "MODEL.BACKBONE.CONV_BODY": ("SWINT-FPN-RETINANET",),
    "MODEL.SWINT.VERSION": ("v1",),
    "MODEL.SWINT.LAYER_SCALE": (0,),
    "MODEL.LANGUAGE_BACKBONE.MODEL_TYPE": ("bert-base-uncased",),
    "MODEL.LANGUAGE_BACKBONE.TOKENIZER_TYPE": ("bert-base-uncased",),
    "MODEL.RPN.ASPECT_RATIOS": ((1.0,),),
    "MODEL.RPN.SCALES_PER_OCTAVE": (1,),
    "MODEL.RPN.ANCHOR_SHIFT": ((0.0, 0.0, 0.0, 0.0),),
    "MODEL.DYHEAD.SCORE_AGG": ("MEAN",),
    "MODEL.DYHEAD.CONV_FUNC": ("",),
    "MODEL.DYHEAD.COSINE_SCALE": (-1.0,),
    "MODEL.GROUP_NORM.DIM_PER_GP": (-1,),
    "INPUT.FORMAT": ("",),
    "AUGMENT.VERTICAL_FLIP_PROB_TRAIN": (0.0,),
}
_FUSE = "MODEL.DYHEAD.FUSE_CONFIG."
_CLAMPS = (
    "MIN_FOR_UNDERFLOW", "MAX_FOR_OVERFLOW", "BERTATTN_MIN_FOR_UNDERFLOW", "BERTATTN_MAX_FOR_OVERFLOW", "DOT_PRODUCT",
)
_SUPPORTED.update({k: (True,) for k in (
    "MODEL.RPN_ONLY", "MODEL.SWINT.OUT_NORM", "MODEL.LANGUAGE_BACKBONE.PAD_MAX", "MODEL.DYHEAD.USE_GN",
    "MODEL.DYHEAD.USE_DYRELU", "MODEL.DYHEAD.USE_DFCONV", "MODEL.DYHEAD.USE_DYFUSE", "INPUT.TO_BGR255",
    _FUSE + "USE_DOT_PRODUCT_TOKEN_LOSS", _FUSE + "USE_LAYER_SCALE", *(_FUSE + "CLAMP_" + c for c in _CLAMPS),
)})
_SUPPORTED.update({k: (False,) for k in (
    "MODEL.SWINT.APE", "MODEL.FPN.USE_GN", "MODEL.FPN.USE_RELU", "MODEL.FPN.USE_SPP", "MODEL.FPN.USE_PAN",
    "MODEL.FPN.USE_DYHEAD", "MODEL.LANGUAGE_BACKBONE.MASK_SPECIAL", "MODEL.RPN.USE_RELATIVE_SIZE", "INPUT.FIX_RES",
    *(_FUSE + k for k in ("USE_TOKEN_LOSS", "USE_CONTRASTIVE_ALIGN_LOSS", "USE_SHALLOW_CONTRASTIVE_LOSS",
                          "USE_BACKBONE_SHALLOW_CONTRASTIVE_LOSS", "MLM_LOSS", "SEPARATE_BIDIRECTIONAL",
                          "STABLE_SOFTMAX_2D")),
)})


def _read_yaml_flat(path: Path) -> dict[str, Any]:
    """Load a yacs YAML as ``{"MODEL.SWINT.EMBED_DIM": 96, ...}``, decoding strings like yacs does."""
    import ast

    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise UserError(f"cannot read the GLIP config: {err.strerror or err}", path=path) from None
    except yaml.YAMLError as err:
        raise UserError(f"not valid YAML: {err}", path=path) from None
    if not isinstance(data, dict):
        raise UserError("a GLIP config must be a YAML mapping (MODEL:, INPUT:, ...)", path=path)

    flat: dict[str, Any] = {}

    def walk(node: dict, prefix: str) -> None:
        for key, value in node.items():
            dotted = f"{prefix}{key}"
            if isinstance(value, dict) and value:
                walk(value, dotted + ".")
                continue
            if isinstance(value, str):
                # yacs evaluates strings as Python literals, so "(64, 128)" is a tuple and "MHA-B" stays a string.
                try:
                    value = ast.literal_eval(value)
                except (ValueError, SyntaxError):
                    pass
            flat[dotted] = tuple(value) if isinstance(value, list) else value

    walk(data, "")
    return flat


def _check_supported(path: Path, get: Any) -> None:
    for key, allowed in _SUPPORTED.items():
        value = get(key)
        if isinstance(value, tuple) and all(_is_number(v) for v in value):
            value = tuple(float(v) for v in value)  # (1,) and (1.0,) are the same ratios
        if value not in allowed:
            want = " or ".join(repr(a) for a in allowed)
            message = f"unsupported value {value!r}: odinw_bench's GLIP port implements {want}"
            raise UserError(message, path=path, field=key)
    if get("MODEL.DYHEAD.FUSE_CONFIG.EARLY_FUSE_ON") and get("MODEL.DYHEAD.FUSE_CONFIG.TYPE") != "MHA-B":
        value = get("MODEL.DYHEAD.FUSE_CONFIG.TYPE")
        raise UserError(f"unsupported fusion {value!r}: only 'MHA-B' is implemented", path=path,
                        field="MODEL.DYHEAD.FUSE_CONFIG.TYPE")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class _TypedReader:
    """Typed access to merged YAML values; a value of the wrong type is a UserError naming the key."""

    def __init__(self, path: Path, get: Any):
        self.path, self.get = path, get

    def _typed(self, key: str, ok: Any, what: str) -> Any:
        value = self.get(key)
        if not ok(value):
            raise UserError(f"expected {what}, got {value!r}", path=self.path, field=key)
        return value

    def int(self, key: str) -> int:
        return self._typed(key, _is_int, "an integer")

    def float(self, key: str) -> float:
        return float(self._typed(key, _is_number, "a number"))

    def bool(self, key: str) -> bool:
        return self._typed(key, lambda v: isinstance(v, bool), "true or false")

    def ints(self, key: str) -> tuple[int, ...]:
        # yacs allows a scalar where a list is expected (INPUT.MIN_SIZE_TRAIN: 800 means (800,)).
        value = (self.get(key),) if _is_int(self.get(key)) else self.get(key)
        if not isinstance(value, tuple) or not all(_is_int(v) for v in value):
            raise UserError(f"expected a list of integers, got {value!r}", path=self.path, field=key)
        return value

    def floats(self, key: str) -> tuple[float, ...]:
        ok = lambda v: isinstance(v, tuple) and all(_is_number(x) for x in v)  # noqa: E731
        return tuple(float(v) for v in self._typed(key, ok, "a list of numbers"))


def _config_from_reader(r: _TypedReader, bert: dict[str, Any], name: str) -> GLIPConfig:
    swin = SwinConfig(
        embed_dim=r.int("MODEL.SWINT.EMBED_DIM"), depths=r.ints("MODEL.SWINT.DEPTHS"),
        num_heads=r.ints("MODEL.SWINT.NUM_HEADS"), window_size=r.int("MODEL.SWINT.WINDOW_SIZE"),
        mlp_ratio=r.float("MODEL.SWINT.MLP_RATIO"), drop_path_rate=r.float("MODEL.SWINT.DROP_PATH_RATE"),
        out_channels=r.ints("MODEL.SWINT.OUT_CHANNELS"), use_checkpoint=r.bool("MODEL.BACKBONE.USE_CHECKPOINT"),
    )
    # DROP_BLOCK=False builds no DropBlock at all, which is the same network as probability 0.
    drop_prob = r.float("MODEL.FPN.DROP_PROB") if r.bool("MODEL.FPN.DROP_BLOCK") else 0.0
    fpn = FPNConfig(r.int("MODEL.BACKBONE.OUT_CHANNELS"), drop_prob, r.int("MODEL.FPN.DROP_SIZE"))
    language = LanguageConfig(
        bert=bert, lang_dim=r.int("MODEL.LANGUAGE_BACKBONE.LANG_DIM"),
        max_query_len=r.int("MODEL.LANGUAGE_BACKBONE.MAX_QUERY_LEN"),
        n_layers=r.int("MODEL.LANGUAGE_BACKBONE.N_LAYERS"),
        tokenizer=r.get("MODEL.LANGUAGE_BACKBONE.TOKENIZER_TYPE"),
        use_checkpoint=r.bool("MODEL.LANGUAGE_BACKBONE.USE_CHECKPOINT"),
    )
    fuse = _FUSE
    dyhead = DyHeadConfig(
        channels=r.int("MODEL.DYHEAD.CHANNELS"), num_convs=r.int("MODEL.DYHEAD.NUM_CONVS"),
        num_classes=r.int("MODEL.DYHEAD.NUM_CLASSES"), early_fuse=r.bool(fuse + "EARLY_FUSE_ON"),
        use_fused_dot_product=r.bool(fuse + "USE_FUSED_FEATURES_DOT_PRODUCT"),
        use_checkpoint=r.bool("MODEL.DYHEAD.USE_CHECKPOINT"), prior_prob=r.float("MODEL.DYHEAD.PRIOR_PROB"),
        log_scale=r.float("MODEL.DYHEAD.LOG_SCALE"), group_norm_groups=r.int("MODEL.GROUP_NORM.NUM_GROUPS"),
        add_linear_layer=r.bool(fuse + "ADD_LINEAR_LAYER"),
    )
    anchors = AnchorConfig(r.ints("MODEL.RPN.ANCHOR_SIZES"), r.ints("MODEL.RPN.ANCHOR_STRIDE"))
    post = PostProcessConfig(
        r.float("MODEL.ATSS.INFERENCE_TH"), r.int("MODEL.ATSS.PRE_NMS_TOP_N"),
        r.float("MODEL.ATSS.NMS_TH"), r.int("MODEL.ATSS.DETECTIONS_PER_IMG"),
    )
    loss = LossConfig(
        topk=r.int("MODEL.ATSS.TOPK"), reg_loss_weight=r.float("MODEL.ATSS.REG_LOSS_WEIGHT"),
        focal_alpha=r.float("MODEL.FOCAL.LOSS_ALPHA"), focal_gamma=r.float("MODEL.FOCAL.LOSS_GAMMA"),
        token_alpha=r.float(fuse + "TOKEN_ALPHA"), token_gamma=r.float(fuse + "TOKEN_GAMMA"),
        dot_product_token_loss_weight=r.float(fuse + "DOT_PRODUCT_TOKEN_LOSS_WEIGHT"),
    )
    # GLIP's training transform takes AUGMENT.MULT_MIN_SIZE_TRAIN when it is non-empty, else INPUT.MIN_SIZE_TRAIN.
    multi = r.ints("AUGMENT.MULT_MIN_SIZE_TRAIN")
    inputs = InputConfig(
        min_size_test=r.int("INPUT.MIN_SIZE_TEST"), max_size_test=r.int("INPUT.MAX_SIZE_TEST"),
        min_size_train=multi or r.ints("INPUT.MIN_SIZE_TRAIN"), max_size_train=r.int("INPUT.MAX_SIZE_TRAIN"),
        pixel_mean=r.floats("INPUT.PIXEL_MEAN"), pixel_std=r.floats("INPUT.PIXEL_STD"),
        size_divisibility=r.int("DATALOADER.SIZE_DIVISIBILITY"), flip_prob_train=r.float("AUGMENT.FLIP_PROB_TRAIN"),
    )
    return GLIPConfig(
        name=name, swin=swin, fpn=fpn, language=language, dyhead=dyhead, anchors=anchors, postprocess=post,
        loss=loss, input=inputs, freeze_conv_body_at=r.int("MODEL.BACKBONE.FREEZE_CONV_BODY_AT"),
    )
