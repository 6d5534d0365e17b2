"""Detectors from Hugging Face transformers behind the backend contract (:mod:`odinw_bench.models.base`).

:mod:`~odinw_bench.models.hf.grounding_dino` wraps ``GroundingDinoForObjectDetection`` and
``MMGroundingDinoForObjectDetection`` (Grounding DINO, MM Grounding DINO, LLMDet); :mod:`~odinw_bench.models.hf.presets`
names the published checkpoints as plain data. Submodules are imported explicitly by their users, and transformers only
inside functions, so importing this package stays cheap.
"""
