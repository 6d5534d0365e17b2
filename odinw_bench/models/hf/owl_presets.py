"""Published OWLv2 checkpoints as plain data: hub id, class, input size, evaluation rule, pre-training data.

Every value carries its source (``preset["source"][field]``). Both presets are the authors' weight-space ensembles of
a self-trained and an LVIS-fine-tuned model (the checkpoints scenic's configs call canonical), converted to
transformers' ``Owlv2ForObjectDetection``.

``pretraining_includes_odinw`` is False: no ODinW annotations were used. Their self-training images come from WebLI
(Web image-text pairs); the sources read (the paper's abstract, scenic's README and configs) say nothing about removing
ODinW's images from WebLI, so an overlap of images (not of labels) cannot be ruled out.

Example:
    >>> get_preset("owlv2-b")["hub_id"]
    'google/owlv2-base-patch16-ensemble'
    >>> sorted(presets())
    ['owlv2-b', 'owlv2-l']
"""

from __future__ import annotations

from typing import Any

from odinw_bench.models.hf.owl_queries import AUTHORS_TEMPLATES

_SCENIC = "google-research/scenic scenic/projects/owl_vit/"
_EVALUATOR = (f"{_SCENIC}evaluator.py get_predictions: top_k=300 over patches x classes (exclusive_classes=False), "
              "no score threshold, boxes un-padded and clipped (unpad_box); class logits averaged over the "
              "label_ops.CLIP_BEST_PROMPT_TEMPLATES query embeddings")
_TEMPLATES = f"{_SCENIC}preprocessing/label_ops.py CLIP_BEST_PROMPT_TEMPLATES, used by {_SCENIC}evaluator.py"
_PIPELINE = ("transformers models/owlv2/image_processing_owlv2.py post_process_object_detection: threshold=0.1 "
             "default (also the docs' example)")
_PAPER = ("Minderer, Gritsenko, Houlsby, Scaling Open-Vocabulary Object Detection (arXiv:2306.09683): OWL-ST "
          "self-training on WebLI image-text pairs with pseudo-boxes from an existing OWL-ViT detector, queried with "
          f"caption n-grams; {_SCENIC}README.md and configs: ST/FT ens = self-trained ('st-ngrams') and LVIS-base "
          "fine-tuned ('ft-lvisbase') weights averaged; CLIP image-text pre-training initialises the backbone")


def _owlv2(hub_id: str, image_size: int, checkpoint: str, config_file: str, hub_source: str) -> dict[str, Any]:
    """One OWLv2 ensemble checkpoint."""
    input_size = (f"huggingface.co/{hub_id} preprocessor_config.json size {image_size}x{image_size}; "
                  f"{_SCENIC}configs/{config_file} dataset_configs.input_size = {image_size}")
    return {
        "hub_id": hub_id, "model_class": "Owlv2ForObjectDetection", "model_type": "owlv2",
        "image_size": image_size, "scenic_checkpoint": checkpoint,
        "score_rule": "topk", "topk": 300, "score_threshold": 0.0, "prompt_templates": list(AUTHORS_TEMPLATES),
        "demo_score_threshold": 0.1,
        "pretraining_data": ["CLIP image-text pairs (backbone)", "WebLI with OWL-ST pseudo-boxes (self-training)",
                             "LVIS base categories (fine-tuning)"],
        "pretraining_includes_odinw": False,
        "source": {
            "hub_id": hub_source, "model_class": hub_source, "model_type": f"huggingface.co/{hub_id} config.json",
            "image_size": input_size, "scenic_checkpoint": f"{_SCENIC}configs/{config_file} canonical_checkpoint",
            "score_rule": _EVALUATOR, "topk": _EVALUATOR, "score_threshold": _EVALUATOR,
            "prompt_templates": _TEMPLATES, "demo_score_threshold": _PIPELINE,
            "pretraining_data": _PAPER,
            "pretraining_includes_odinw": f"{_PAPER}; no ODinW annotations; WebLI de-duplication against ODinW "
                                          "not documented there",
        },
    }


def presets() -> dict[str, dict[str, Any]]:
    """Every OWLv2 preset by name, built on each call (no module-level registry; callers may change their copy).

    Each preset has ``hub_id``, ``model_class``, ``model_type``, ``image_size`` (the processor's square input),
    ``scenic_checkpoint`` (the authors' checkpoint it converts), ``score_rule``/``topk``/``score_threshold`` and
    ``prompt_templates`` (the authors' evaluation: 7-template ensemble, top 300 over patches x categories, no
    threshold), ``demo_score_threshold`` (transformers' post-processing default), ``pretraining_data``,
    ``pretraining_includes_odinw``, and ``source``: the citation of every other field.
    """
    convert = ("huggingface/transformers src/transformers/models/owlv2/convert_owlv2_to_hf.py: "
               "owlv2-base-patch16-ensemble <- owl2-b16-960-st-ngrams-curated-ft-lvisbase-ens-cold-weight-05_209b65b")
    card = ("huggingface.co/google/owlv2-large-patch14-ensemble README.md (Owlv2ForObjectDetection, "
            "Owlv2Processor example); 'ensemble' = scenic's '-ens-' weight-ensemble checkpoint of "
            f"{_SCENIC}configs/owl_v2_clip_l14.py")
    return {
        "owlv2-b": _owlv2("google/owlv2-base-patch16-ensemble", 960,
                          "owl2-b16-960-st-ngrams-curated-ft-lvisbase-ens-cold-weight-05", "owl_v2_clip_b16.py",
                          convert),
        "owlv2-l": _owlv2("google/owlv2-large-patch14-ensemble", 1008,
                          "owl2-l14-1008-st-ngrams-ft-lvisbase-ens-cold-weight-04", "owl_v2_clip_l14.py", card),
    }


def get_preset(name: str) -> dict[str, Any]:
    """The preset called ``name``.

    Raises:
        UserError: For an unknown name, with the closest names.
    """
    from odinw_bench.models.hf.presets import pick_preset

    return pick_preset(name, presets(), "OWLv2")
