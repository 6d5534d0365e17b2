"""Data: everything between an ODinW folder on disk and a batch for the model.

Holds:
    coco: :func:`~odinw_bench.data.coco.read_split` turns an ODinW annotation file into a cleaned, indexed
        :class:`~odinw_bench.data.coco.CocoSplit`.
    task_files: a task's data root (generating built-in synthetic data) and
        :func:`~odinw_bench.data.task_files.load_task_split`.
    images: :func:`~odinw_bench.data.images.load_rgb`, EXIF-aware RGB loading with a clear error for bad files.
    sampling: :func:`~odinw_bench.data.sampling.sample_kshot`, GLIP's k-shot rule and the prepared few-shot files.
    prompts, tokenizer: captions, token spans, positive maps and chunks, with the packaged BERT vocabulary.
    synthetic: a deterministic Roboflow-style export (the offline fruit ``demo`` task).
    demo_suite, demo_looks: the demo suite's tasks (recipes as data; new looks, backgrounds and a sketch style).
    export_writer: the export layout both write (annotation and few-shot files, generated-once task folders).
    drawing, vocabulary: the synthetic visual vocabulary (named categories drawn procedurally, with styles for a
        domain shift).
    scenes, captions, grounding_corpus, corpus_reader: the synthetic grounding corpus for pre-training (scenes,
        detection prompts and grounding phrases with spans; ``write_corpus`` / ``read_corpus``).
    download: resumable, verified download and safe extraction of the ODinW zips.
    validation: checks of a task against its files (folders, annotations, categories, images, few-shot files).

May import: ``tasks`` and the base modules. Importing this package imports nothing heavy; each submodule imports
its own dependencies.
"""
