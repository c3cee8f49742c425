"""RAPL package power caps through the Linux powercap tree, restored on exit.

A cap writes ``<root>/intel-rapl:N/constraint_0_power_limit_uw`` (the long-term limit, in
µW) of every CPU package zone of this host; ``root`` is ``DIDACT_POWERCAP_ROOT``
(``/sys/class/powercap`` by default).  Where that file is not writable (not root, no RAPL
driver, a locked BIOS) nothing is written: the exact command an administrator can run is
returned instead (``echo 150000000 | sudo tee …``) and the cap is *not applied*.

The limit each zone had before didact's first cap is kept in a state file
(``$DIDACT_HOME/act/caps.json``, written atomically under a lock) until it is restored:

* :meth:`PowerCaps.held` restores on leaving the block, error or not;
* :meth:`PowerCaps.restore_at_exit` restores when the process exits, also on SIGTERM/SIGHUP
  (they become a normal exit) and Ctrl-C;
* :meth:`PowerCaps.restore` (``didact act restore``) restores what a killed process left.

Power before and after a cap is sampled with :class:`didact_core.power.rapl.RaplReader`.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import logging
import os
import shlex
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from didact_core.act.audit import AuditLog, now_utc
from didact_core.errors import DidactError
from didact_core.power.rapl import DEFAULT_ROOT, RaplReader, find_zones

log = logging.getLogger(__name__)

LIMIT_FILE = "constraint_0_power_limit_uw"
MAX_FILE = "constraint_0_max_power_uw"


@dataclass
class CapResult:
    node: str
    watts: float
    applied: bool
    zones: list[str]
    previous_uw: dict[str, int] = field(default_factory=dict)
    command: str = ""  # what to run where didact could not write
    watts_before: float | None = None
    watts_after: float | None = None
    why: str = ""


class PowerCaps:
    """Set and restore package limits under ``root``; ``state`` remembers the limits to restore."""

    def __init__(self, root: str | Path = DEFAULT_ROOT, state: str | Path = "caps.json", node: str | None = None,
                 audit: AuditLog | None = None, measure_s: float = 0.5):  # fmt: skip
        self.root = Path(root)
        self.state = Path(state)
        self.node = node or socket.gethostname().split(".")[0]
        self.audit = audit
        self.measure_s = measure_s
        self._exit_hooked = False

    @classmethod
    def under(cls, home: str | Path, root: str | Path = DEFAULT_ROOT, **kw) -> PowerCaps:
        return cls(root, Path(home) / "act" / "caps.json", **kw)

    # -- zones and state ------------------------------------------------------------------
    def zones(self) -> list[Path]:
        """The limit files of this host's package zones."""
        return [z.path / LIMIT_FILE for z in find_zones(self.root) if z.domain == "package" and (z.path / LIMIT_FILE).exists()]

    def active(self) -> dict[str, dict]:
        """{limit file: {previous_uw, cap_uw, ts, node}} of the caps not yet restored."""
        try:
            return json.loads(self.state.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, json.JSONDecodeError) as e:
            raise DidactError(f"power-cap state {self.state}", f"cannot be read ({e})",
                              "restore the limits by hand (the audit log has them), then delete the file") from None  # fmt: skip

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, dict]]:
        """The state under an exclusive lock; what the block leaves in the dict is written atomically."""
        self.state.parent.mkdir(parents=True, exist_ok=True)
        with open(self.state.with_name(self.state.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = self.active()
            try:
                yield state
            finally:  # also after a failed write part way: what was changed must stay restorable
                tmp = self.state.with_name(f".{self.state.name}.{os.getpid()}.tmp")
                tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
                os.replace(tmp, self.state)

    # -- cap and restore ----------------------------------------------------------------
    def command(self, uw_by_file: dict[Path, int]) -> str:
        """The shell command that writes these limits as root."""
        by_value: dict[int, list[str]] = {}
        for f, uw in uw_by_file.items():
            by_value.setdefault(uw, []).append(shlex.quote(str(f)))
        return " && ".join(f"echo {uw} | sudo tee {' '.join(fs)} > /dev/null" for uw, fs in by_value.items())

    def apply(self, watts: float) -> CapResult:
        """Cap every package of this host at ``watts`` each; not applied (with the command) where not writable."""
        files = self.zones()
        uw = int(round(watts * 1e6))
        res = CapResult(self.node, watts, False, [str(f) for f in files])
        if not files:
            res.why = f"no RAPL package zone with {LIMIT_FILE} under {self.root} (no powercap driver here?)"
            return res
        for f in files:
            mx = _read_int(f.with_name(MAX_FILE))
            if mx and uw > mx:
                raise DidactError(f"power cap {watts:g} W", f"is above {f.parent.name}'s maximum {mx / 1e6:g} W",
                                  "choose watts below the package's constraint_0_max_power_uw")  # fmt: skip
        res.command = self.command(dict.fromkeys(files, uw))
        if not all(os.access(f, os.W_OK) for f in files):
            res.why = f"{files[0]} is not writable here (root only): run the command as root"
            return res
        if any(_read_int(f) is None for f in files):
            raise DidactError(f"RAPL limits under {self.root}", "cannot be read as numbers",
                              "check the powercap driver (cat …/constraint_0_power_limit_uw)")  # fmt: skip
        res.watts_before = self.measure()
        with self._locked() as state:
            for f in files:
                prev = _read_int(f)
                entry = state.get(str(f))
                state[str(f)] = {"previous_uw": entry["previous_uw"] if entry else prev, "cap_uw": uw,
                                 "ts": now_utc().isoformat(timespec="seconds"), "node": self.node}  # fmt: skip
                res.previous_uw[str(f)] = state[str(f)]["previous_uw"]
                _write(f, uw)
        res.applied = True
        res.why = f"{len(files)} package(s) capped at {watts:g} W"
        res.watts_after = self.measure()
        return res

    def restore(self, why: str = "restore") -> list[dict]:
        """Write back the limits didact replaced; one record per zone (applied or the command to run)."""
        out = []
        with self._locked() as state:
            for f, entry in sorted(state.items()):
                prev = int(entry["previous_uw"])
                rec = {"node": entry.get("node", self.node), "zone": f, "previous_uw": prev, "cap_uw": entry.get("cap_uw"),
                       "why": why}  # fmt: skip
                try:
                    _write(Path(f), prev)
                except OSError as e:
                    rec.update(applied=False, error=str(e), command=self.command({Path(f): prev}))
                else:
                    rec["applied"] = True
                    del state[f]
                out.append(rec)
        if self.audit is not None:
            for rec in out:
                self.audit.append("restore", action="power-cap", **rec)
        return out

    def measure(self) -> float | None:
        """This host's RAPL watts over ``measure_s`` (None where RAPL cannot be read)."""
        reader = RaplReader(node=self.node, root=self.root, prime_s=self.measure_s)
        ok, why = reader.available()
        if not ok:
            log.info("no power reading for the cap: %s", why)
            return None
        try:
            return round(reader.sample(), 3)
        except DidactError as e:
            log.info("no power reading for the cap: %s", e)
            return None

    # -- restore on exit ------------------------------------------------------------------
    @contextlib.contextmanager
    def held(self) -> Iterator[PowerCaps]:
        """Caps applied inside the block are restored when it ends, also on an error or SIGTERM/SIGHUP
        (they become a ``SystemExit`` while the block runs; the handlers before it come back after)."""
        before = _exit_on_signals()
        try:
            yield self
        finally:
            for sig, handler in before.items():
                signal.signal(sig, handler)
            self.restore("restored on leaving (held)")

    def restore_at_exit(self) -> None:
        """Restore at interpreter exit; SIGTERM and SIGHUP become a normal exit so that happens."""
        if self._exit_hooked:
            return
        self._exit_hooked = True
        atexit.register(self._restore_quietly)
        _exit_on_signals()

    def _restore_quietly(self) -> None:
        try:
            if self.active():
                self.restore("restored at exit")
        except (OSError, DidactError) as e:  # at exit nothing can be raised to: say it
            log.error("power caps were not restored (%s): run `didact act restore`", e)


def _exit_on_signal(signum, frame) -> None:
    sys.exit(128 + signum)


def _exit_on_signals() -> dict:
    """Make SIGTERM/SIGHUP a ``SystemExit`` (where they would kill the process outright); the
    handlers replaced.  Only the main thread may set handlers: elsewhere nothing changes."""
    before = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(sig) in (signal.SIG_DFL, None):
                prev = signal.signal(sig, _exit_on_signal)
                before[sig] = signal.SIG_DFL if prev is None else prev
    return before


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _write(path: Path, value: int) -> None:
    with open(path, "w") as f:  # sysfs: one write of the number, no temp file (not atomic-replaceable)
        f.write(f"{value}\n")
