"""didact core: the plain-Python domain of the didact platform (no Dagster here).

Telemetry sources (the simulated cluster, Prometheus), preprocessing, the versioned
DuckDB warehouse and lineage, models and training, the MLflow registry wrapper, power,
serving and the OOD review queue.  Each part is usable and tested without Dagster.
"""

__version__ = "0.1.0"
