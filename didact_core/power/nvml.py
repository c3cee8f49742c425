"""NVIDIA GPU power, utilisation and memory through NVML (``pynvml`` of nvidia-ml-py).

On a host without the NVIDIA driver (``libnvidia-ml.so`` missing), without the Python
package, or without GPUs, :meth:`NvmlReader.available` returns ``(False, reason)`` and
nothing raises at import or construction.  ``sample()`` is the sum over the node's GPUs
of the mean power since the previous sample, from the total-energy counter
(``nvmlDeviceGetTotalEnergyConsumption``, Volta and newer) when the GPU has one, else the
instantaneous ``nvmlDeviceGetPowerUsage``.
"""

from __future__ import annotations

import logging
import socket
import threading
import time

import pandas as pd

from didact_core.errors import SourceUnavailableError
from didact_core.schema import TS_DTYPE
from didact_core.power.base import SamplingPowerReader

log = logging.getLogger(__name__)


def _load_pynvml():
    import pynvml  # nvidia-ml-py

    return pynvml


class NvmlReader(SamplingPowerReader):
    """GPU watts of this host; ``nvml`` injects a module with pynvml's API (tests)."""

    source = "nvml"

    def __init__(
        self, node: str | None = None, gpus: list[int] | None = None, nvml=None, clock=time.monotonic
    ):
        super().__init__()
        self.node = node or socket.gethostname()
        self.gpus = gpus
        self._nvml = nvml
        self._init_lock = threading.Lock()
        self._handles: list | None = None
        self._why: str | None = None
        self._last_energy: dict[int, tuple[float, int]] = {}
        self.clock = clock

    # -- NVML session ----------------------------------------------------------------
    def _init(self) -> bool:
        with self._init_lock:
            if self._handles is not None or self._why is not None:
                return self._handles is not None
            try:
                nv = self._nvml if self._nvml is not None else _load_pynvml()
            except ImportError:
                self._why = "pynvml (pip package nvidia-ml-py) is not installed"
                return False
            self._nvml = nv
            try:
                nv.nvmlInit()
                count = nv.nvmlDeviceGetCount()
                idx = range(count) if self.gpus is None else [i for i in self.gpus if i < count]
                self._handles = [(i, nv.nvmlDeviceGetHandleByIndex(i)) for i in idx]
            except nv.NVMLError as e:
                not_found = getattr(nv, "NVMLError_LibraryNotFound", None)
                if not_found is not None and isinstance(e, not_found):
                    self._why = "NVML library (libnvidia-ml.so) not found: no NVIDIA driver on this host"
                else:
                    self._why = f"NVML failed to start: {e}"
                self._handles = None
                return False
            except OSError as e:
                self._why = f"NVML library could not be loaded: {e}"
                return False
            if not self._handles:
                self._why = "NVML works but this host has no NVIDIA GPU" + (
                    f" among {self.gpus}" if self.gpus else ""
                )
                self._handles = None
                return False
            return True

    def available(self) -> tuple[bool, str]:
        if not self._init():
            return False, self._why or "NVML not available"
        nv = self._nvml
        names = []
        for _, h in self._handles:
            try:
                n = nv.nvmlDeviceGetName(h)
                names.append(n.decode() if isinstance(n, bytes) else str(n))
            except nv.NVMLError:
                names.append("?")
        return True, f"{len(names)} NVIDIA GPU(s): {', '.join(names)}"

    def close(self) -> None:
        if self._handles is not None:
            try:
                self._nvml.nvmlShutdown()
            except self._nvml.NVMLError as e:
                log.debug("nvmlShutdown: %s", e)
            self._handles = None

    def _require(self):
        if not self._init():
            raise SourceUnavailableError(
                f"NVML on {self.node}",
                self._why or "not available",
                "read GPU power on a host with the NVIDIA driver, or drop the nvml reader",
            )
        return self._nvml

    # -- reading -----------------------------------------------------------------------
    def _gpu_watts(self, i: int, h) -> float:
        nv = self._nvml
        now = self.clock()
        try:
            mj = int(nv.nvmlDeviceGetTotalEnergyConsumption(h))
        except nv.NVMLError:
            mj = None
        if mj is not None:
            prev = self._last_energy.get(i)
            self._last_energy[i] = (now, mj)
            if prev is not None and now > prev[0] and mj >= prev[1]:
                return (mj - prev[1]) / 1000.0 / (now - prev[0])
        return nv.nvmlDeviceGetPowerUsage(h) / 1000.0

    def sample(self) -> float:
        """Total GPU watts of the node (mean since the last call where the GPU counts energy)."""
        self._require()
        return float(sum(self._gpu_watts(i, h) for i, h in self._handles))

    def gpu_metrics(self) -> pd.DataFrame:
        """One row per GPU now: ts, node, gpu, name, watts, util_gpu/util_memory (0–1),
        memory_used_bytes, memory_total_bytes, power_limit_watts."""
        nv = self._require()
        now = pd.Timestamp.now(tz="UTC")
        rows = []
        for i, h in self._handles:
            util = nv.nvmlDeviceGetUtilizationRates(h)
            mem = nv.nvmlDeviceGetMemoryInfo(h)
            try:
                limit = nv.nvmlDeviceGetEnforcedPowerLimit(h) / 1000.0
            except nv.NVMLError:
                limit = float("nan")
            name = nv.nvmlDeviceGetName(h)
            rows.append(
                {
                    "ts": now,
                    "node": self.node,
                    "gpu": i,
                    "name": name.decode() if isinstance(name, bytes) else str(name),
                    "watts": nv.nvmlDeviceGetPowerUsage(h) / 1000.0,
                    "util_gpu": util.gpu / 100.0,
                    "util_memory": util.memory / 100.0,
                    "memory_used_bytes": int(mem.used),
                    "memory_total_bytes": int(mem.total),
                    "power_limit_watts": limit,
                }
            )
        df = pd.DataFrame(rows)
        if len(df):
            df["ts"] = df["ts"].astype(TS_DTYPE)
        return df
