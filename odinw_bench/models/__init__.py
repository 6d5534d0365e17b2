"""Detector backends behind one contract (:mod:`odinw_bench.models.base`); GLIP first, in :mod:`odinw_bench.models.glip`.

May import: ``data`` (prompts, tokenizer), ``tasks`` and the base modules; never the training, run, result or
report layers.
"""
