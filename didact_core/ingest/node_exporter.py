"""Node exporter's conventions, shared by every reader of its metrics.

The metric names the nightly Prometheus ingest and the live feeds read, which network
devices count (virtual ones do not), how a node is named from its Prometheus label
(``host:9100`` → ``host``), and how node-level series become the raw ``node_metrics``
rows of :mod:`didact_core.schema` (summed over devices, memory used = total − available).
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from didact_core.schema import NODE_COUNTERS, NODE_GAUGES

#: the per-CPU counters of every mode
CPU_METRIC = "node_cpu_seconds_total"
#: node exporter's RAPL energy counters (one per zone)
RAPL_METRIC_RE = r"node_rapl_.*joules_total"
#: node exporter's hwmon power gauges (average, input or plain)
HWMON_METRIC_RE = r"node_hwmon_power_(average_|input_)?watt"
#: what :mod:`didact_core.ingest.openmetrics` writes for a node's power, with a ``source`` label
DIDACT_POWER_METRIC = "didact_power_watts"
#: RAPL domains summed into a node's ``rapl`` watts (core/uncore are inside package)
RAPL_DOMAINS = ("package", "dram")

#: node exporter's node-level metrics → raw node_metrics columns (see schema.NODE_COUNTERS)
NODE_METRICS = {
    "node_context_switches_total": "ctxt",
    "node_intr_total": "intr",
    "node_disk_io_time_seconds_total": "disk_io_time",
    "node_disk_read_bytes_total": "disk_read_bytes",
    "node_disk_written_bytes_total": "disk_written_bytes",
    "node_vmstat_pgfault": "pgfault",
    "node_network_receive_bytes_total": "net_rx_bytes",
    "node_network_transmit_bytes_total": "net_tx_bytes",
    "node_memory_MemTotal_bytes": "mem_total",
    "node_memory_MemAvailable_bytes": "mem_available",
    "node_load1": "load1",
}
#: the node-level values of a raw node_metrics row, in column order (counters, then gauges)
NODE_VALUES: tuple[str, ...] = NODE_COUNTERS + NODE_GAUGES
#: network devices whose bytes are not the node's traffic (loopback, containers, bridges)
VIRTUAL_NET = re.compile(r"^(lo|veth.*|docker.*|br-.*|virbr.*)$")

_PORT_RE = re.compile(r"^(.*?)(?::\d+)?$")


def node_name(raw: str, strip_port: bool = True) -> str:
    """The node a label value names: ``host:9100`` → ``host`` with ``strip_port``."""
    return _PORT_RE.match(raw).group(1) if strip_port else raw


def node_metric_column(name: str, labels: dict) -> str | None:
    """The raw node_metrics column series ``name`` with ``labels`` adds to, or None
    (not a node-level metric, or the traffic of a virtual network device)."""
    column = NODE_METRICS.get(name)
    if (
        column is not None
        and name.startswith("node_network_")
        and VIRTUAL_NET.match(labels.get("device", ""))
    ):
        return None
    return column


def pivot_node_metrics(long: pd.DataFrame) -> pd.DataFrame:
    """Long ``(node, ts, col, v)`` rows → one row per (node, ts) with ``NODE_VALUES``
    columns: summed over devices, ``mem_used_bytes`` = total − available, rows with no
    value at all dropped (columns a node lacks are NaN)."""
    wide = long.pivot_table(index=["node", "ts"], columns="col", values="v", aggfunc="sum")
    if "mem_total" in wide and "mem_available" in wide:
        wide["mem_used_bytes"] = wide["mem_total"] - wide["mem_available"]
    wide = wide.reindex(columns=list(NODE_VALUES)).astype(np.float64)
    return wide.dropna(how="all").reset_index()


__all__ = [
    "CPU_METRIC",
    "DIDACT_POWER_METRIC",
    "HWMON_METRIC_RE",
    "NODE_METRICS",
    "NODE_VALUES",
    "RAPL_DOMAINS",
    "RAPL_METRIC_RE",
    "VIRTUAL_NET",
    "node_metric_column",
    "node_name",
    "pivot_node_metrics",
]
