"""Code versions of the model assets, in a module that imports no torch or mlflow.

Dagster's definitions read them when the code location loads (every step process
does), while the training and evaluation modules import torch: keeping the versions
here keeps that load about two seconds shorter.
"""

from __future__ import annotations

from didact_core.versioning import code_version

#: ``champion_model``: continual training, the split, the gate, the model and its loop
TRAIN_CODE_VERSION = code_version(
    "learn/continual", "learn/split", "learn/gate", "learn/models", "learn/detector", "learn/training",
    "learn/batching", "data/features", "learn/registry",
)
#: ``model_evaluation``
EVAL_CODE_VERSION = code_version(
    "learn/evaluate_day", "learn/recordings_eval", "learn/split", "learn/evaluation", "learn/separability", "learn/registry",
)
