"""Pure-PyTorch port of GLIP (Swin + FPN + BERT + VLDyHead), named to load official checkpoints.

Submodules are imported explicitly by their users (``odinw_bench.models.glip.swin`` and so on) so that
importing this package stays free of torch and transformers.
"""
