"""GLIP configuration: presets, official YAML reading, round trips and user errors."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap

import pytest

from odinw_bench.errors import UserError
from odinw_bench.models.glip.config import (
    BERT_BASE_UNCASED,
    GLIPConfig,
    SwinConfig,
    get_preset,
    list_presets,
)
from odinw_bench.models.glip.official_config import from_official_yaml

ARCH_SECTIONS = ("swin", "fpn", "language", "dyhead", "anchors")


def _write(tmp_path, text: str, name: str = "glip.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


# A pretrain-style file that states only overrides, the way GLIP's configs/pretrain/*.yaml do; the rest must come
# from GLIP's defaults. Tuples are written as yacs strings on purpose.
GLIP_L_OVERRIDES = """\
    MODEL:
      META_ARCHITECTURE: "GeneralizedVLRCNN"
      RPN_ONLY: True
      RPN_ARCHITECTURE: "VLDYHEAD"
      BACKBONE:
        CONV_BODY: "SWINT-FPN-RETINANET"
        OUT_CHANNELS: 256
      SWINT:
        EMBED_DIM: 192
        DEPTHS: (2, 2, 18, 2)
        NUM_HEADS: (6, 12, 24, 48)
        WINDOW_SIZE: 12
        OUT_CHANNELS: (192, 384, 768, 1536)
        DROP_PATH_RATE: 0.4
      RPN:
        USE_FPN: True
        ANCHOR_SIZES: (64, 128, 256, 512, 1024)
        ANCHOR_STRIDE: (8, 16, 32, 64, 128)
        ASPECT_RATIOS: (1.0,)
        SCALES_PER_OCTAVE: 1
      DYHEAD:
        CHANNELS: 256
        NUM_CONVS: 8
        USE_GN: True
        USE_DYRELU: True
        USE_DFCONV: True
        USE_DYFUSE: True
        USE_CHECKPOINT: True
        FUSE_CONFIG:
          EARLY_FUSE_ON: True
          TYPE: "MHA-B"
          USE_DOT_PRODUCT_TOKEN_LOSS: True
          USE_FUSED_FEATURES_DOT_PRODUCT: True
          CLAMP_MIN_FOR_UNDERFLOW: True
          CLAMP_MAX_FOR_OVERFLOW: True
          CLAMP_BERTATTN_MIN_FOR_UNDERFLOW: True
          CLAMP_BERTATTN_MAX_FOR_OVERFLOW: True
          CLAMP_DOT_PRODUCT: True
    INPUT:
      PIXEL_MEAN: [ 103.530, 116.280, 123.675 ]
      PIXEL_STD: [ 57.375, 57.120, 58.395 ]
    AUGMENT:
      MULT_MIN_SIZE_TRAIN: (480,560,640,720,800)
    DATALOADER:
      SIZE_DIVISIBILITY: 32
    """


@pytest.mark.parametrize("name", ["glip-t-a", "glip-t-b", "glip-t-c", "glip-t", "glip-l", "glip-micro"])
def test_presets_build_and_are_consistent(name):
    cfg = get_preset(name)
    assert cfg.name == name
    swin = cfg.swin
    assert swin.out_channels == tuple(swin.embed_dim * 2**i for i in range(4))
    assert cfg.dyhead.channels == cfg.fpn.out_channels
    assert cfg.language.bert["hidden_size"] == cfg.language.lang_dim
    assert cfg.language.max_query_len == 256 and cfg.language.n_layers == 1
    assert cfg.postprocess.pre_nms_thresh == 0.05 and cfg.postprocess.nms_thresh == 0.6
    assert cfg.anchors.strides == (8, 16, 32, 64, 128) and cfg.anchors.sizes == (64, 128, 256, 512, 1024)
    assert set(list_presets()) == {"glip-t-a", "glip-t-b", "glip-t-c", "glip-t", "glip-l", "glip-micro", "glip-nano"}


def test_glip_t_matches_the_reference_notes():
    cfg = get_preset("glip-t")
    assert (cfg.swin.embed_dim, cfg.swin.depths, cfg.swin.num_heads, cfg.swin.window_size) == (
        96, (2, 2, 6, 2), (3, 6, 12, 24), 7)
    assert cfg.swin.drop_path_rate == 0.2 and cfg.fpn.drop_block_prob == 0.3
    assert cfg.dyhead.num_convs == 6 and cfg.dyhead.early_fuse and cfg.dyhead.use_fused_dot_product
    assert cfg.freeze_conv_body_at == -1
    assert cfg.language.bert == BERT_BASE_UNCASED
    assert cfg.input.pixel_mean == (103.53, 116.28, 123.675) and cfg.input.size_divisibility == 32
    assert cfg.input.min_size_train == (480, 560, 640, 720, 800) and cfg.input.min_size_test == 800


def test_glip_t_a_has_no_fusion():
    cfg = get_preset("glip-t-a")
    assert cfg.dyhead.early_fuse is False
    assert cfg.dyhead.use_fused_dot_product is False
    # Otherwise GLIP-T's architecture.
    assert cfg.swin == get_preset("glip-t").swin


def test_glip_l_freezes_stage_one_by_default():
    cfg = get_preset("glip-l")
    assert cfg.freeze_conv_body_at == 2
    assert cfg.swin.window_size == 12 and cfg.swin.depths == (2, 2, 18, 2) and cfg.dyhead.num_convs == 8


def test_unknown_preset_suggests_closest():
    with pytest.raises(UserError, match="did you mean 'glip-t'"):
        get_preset("glip-tt")
    with pytest.raises(UserError, match="did you mean 'glip-micro'"):
        get_preset("glip-mikro")
    assert get_preset("GLIP_T") == get_preset("glip-t")


def test_fixture_config_reads_to_fixture_sizes(glip_reference):
    cfg = from_official_yaml(glip_reference.config_path, bert_config=glip_reference.meta["bert_config"])
    overrides = glip_reference.meta["config_overrides"]
    assert cfg.swin.embed_dim == 32 == overrides["MODEL.SWINT.EMBED_DIM"]
    assert cfg.swin.depths == (2, 2, 2, 2) and cfg.swin.num_heads == (1, 2, 4, 8)
    assert cfg.swin.window_size == 7
    assert cfg.fpn.out_channels == 64 and cfg.dyhead.channels == 64
    assert cfg.dyhead.num_convs == 2
    assert cfg.language.lang_dim == 64 and cfg.language.bert["num_hidden_layers"] == 2
    assert (cfg.input.min_size_test, cfg.input.max_size_test) == (320, 512)
    assert cfg.fpn.drop_block_prob == 0.0 and cfg.swin.drop_path_rate == 0.0
    # NUM_CLASSES is read from the file, not assumed.
    text = glip_reference.config_path.read_text()
    assert cfg.dyhead.num_classes == 81 and "NUM_CLASSES: 81" in text


def test_micro_preset_is_the_fixture_architecture_with_a_narrower_fusion(glip_reference):
    cfg = from_official_yaml(glip_reference.config_path, bert_config=glip_reference.meta["bert_config"])
    micro = get_preset("glip-micro")
    for section in ARCH_SECTIONS:
        if section == "dyhead":  # the only difference: GLIP's fixed 2048/8 fusion is 256/4 in glip-micro
            assert dataclasses.replace(micro.dyhead, fuse_embed_dim=2048, fuse_num_heads=8) == cfg.dyhead
            assert (micro.dyhead.fuse_embed_dim, micro.dyhead.fuse_num_heads) == (256, 4)
        else:
            assert getattr(cfg, section) == getattr(micro, section), section


def test_fixture_config_without_bert_config_is_explained(glip_reference):
    with pytest.raises(UserError) as info:
        from_official_yaml(glip_reference.config_path)
    assert info.value.field == "MODEL.LANGUAGE_BACKBONE.LANG_DIM"
    assert str(glip_reference.config_path) in str(info.value)


def test_overrides_file_merges_on_glip_defaults(tmp_path):
    cfg = from_official_yaml(_write(tmp_path, GLIP_L_OVERRIDES))
    glip_l = get_preset("glip-l")
    for section in (*ARCH_SECTIONS, "postprocess", "loss"):
        assert getattr(cfg, section) == getattr(glip_l, section), section
    # Unset in the file, so GLIP's defaults apply: FREEZE_CONV_BODY_AT 2, FPN DropBlock 0.3, test sizes 800/1333.
    assert cfg.freeze_conv_body_at == 2
    assert cfg.fpn.drop_block_prob == 0.3
    assert (cfg.input.min_size_test, cfg.input.max_size_test) == (800, 1333)
    assert cfg.input.min_size_train == (480, 560, 640, 720, 800)
    assert cfg.language.bert == BERT_BASE_UNCASED


def test_early_fuse_off_file_gives_glip_t_a(tmp_path):
    text = GLIP_L_OVERRIDES.replace("EARLY_FUSE_ON: True", "EARLY_FUSE_ON: False").replace(
        "USE_FUSED_FEATURES_DOT_PRODUCT: True", "USE_FUSED_FEATURES_DOT_PRODUCT: False")
    cfg = from_official_yaml(_write(tmp_path, text))
    assert cfg.dyhead.early_fuse is False and cfg.dyhead.use_fused_dot_product is False


def test_single_min_size_train_without_multi_scale(tmp_path):
    # With AUGMENT.MULT_MIN_SIZE_TRAIN empty, GLIP trains at INPUT.MIN_SIZE_TRAIN (a scalar is one size).
    text = GLIP_L_OVERRIDES.replace("MULT_MIN_SIZE_TRAIN: (480,560,640,720,800)", "FLIP_PROB_TRAIN: 0.0")
    text = text.replace("PIXEL_STD:", "MIN_SIZE_TRAIN: 600\n      PIXEL_STD:")
    cfg = from_official_yaml(_write(tmp_path, text))
    assert cfg.input.min_size_train == (600,)
    assert cfg.input.flip_prob_train == 0.0


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ('META_ARCHITECTURE: "GeneralizedVLRCNN"', 'META_ARCHITECTURE: "GeneralizedRCNN"', "MODEL.META_ARCHITECTURE"),
        ('RPN_ARCHITECTURE: "VLDYHEAD"', 'RPN_ARCHITECTURE: "ATSS"', "MODEL.RPN_ARCHITECTURE"),
        ('CONV_BODY: "SWINT-FPN-RETINANET"', 'CONV_BODY: "R-50-FPN-RETINANET"', "MODEL.BACKBONE.CONV_BODY"),
        ('TYPE: "MHA-B"', 'TYPE: "SCAN"', "MODEL.DYHEAD.FUSE_CONFIG.TYPE"),
        ("ASPECT_RATIOS: (1.0,)", "ASPECT_RATIOS: (0.5, 1.0, 2.0)", "MODEL.RPN.ASPECT_RATIOS"),
        ("USE_DFCONV: True", "USE_DFCONV: False", "MODEL.DYHEAD.USE_DFCONV"),
    ],
)
def test_unsupported_architecture_names_file_and_key(tmp_path, old, new, key):
    assert old in GLIP_L_OVERRIDES
    path = _write(tmp_path, GLIP_L_OVERRIDES.replace(old, new))
    with pytest.raises(UserError) as info:
        from_official_yaml(path)
    assert info.value.field == key
    assert info.value.path == str(path)
    assert key in str(info.value) and str(path) in str(info.value)


def test_missing_architecture_keys_fall_back_to_unsupported_defaults(tmp_path):
    # GLIP's own default META_ARCHITECTURE is the non-grounding GeneralizedRCNN.
    with pytest.raises(UserError, match="GeneralizedRCNN") as info:
        from_official_yaml(_write(tmp_path, "INPUT:\n  MIN_SIZE_TEST: 800\n"))
    assert info.value.field == "MODEL.META_ARCHITECTURE"


def test_bad_values_are_user_errors(tmp_path):
    with pytest.raises(UserError) as info:
        from_official_yaml(_write(tmp_path, GLIP_L_OVERRIDES.replace("EMBED_DIM: 192", "EMBED_DIM: big")))
    assert info.value.field == "MODEL.SWINT.EMBED_DIM"
    with pytest.raises(UserError, match="embed_dim"):
        from_official_yaml(_write(tmp_path, GLIP_L_OVERRIDES.replace("EMBED_DIM: 192", "EMBED_DIM: 96")))
    with pytest.raises(UserError, match="not valid YAML"):
        from_official_yaml(_write(tmp_path, "MODEL: [unclosed\n"))
    with pytest.raises(UserError, match="cannot read"):
        from_official_yaml(tmp_path / "absent.yaml")


@pytest.mark.parametrize("name", ["glip-t-a", "glip-l", "glip-micro"])
def test_round_trip_through_json(name):
    cfg = get_preset(name)
    data = json.loads(json.dumps(cfg.to_dict()))
    assert data["swin"]["depths"] == list(cfg.swin.depths)
    again = GLIPConfig.from_dict(data)
    assert again == cfg
    assert isinstance(again.swin.depths, tuple)


def test_from_dict_rejects_unknown_keys_and_fills_defaults():
    data = get_preset("glip-t").to_dict()
    data["swin"]["embed_dims"] = 96
    with pytest.raises(UserError, match="did you mean 'embed_dim'") as info:
        GLIPConfig.from_dict(data, source="run.json")
    assert info.value.field == "swin.embed_dims" and info.value.path == "run.json"
    partial = GLIPConfig.from_dict({"name": "x", "dyhead": {"num_convs": 3}})
    assert partial.dyhead.num_convs == 3 and partial.dyhead.channels == 256 and partial.swin == SwinConfig()


def test_inconsistent_configs_are_rejected():
    cfg = get_preset("glip-t")
    with pytest.raises(UserError) as info:
        cfg.replace(dyhead=dataclasses.replace(cfg.dyhead, channels=128))
    assert info.value.field == "dyhead.channels"
    with pytest.raises(UserError) as info:
        GLIPConfig.from_dict({"language": {"lang_dim": 64}})
    assert info.value.field == "language.lang_dim"


def test_bert_config_builds_transformers_config():
    bert = get_preset("glip-micro").language.bert_config()
    assert (bert.hidden_size, bert.num_hidden_layers, bert.num_attention_heads, bert.intermediate_size) == (
        64, 2, 2, 256)
    assert bert.vocab_size == 30522


def test_config_modules_import_no_third_party_package():
    # The CLI reads configs at start-up; PyYAML is needed only once a YAML file is actually read.
    code = (
        "import sys; from odinw_bench.models.glip.config import get_preset; get_preset('glip-l');"
        "print(sorted(m for m in ('yaml', 'torch', 'transformers', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
