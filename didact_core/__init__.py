"""didact core: the plain-Python domain of the didact platform (no Dagster here).

Laid out by pipeline stage; dependencies run one way (``tests/test_house.py`` checks it)::

    ground floor   config (the typed Settings, the only reader of DIDACT_*), errors, schema,
                   versioning, procs (process groups), engine/ (local or Slurm executors)
    ingest/        where raw metrics come from: simulator, Prometheus, live feeds
    data/          raw → AI-ready partitions, labels, review queue, warehouse and its parts
    learn/         models, training, the promotion gate, continual training, evaluation, registry
    serve/         near-real-time scoring, /metrics, model watcher        (uses learn, data, ingest)
    power/         power readers, spool, profiles                          (uses data, ingest)
    testbed/       real labelled recordings on this node and their evaluation

Each part is usable and tested without Dagster.
"""

__version__ = "0.1.0"

# stored MLflow models of before the stage layout import old module names (legacy.py)
from didact_core import legacy as _legacy  # noqa: E402

_legacy.install()
