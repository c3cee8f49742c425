"""The testbed: real, labelled telemetry recorded on this Linux node, and how well it can
be told apart.

- :mod:`.workloads`: the labelled programs a recording runs (``Workload``, ``WORKLOADS``)
- :mod:`.processes`: starting, tagging, timing and stopping child processes
- :mod:`.services`: node exporter and Prometheus for a recording; the TSDB served again
- :mod:`.scrapes`: this node's name in a Prometheus, and waiting for its samples
- :mod:`.progress`: progress events and the clean Ctrl-C / SIGTERM stop
- :mod:`.labels_csv`: the labels CSV, rewritten atomically
- :mod:`.recorder`: segments, guard bands, the recording loop (``record``)
- :mod:`.ingest`: a recording through the data spine into a home
- :mod:`.baseline`: per-segment features and a nearest-centroid baseline
- :mod:`.segments`: labelled samples with their segments, checked, and the seeded segment split
- :mod:`.eval_report`: per-flavour rows, mean ± std over seeds, warnings (prints nothing)
- :mod:`.evaluation`: segment-honest and cross-recording evaluation (imports the learning stage)
- :mod:`.evaluation`: how well a trained model separates the workloads (not re-exported
  here: it pulls in the learning stage)
"""

from didact_core.testbed.baseline import (
    FEATURES_FOR_BASELINE,
    nearest_centroid_loo,
    recorded_segment_features,
    segment_features,
)
from didact_core.testbed.ingest import ingest_recording, labels_days
from didact_core.testbed.labels_csv import LabelsWriter
from didact_core.testbed.processes import TAG_VAR, stop_tagged, tagged_pids
from didact_core.testbed.progress import ProgressEvent, format_event
from didact_core.testbed.recorder import (
    MIN_LABEL_S,
    OTHER_LOAD_WARN,
    Recording,
    Segment,
    record,
)
from didact_core.testbed.scrapes import discover_node, wait_for_scrapes
from didact_core.testbed.services import (
    Service,
    free_port,
    serve_recording,
    start_recording_services,
    start_service,
    testbed_dir,
    tsdb_dir,
)
from didact_core.testbed.workloads import (
    MPI_READY_MARKER,
    WORKLOADS,
    RunContext,
    Workload,
    build_mpi_bench,
    check_flavours,
    plan_segments,
    resolve_flavours,
    usable_cpus,
)

__all__ = [
    "FEATURES_FOR_BASELINE",
    "MIN_LABEL_S",
    "MPI_READY_MARKER",
    "OTHER_LOAD_WARN",
    "TAG_VAR",
    "WORKLOADS",
    "LabelsWriter",
    "ProgressEvent",
    "Recording",
    "RunContext",
    "Segment",
    "Service",
    "Workload",
    "build_mpi_bench",
    "check_flavours",
    "discover_node",
    "format_event",
    "free_port",
    "ingest_recording",
    "labels_days",
    "nearest_centroid_loo",
    "plan_segments",
    "record",
    "recorded_segment_features",
    "resolve_flavours",
    "segment_features",
    "serve_recording",
    "start_recording_services",
    "start_service",
    "stop_tagged",
    "tagged_pids",
    "testbed_dir",
    "tsdb_dir",
    "usable_cpus",
    "wait_for_scrapes",
]
