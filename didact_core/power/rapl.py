"""Local RAPL energy counters from the Linux powercap sysfs tree.

Reads ``<root>/intel-rapl:N[:M]/{name,energy_uj,max_energy_range_uj}`` (``root`` defaults
to ``/sys/class/powercap``; a test points it at a fixture tree).  A node's ``rapl``
watts are the sum of its ``package-*`` and ``dram`` zones (core/uncore are inside the
package); ``psys`` is ignored so nothing is counted twice.

``energy_uj`` wraps at ``max_energy_range_uj`` (~262 kJ on many CPUs: every ~20 min at
200 W): a drop is a wrap when the wrapped step implies ≤ ``max_watts``, else a reset
(reboot, driver reload) and that interval gives no watts — see
:func:`didact_core.power.base.counter_to_watts`.  Since Linux 5.10 ``energy_uj`` is
readable by root only; ``available()`` says so instead of failing later.
"""

from __future__ import annotations

import logging
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from didact_core.errors import SourceUnavailableError
from didact_core.ingest.counters import DEFAULT_MAX_WATTS, counter_to_watts
from didact_core.power.base import SamplingPowerReader

log = logging.getLogger(__name__)

DEFAULT_ROOT = "/sys/class/powercap"
SUMMED_DOMAINS = ("package", "dram")


@dataclass(frozen=True)
class RaplZone:
    path: Path
    name: str  # as in sysfs, e.g. "package-0"
    domain: str  # "package", "dram", "core", "uncore", "psys"
    max_energy_range_uj: int | None


def domain_of(name: str) -> str:
    """``package-0`` → ``package``; ``dram`` → ``dram``."""
    return re.sub(r"[-_]?\d+$", "", name.strip().lower())


def find_zones(root: str | Path = DEFAULT_ROOT) -> list[RaplZone]:
    """RAPL zones (``intel-rapl:*``, nested ones too) under ``root``, sorted by path."""
    root = Path(root)
    zones = []
    seen = set()
    # top-level zones and their sub-zones; never a recursive walk (sysfs has link loops)
    dirs = sorted(set(root.glob("*-rapl:*")) | set(root.glob("*-rapl:*/*-rapl:*")))
    for zdir in dirs:
        if not (zdir / "energy_uj").exists():
            continue
        real = zdir.resolve()
        if real in seen:  # /sys/class/powercap has symlinks and nested dirs: count each zone once
            continue
        seen.add(real)
        try:
            name = (zdir / "name").read_text().strip()
        except OSError:
            name = zdir.name
        try:
            mx = int((zdir / "max_energy_range_uj").read_text().strip())
        except (OSError, ValueError):
            mx = None
        zones.append(RaplZone(zdir, name, domain_of(name), mx))
    return zones


class RaplReader(SamplingPowerReader):
    """Watts of this host from RAPL (package + dram zones), sampled on demand."""

    source = "rapl"

    def __init__(
        self,
        node: str | None = None,
        root: str | Path = DEFAULT_ROOT,
        domains: tuple[str, ...] = SUMMED_DOMAINS,
        max_watts: float = DEFAULT_MAX_WATTS,
        prime_s: float = 0.1,
        clock=time.monotonic,
    ):
        super().__init__()
        self.node = node or socket.gethostname()
        self.root = Path(root)
        self.domains = domains
        self.max_watts = max_watts
        self.prime_s = prime_s
        self.clock = clock
        self._zones: list[RaplZone] | None = None
        self._last: tuple[float, dict[Path, int]] | None = None
        self.wraps = 0
        self.resets = 0

    def zones(self) -> list[RaplZone]:
        if self._zones is None:
            self._zones = [z for z in find_zones(self.root) if z.domain in self.domains]
        return self._zones

    def available(self) -> tuple[bool, str]:
        if not self.root.exists():
            return False, f"{self.root} does not exist (no powercap/RAPL driver on this host)"
        zones = self.zones()
        if not zones:
            return False, f"no RAPL {'/'.join(self.domains)} zones under {self.root}"
        try:
            for z in zones:
                int((z.path / "energy_uj").read_text())
        except PermissionError:
            return False, (
                f"{zones[0].path / 'energy_uj'} is readable by root only (Linux ≥ 5.10); "
                "run as root or grant read access (e.g. a udev rule / chmod)"
            )
        except (OSError, ValueError) as e:
            return False, f"cannot read RAPL energy under {self.root}: {e}"
        return True, f"{len(zones)} RAPL zones ({', '.join(z.name for z in zones)}) under {self.root}"

    def read_energy_uj(self) -> dict[Path, int]:
        """Current ``energy_uj`` of each zone."""
        out = {}
        for z in self.zones():
            try:
                out[z.path] = int((z.path / "energy_uj").read_text())
            except (OSError, ValueError) as e:
                raise SourceUnavailableError(
                    f"RAPL zone {z.path}",
                    f"energy_uj unreadable ({e})",
                    "run as root or check the powercap driver (RaplReader.available())",
                ) from None
        return out

    def prime(self) -> None:
        """Take the baseline reading the next :meth:`sample` measures from."""
        if not self.zones():
            _, why = self.available()
            raise SourceUnavailableError(f"RAPL at {self.root}", why, "use another power reader on this host")
        self._last = (self.clock(), self.read_energy_uj())

    def sample(self) -> float:
        """Mean watts since the previous sample (or :meth:`prime`); unprimed, it measures
        over ``prime_s``.  NaN when a zone was reset in between."""
        if self._last is None:
            self.prime()
            time.sleep(self.prime_s)
        t1, e1 = self.clock(), self.read_energy_uj()
        t0, e0 = self._last
        self._last = (t1, e1)
        total = 0.0
        ts = np.array([0, int(round((t1 - t0) * 1000))], dtype=np.int64)
        for z in self.zones():
            mx = z.max_energy_range_uj / 1e6 if z.max_energy_range_uj else None
            w, wraps, resets = counter_to_watts(
                ts, np.array([e0[z.path], e1[z.path]]) / 1e6, mx, self.max_watts
            )
            self.wraps += wraps
            self.resets += resets
            if resets:
                log.warning(
                    "RAPL zone %s went from %d to %d µJ: a reset, no watts for this interval",
                    z.path,
                    e0[z.path],
                    e1[z.path],
                )
            total += float(w[0]) if len(w) else float("nan")
        return total
