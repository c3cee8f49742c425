"""data: raw node metrics → AI-ready samples, stored as immutable, versioned partitions.

- ``spine``: the raw / job_labels / ai_ready partitions of a day (what the assets call);
- ``preprocess``: counters → fractions of each interval, node-level rates, windows, cleaning counts;
- ``features``: the feature transform fitted with a model and applied the same way in serving;
- ``labels``: job labels from a CSV or a scheduler export, validated line by line;
- ``review``: the queue of OOD events a person vets;
- ``warehouse``: the DuckDB catalog (versions, heads, lineage, views), rollback, prune;
- ``parts``: the Parquet parts of a version, their digests and hashes, the partition writer;
- ``blocks``: a partition's node blocks — the worker code, and the blocks as one job array
  (``DIDACT_EXECUTOR=slurm``); ``verify``, ``catalog``, ``catalog_rebuild``, ``folders``: checking
  parts, opening and rebuilding the catalog, version manifests and orphan cleanup.

data imports the ground floor and ingest; never learn, serve, power or testbed.
"""
