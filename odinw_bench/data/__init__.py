"""Data: everything between an ODinW folder on disk and a batch for the model.

Reading and sampling live in:
    coco: :func:`~odinw_bench.data.coco.read_split` and :func:`~odinw_bench.data.coco.load_task_split` turn an
        ODinW annotation file into a cleaned, indexed :class:`~odinw_bench.data.coco.CocoSplit`.
    images: :func:`~odinw_bench.data.images.load_rgb`, EXIF-aware RGB loading with a clear error for bad files.
    sampling: :func:`~odinw_bench.data.sampling.sample_kshot`, GLIP's k-shot rule and the prepared few-shot files.
    synthetic: a deterministic Roboflow-style export (the offline ``demo`` task).

Importing this package imports nothing heavy; each submodule imports its own dependencies.
"""
