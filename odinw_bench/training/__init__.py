"""Training: how a model is tuned on a task under GLIP's ODinW recipe.

Holds:
    regimes: the regimes as data (zero-shot, linear probe, prompt tuning, full, language) and applying them.
    run_config: the recipe (``configs/glip_odinw.yaml``) with ``key=value`` overrides, and Trainer settings.
    optim: GLIP's optimiser rules (bias and language learning rates, weight decay groups).
    module, datamodule: the LightningModule and the k-shot DataModule.
    fitting: one guarded ``trainer.fit`` (weights-only resume, one-line errors) for every fit.
    callbacks: GLIP's plateau schedule, early stopping, skipped non-finite steps, RNG state in checkpoints.
    monitoring: one log line per epoch and the per-epoch history of a run (for logs without a progress bar).
    wandb_logging: the W&B logger of a run (never blocks, never fails a run).
    pretrain, pretrain_data, pretrain_recipe, model_card: pre-training glip-nano on a grounding corpus
        (``configs/glip_pretrain.yaml``) and the model card of its weights.

May import: ``results``, ``models``, ``data``, ``tasks`` and the base modules; never ``runs``, ``report`` or the CLI.
"""
