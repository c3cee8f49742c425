"""didact's Dagster layer: partitions, resources, assets, checks, jobs, schedules,
sensors and the ``Definitions``.  Asset bodies are a few lines over ``didact_core``."""
