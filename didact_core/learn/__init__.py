"""learn: from AI-ready samples to a registered, gated champion model.

``models/`` (the config dataclass and the two families), ``detector`` (the estimator:
fit, score, save), ``training`` (the one loop) over ``batching`` (device-resident
batches); ``split`` (each day's train / held-out split), ``gate`` (the promotion gate),
``continual`` (a day's training from the champion), ``evaluate_day`` (the day's
challenger beside its champion), ``evaluation`` and ``separability`` (metrics and plots),
``registry`` (MLflow models and aliases), ``champion`` (rollback, status rows),
``stored`` (a day's stored training outcome, re-emitted instead of retraining), ``recordings_eval``
(the day's models judged on real labelled recordings), ``code_versions``, ``stale_runs`` (ending MLflow runs a dead process left RUNNING), ``triggers`` (retrain decisions), ``centroids``, ``mlflow_pyfunc``.

No names are re-exported here: importing ``didact_core.learn`` must not import torch.
"""
