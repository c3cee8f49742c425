"""Power readers (node exporter via Prometheus, local RAPL, NVML, Redfish) and profiles.

Every reader is a :class:`PowerReader`: ``available() -> (ok, reason)`` and
``read(start, end) -> DataFrame(ts, node, source, watts)``; the sampling ones also
``sample()`` the current watts and can be polled with :func:`poll` / :class:`Poller`.
"""

from .base import Poller, PowerReader, SamplingPowerReader, counter_to_watts, empty_power, poll, power_frame
from .nvml import NvmlReader
from .rapl import RaplReader
from .redfish import RedfishReader

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


def __getattr__(name):  # lazy: prometheus_power and profiles import heavier modules
    if name == "PrometheusPowerReader":
        from .prometheus_power import PrometheusPowerReader

        return PrometheusPowerReader
    if name in ("PowerProfiles", "power_profiles", "profile_plot"):
        from . import profiles

        return getattr(profiles, name)
    raise AttributeError(name)
