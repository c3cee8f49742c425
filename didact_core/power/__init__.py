"""Power: readers (node exporter via Prometheus, local RAPL, NVML, Redfish), the spool
of sampled watts, profiles per node and job flavour, and the ``power_profiles`` partition.

Every reader is a :class:`PowerReader`: ``available() -> (ok, reason)`` and
``read(start, end) -> DataFrame(ts, node, source, watts)``; the sampling ones also
``sample()`` the current watts and can be polled with :func:`poll` / :class:`Poller`.
:func:`power_profiles` turns samples into :class:`PowerProfiles`;
``didact_core.power.partition`` stores a day's profiles in the warehouse.
"""

from didact_core.ingest.counters import counter_to_watts
from didact_core.power.base import Poller, PowerReader, SamplingPowerReader, empty_power, poll, power_frame
from didact_core.power.nvml import NvmlReader
from didact_core.power.profiles import PowerProfiles, power_profiles, profile_plot
from didact_core.power.prometheus_power import PrometheusPowerReader
from didact_core.power.rapl import RaplReader
from didact_core.power.redfish import RedfishReader

__all__ = [
    "NvmlReader",
    "Poller",
    "PowerProfiles",
    "PowerReader",
    "PrometheusPowerReader",
    "RaplReader",
    "RedfishReader",
    "SamplingPowerReader",
    "counter_to_watts",
    "empty_power",
    "poll",
    "power_frame",
    "power_profiles",
    "profile_plot",
]
