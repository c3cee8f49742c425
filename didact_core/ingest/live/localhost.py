"""This machine as one node, from ``/proc`` (real counters, the numbers node exporter reports)."""

from __future__ import annotations

import logging
import os
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from didact_core.errors import SourceUnavailableError
from didact_core.ingest.live.base import NODE_VALUES, LiveFeed, cpu_frame, node_frame
from didact_core.ingest.node_exporter import VIRTUAL_NET
from didact_core.schema import CPU_MODES

log = logging.getLogger(__name__)

#: /proc/stat's per-CPU columns, in order (Linux ≥ 2.6.33); guest time is inside user/nice
_PROC_STAT_MODES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
#: block devices node exporter's diskstats collector leaves out by default (partitions,
#: ram, loop and floppy devices): what remains are the whole disks the ingest sums
_DISK_EXCLUDE = re.compile(r"^(ram|loop|fd|(h|s|v|xv)d[a-z]|nvme\d+n\d+p)\d+$")
#: /proc/diskstats sectors are 512 bytes whatever the device's sector size
_SECTOR_BYTES = 512


class LocalHostFeed(LiveFeed):
    """This machine as one node: ``/proc/stat``'s per-CPU ticks / USER_HZ = CPU seconds.

    ``power_reader`` (a :class:`~didact_core.power.base.SamplingPowerReader`, e.g. RAPL)
    adds the node's watts when given.  Node-level metrics (``poll(node_metrics=True)``)
    come from ``proc`` (default ``/proc``) as node exporter computes them: ``stat``
    (ctxt, intr), ``vmstat`` (pgfault), ``diskstats`` (io time ms → s, sectors × 512 →
    bytes; whole disks), ``net/dev`` (bytes, virtual devices excluded), ``meminfo``
    (MemTotal − MemAvailable) and ``loadavg``; a file that cannot be read leaves its
    columns NaN (those samples are then counted as missing node metrics).
    """

    name = "localhost"

    def __init__(
        self,
        node: str | None = None,
        proc_stat: str | os.PathLike = "/proc/stat",
        clock: Callable[[], float] = time.time,
        power_reader=None,
        proc: str | os.PathLike = "/proc",
    ):
        self.node = node or socket.gethostname()
        self.path = Path(proc_stat)
        self.proc = Path(proc)
        self._clock = clock
        self.user_hz = float(os.sysconf("SC_CLK_TCK")) if hasattr(os, "sysconf") else 100.0
        self.power_reader = power_reader
        self._last_power: pd.Series | None = None
        self._warned: set[str] = set()

    def describe(self) -> dict:
        return {"feed": self.name, "node": self.node, "path": str(self.path), "user_hz": self.user_hz}

    def _read(self, name: str) -> str | None:
        path = self.proc / name
        try:
            return path.read_text()
        except OSError as e:
            if name not in self._warned:
                self._warned.add(name)
                log.warning("%s cannot be read (%s): its node-level metrics are NaN", path, e.strerror or e)
            return None

    def read_node_metrics(self, stat_text: str) -> np.ndarray:
        """This node's :data:`NODE_VALUES` now (NaN where a file or line is missing)."""
        v = dict.fromkeys(NODE_VALUES, np.nan)
        for line in stat_text.splitlines():
            key, _, rest = line.partition(" ")
            if key in ("ctxt", "intr") and rest.split():
                v[key] = float(rest.split()[0])  # intr: the total, then per-IRQ counts
        text = self._read("vmstat")
        if text is not None:
            for line in text.splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[0] == "pgfault":
                    v["pgfault"] = float(parts[1])
        text = self._read("diskstats")
        if text is not None:
            io = rd = wr = 0.0
            for line in text.splitlines():
                parts = line.split()
                if len(parts) < 14 or _DISK_EXCLUDE.match(parts[2]):
                    continue
                rd += float(parts[5]) * _SECTOR_BYTES
                wr += float(parts[9]) * _SECTOR_BYTES
                io += float(parts[12]) / 1000.0
            v["disk_io_time"], v["disk_read_bytes"], v["disk_written_bytes"] = io, rd, wr
        text = self._read("net/dev")
        if text is not None:
            rx = tx = 0.0
            for line in text.splitlines()[2:]:
                dev, sep, rest = line.partition(":")
                fields = rest.split()
                if not sep or len(fields) < 9 or VIRTUAL_NET.match(dev.strip()):
                    continue
                rx += float(fields[0])
                tx += float(fields[8])
            v["net_rx_bytes"], v["net_tx_bytes"] = rx, tx
        text = self._read("meminfo")
        if text is not None:
            mem = {}
            for line in text.splitlines():
                key, _, rest = line.partition(":")
                if key in ("MemTotal", "MemAvailable") and rest.split():
                    mem[key] = float(rest.split()[0]) * 1024.0  # kB
            if len(mem) == 2:
                v["mem_used_bytes"] = mem["MemTotal"] - mem["MemAvailable"]
        text = self._read("loadavg")
        if text is not None and text.split():
            v["load1"] = float(text.split()[0])
        return np.array([v[c] for c in NODE_VALUES], dtype=np.float64)

    def poll(self, node_metrics: bool = False) -> pd.DataFrame:
        self._last_node_metrics = None
        try:
            text = self.path.read_text()
        except OSError as e:
            raise SourceUnavailableError(
                f"{self.path}",
                f"cannot be read ({e.strerror or e})",
                "run on Linux with /proc mounted, or use another feed",
            ) from None
        now_ms = int(self._clock() * 1000)
        cpus, vals = [], []
        for line in text.splitlines():
            if not line.startswith("cpu") or line.startswith("cpu "):
                continue
            parts = line.split()
            try:
                cpu = int(parts[0][3:])
                ticks = [float(x) for x in parts[1 : 1 + len(_PROC_STAT_MODES)]]
            except ValueError:
                continue
            ticks += [0.0] * (len(_PROC_STAT_MODES) - len(ticks))  # very old kernels lack steal
            by_mode = dict(zip(_PROC_STAT_MODES, ticks))
            cpus.append(cpu)
            vals.append([by_mode[m] / self.user_hz for m in CPU_MODES])
        if not cpus:
            raise SourceUnavailableError(
                f"{self.path}",
                "has no per-CPU lines (cpu0, cpu1, …)",
                "point LocalHostFeed at a Linux /proc/stat",
            )
        if self.power_reader is not None:
            try:
                w = float(self.power_reader.sample())
            except SourceUnavailableError as e:
                log.warning("power of %s unavailable: %s", self.node, e)
                w = float("nan")
            self._last_power = pd.Series([w], index=pd.Index([self.node], name="node"), name="watts")
        if node_metrics:
            nv = self.read_node_metrics(text)
            self._last_node_metrics = node_frame(np.array([now_ms]), np.zeros(1), [self.node], nv[None, :])
        n = len(cpus)
        return cpu_frame(np.full(n, now_ms), np.zeros(n), [self.node], np.array(cpus), np.array(vals))

    def power(self) -> pd.Series | None:
        return self._last_power


__all__ = ["LocalHostFeed"]
