"""Detector backends evaluated by odinw_bench (GLIP first, under :mod:`odinw_bench.models.glip`)."""
