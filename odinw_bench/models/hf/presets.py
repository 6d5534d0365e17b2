"""Published Grounding DINO family checkpoints as plain data: hub id, class, test resolution, evaluation rule.

Every value carries its source (``preset["source"][field]``). ``pretraining_includes_odinw`` matters for reading
results: Grounding DINO-B was pre-trained with ODinW-35 data, so its "zero-shot" ODinW numbers are not zero-shot.

Example:
    >>> get_preset("gdino-t")["hub_id"]
    'IDEA-Research/grounding-dino-tiny'
    >>> sorted(presets())
    ['gdino-b', 'gdino-t', 'llmdet-t', 'mm-gdino-t']
"""

from __future__ import annotations

import difflib
from typing import Any

from odinw_bench.errors import UserError

# Citations shared by several presets; each names the file (or page) and what in it gives the value.
_IDEA_README = ("IDEA-Research/GroundingDINO README.md, Checkpoints table: GroundingDINO-T data O365,GoldG,Cap4M; "
                "GroundingDINO-B data COCO,O365,GoldG,Cap4M,OpenImage,ODinW-35,RefCOCO")
_IDEA_EVAL = ("IDEA-Research/GroundingDINO demo/test_ap_on_coco.py: T.RandomResize([800], max_size=1333); "
              "PostProcessCocoGrounding(num_select=300): token probabilities averaged over each category's span "
              "(normalised positive map), top 300 over queries x categories, no score threshold")
_IDEA_DEMO = "IDEA-Research/GroundingDINO README.md, demo: box_threshold 0.35, text_threshold 0.25"
_HF_GDINO_CONVERT = ("huggingface/transformers src/transformers/models/grounding_dino/convert_grounding_dino_to_hf.py: "
                     "grounding-dino-tiny <- groundingdino_swint_ogc.pth, grounding-dino-base <- "
                     "groundingdino_swinb_cogcoor.pth")
_MMDET_GDINO = ("open-mmlab/mmdetection configs/grounding_dino/grounding_dino_swin-t_pretrain_obj365_goldg_cap4m.py: "
                "test FixScaleResize scale=(800, 1333) keep_ratio=True; test_cfg max_per_img=300 (mean of the span's "
                "token probabilities, mmdet/models/dense_heads/grounding_dino_head.py _predict_by_feat_single)")
_HF_MM_CONVERT = ("huggingface/transformers src/transformers/models/mm_grounding_dino/"
                  "convert_mm_grounding_dino_to_hf.py: "
                  "mm_grounding_dino_tiny_o365v1_goldg_v3det <- grounding_dino_swin-t_pretrain_obj365_goldg_v3det_"
                  "20231218_095741-e316e297.pth; llmdet_tiny <- huggingface.co/fushh7/LLMDet tiny.pth")
_HF_MM_DOC = ("transformers docs model_doc/mm-grounding-dino (example model_id "
              "openmmlab-community/mm_grounding_dino_tiny_o365v1_goldg_v3det; 'This model also supports LLMDet "
              "inference'); configuration_mm_grounding_dino.py @auto_docstring checkpoint")
_MMDET_MM_DATA = ("open-mmlab/mmdetection configs/mm_grounding_dino/"
                  "grounding_dino_swin-t_pretrain_obj365_goldg_v3det.py: train datasets objects365v1, "
                  "flickr30k_entities and gqa (GoldG), V3Det")
_MMDET_MM_EVAL = ("open-mmlab/mmdetection configs/mm_grounding_dino/grounding_dino_swin-t_pretrain_obj365.py (base "
                  "of the MM-GDINO-T configs): test FixScaleResize scale=(800, 1333) keep_ratio=True; test_cfg "
                  "max_per_img=300 (mean of the span's token probabilities, GroundingDINOHead._predict_by_feat_single)")
_LLMDET_README = ("iSEE-Laboratory/LLMDet README.md: fine-tuned from mm_grounding_dino swin-t "
                  "(grounding_dino_swin-t_pretrain_obj365_goldg_grit9m_v3det) on GroundingCap-1M "
                  "(coco, flickr30k_entities, gqa, llava_cap LLaVA-ReCap-558K, v3det)")
_LLMDET_CONFIG = ("iSEE-Laboratory/LLMDet configs/grounding_dino_swin_t.py: test FixScaleResize scale=(800, 1333) "
                  "keep_ratio=True; test_cfg max_per_img=300 (chunked_size=40 for LVIS)")
_LLMDET_CARD = ("huggingface.co/iSEE-Laboratory/llmdet_large README.md and docs.voxel51.com llmdet-tiny-torch "
                "(source huggingface.co/iSEE-Laboratory/llmdet_tiny): inference identical to MM Grounding DINO")


def _evaluation(source: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The evaluation fields every family member shares (800/1333 test resize, top-300 span-mean scoring), and
    their sources."""
    values = {"shortest_edge": 800, "longest_edge": 1333, "score_rule": "mean", "topk": 300, "score_threshold": 0.0}
    return values, {key: source for key in values}


def _grounding_dino(hub_id: str, data: list[str], includes_odinw: bool) -> dict[str, Any]:
    """An original Grounding DINO checkpoint (IDEA-Research), converted by transformers."""
    values, sources = _evaluation(f"{_IDEA_EVAL}; {_MMDET_GDINO}")
    return {
        "hub_id": hub_id, "model_class": "GroundingDinoForObjectDetection", "model_type": "grounding-dino",
        **values, "demo_box_threshold": 0.35, "demo_text_threshold": 0.25,
        "pretraining_data": data, "pretraining_includes_odinw": includes_odinw,
        "source": {"hub_id": _HF_GDINO_CONVERT, "model_class": _HF_GDINO_CONVERT, "model_type": _HF_GDINO_CONVERT,
                   **sources, "demo_box_threshold": _IDEA_DEMO, "demo_text_threshold": _IDEA_DEMO,
                   "pretraining_data": _IDEA_README, "pretraining_includes_odinw": _IDEA_README},
    }


def _mm_grounding_dino_tiny() -> dict[str, Any]:
    values, sources = _evaluation(_MMDET_MM_EVAL)
    return {
        "hub_id": "openmmlab-community/mm_grounding_dino_tiny_o365v1_goldg_v3det",
        "model_class": "MMGroundingDinoForObjectDetection", "model_type": "mm-grounding-dino", **values,
        "pretraining_data": ["O365v1", "GoldG", "V3Det"], "pretraining_includes_odinw": False,
        "source": {"hub_id": f"{_HF_MM_DOC}; {_HF_MM_CONVERT}", "model_class": _HF_MM_DOC, "model_type": _HF_MM_DOC,
                   **sources, "pretraining_data": f"{_MMDET_MM_DATA}; {_HF_MM_CONVERT}",
                   "pretraining_includes_odinw": _MMDET_MM_DATA},
    }


def _llmdet_tiny() -> dict[str, Any]:
    values, sources = _evaluation(_LLMDET_CONFIG)
    return {
        "hub_id": "iSEE-Laboratory/llmdet_tiny", "model_class": "MMGroundingDinoForObjectDetection",
        "model_type": "mm-grounding-dino", **values,
        "pretraining_data": ["O365v1", "GoldG", "GRIT", "V3Det",
                             "GroundingCap-1M (COCO, Flickr30k, GQA, LLaVA-ReCap-558K, V3Det)"],
        "pretraining_includes_odinw": False,
        "source": {"hub_id": f"{_LLMDET_CARD}; {_HF_MM_CONVERT}", "model_class": _LLMDET_CARD,
                   "model_type": _LLMDET_CARD, **sources, "pretraining_data": _LLMDET_README,
                   "pretraining_includes_odinw": _LLMDET_README},
    }


def presets() -> dict[str, dict[str, Any]]:
    """Every preset by name, built on each call (no module-level registry; callers may change their copy).

    Each preset has ``hub_id``, ``model_class`` (the transformers class), ``model_type`` (its config's),
    ``shortest_edge``/``longest_edge`` (test resize), ``score_rule``/``topk``/``score_threshold`` (the authors'
    evaluation: ``mean`` scoring, top 300, no threshold), ``pretraining_data``, ``pretraining_includes_odinw``, for the
    Grounding DINO originals the demo's ``demo_box_threshold``/``demo_text_threshold``, and ``source``: the citation
    of every other field.
    """
    return {
        "gdino-t": _grounding_dino("IDEA-Research/grounding-dino-tiny", ["O365", "GoldG", "Cap4M"], False),
        "gdino-b": _grounding_dino("IDEA-Research/grounding-dino-base",
                                   ["COCO", "O365", "GoldG", "Cap4M", "OpenImage", "ODinW-35", "RefCOCO"], True),
        "mm-gdino-t": _mm_grounding_dino_tiny(),
        "llmdet-t": _llmdet_tiny(),
    }


def get_preset(name: str) -> dict[str, Any]:
    """The preset called ``name``.

    Raises:
        UserError: For an unknown name, with the closest names.
    """
    return pick_preset(name, presets(), "Grounding DINO")


def pick_preset(name: str, known: dict[str, dict[str, Any]], family: str) -> dict[str, Any]:
    """``known[name]``, or one clear error naming the closest of a family's presets."""
    if name in known:
        return known[name]
    close = difflib.get_close_matches(name, known, n=2, cutoff=0.4)
    hint = f" (did you mean: {', '.join(close)}?)" if close else ""
    raise UserError(f"unknown {family} preset '{name}'{hint}; known: {', '.join(sorted(known))}", field="model")
