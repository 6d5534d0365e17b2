"""odinw_bench: few-shot and prompt-tuning evaluation of grounded detectors on ODinW.

Importing the package is cheap: torch, transformers and Lightning are imported lazily by the modules
that need them.
"""

__version__ = "0.1.0"
