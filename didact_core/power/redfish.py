"""Node power from a BMC's Redfish service.

Per chassis, the first reading found of:

1. ``Chassis/{id}/EnvironmentMetrics`` → ``PowerWatts.Reading`` (Redfish 2020.4+);
2. ``Chassis/{id}/Power`` → the first ``PowerControl[]`` entry with
   ``PowerConsumedWatts`` (the classic, deprecated-but-everywhere schema);
3. ``Chassis/{id}/PowerSubsystem/PowerSupplies/*/Metrics`` → Σ ``InputPowerWatts.Reading``.

A node's watts are the sum over its chassis with a reading, leaving out a chassis
contained (``Links.ContainedBy``) in another chassis that has one, so an enclosure and
its blade are not both counted.  ``chassis=[ids]`` restricts the chassis used.

Errors are :class:`~didact_core.errors.SourceUnavailableError` naming the BMC URL:
authentication refused (401/403), no answer within ``timeout_s``, unreachable, HTTP
errors, non-JSON answers.  ``available()`` turns them into ``(False, reason)``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import requests

from didact_core.config import Settings
from didact_core.errors import SourceUnavailableError
from didact_core.power.base import SamplingPowerReader

log = logging.getLogger(__name__)


def _reading(obj) -> float | None:
    """A number from a Redfish value (plain number or a ``{"Reading": x}`` sensor excerpt)."""
    if isinstance(obj, dict):
        obj = obj.get("Reading")
    if isinstance(obj, (int, float)) and not isinstance(obj, bool):
        return float(obj)
    return None


def _containers(doc: dict) -> list[str]:
    """Paths of the chassis that contain this one (``Links.ContainedBy``, object or list)."""
    cb = (doc.get("Links") or {}).get("ContainedBy")
    if isinstance(cb, dict):
        cb = [cb]
    return [c["@odata.id"] for c in cb or [] if isinstance(c, dict) and c.get("@odata.id")]


class RedfishReader(SamplingPowerReader):
    """Watts of one node read from its BMC at ``url`` (``https://bmc`` or ``http://127.0.0.1:8000``)."""

    source = "redfish"

    def __init__(
        self,
        url: str,
        node: str | None = None,
        username: str | None = None,
        password: str | None = None,
        verify: bool | str = True,
        timeout_s: float = 5.0,
        chassis: list[str] | None = None,
        session: requests.Session | None = None,
    ):
        super().__init__()
        self.url = url.rstrip("/")
        self.url = self.url.removesuffix("/redfish/v1")
        self.node = node or (requests.utils.urlparse(self.url).hostname or self.url)
        self.timeout_s = timeout_s
        self.chassis_ids = chassis
        self.session = session or requests.Session()
        self.session.verify = verify
        if username:
            self.session.auth = (username, password or "")
        self.session.headers.setdefault("Accept", "application/json")
        self._plan: list[tuple[str, str]] | None = None  # (chassis path, method)

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, settings: Settings | None = None
    ) -> list[RedfishReader]:
        """One reader per BMC of ``settings.redfish_bmcs`` (``DIDACT_REDFISH_BMCS`` =
        ``node=url,node=url``, or ``@/path``: a file with one ``node=url`` a line), with
        ``redfish_username``, ``redfish_password``, ``redfish_tls_verify`` (boolean or CA path)
        and ``redfish_timeout_s``.  ``settings`` default: read from ``environ`` (``os.environ``).
        Empty when no BMC is configured."""
        s = settings if settings is not None else Settings.from_env(environ)
        auth = (s.redfish_username or None, s.redfish_password.get_secret_value() or None)
        readers = []
        for entry in s.redfish_bmcs:  # validated node=http(s)://… by Settings
            node, _, url = entry.partition("=")
            readers.append(cls(url.strip(), node.strip(), *auth, s.redfish_tls_verify, s.redfish_timeout_s))
        return readers

    # -- HTTP ------------------------------------------------------------------------------
    def get(self, path: str) -> dict:
        """GET a Redfish resource (``/redfish/v1/...``) as JSON; SourceUnavailableError on failure."""
        url = self.url + path
        what = f"Redfish BMC {url}"
        try:
            r = self.session.get(url, timeout=self.timeout_s)
        except requests.exceptions.SSLError as e:
            raise SourceUnavailableError(
                what,
                f"TLS failed ({str(e)[:160]})",
                "set DIDACT_REDFISH_TLS_VERIFY to the BMC's CA bundle (0 disables checking)",
            ) from None
        except requests.exceptions.ConnectTimeout:
            raise SourceUnavailableError(
                what,
                f"connection timed out after {self.timeout_s:g}s",
                "check the BMC address and network (or raise DIDACT_REDFISH_TIMEOUT_S)",
            ) from None
        except requests.exceptions.ReadTimeout:
            raise SourceUnavailableError(
                what,
                f"no answer within {self.timeout_s:g}s",
                "the BMC is slow or hung; raise DIDACT_REDFISH_TIMEOUT_S or reset the BMC",
            ) from None
        except requests.exceptions.ConnectionError as e:
            raise SourceUnavailableError(
                what,
                f"unreachable ({str(e.args[0] if e.args else e)[:160]})",
                "check the BMC address (DIDACT_REDFISH_BMCS) and that it is up",
            ) from None
        if r.status_code in (401, 403):
            raise SourceUnavailableError(
                what,
                f"authentication refused (HTTP {r.status_code})",
                "check DIDACT_REDFISH_USERNAME / DIDACT_REDFISH_PASSWORD for this BMC",
            )
        if r.status_code != 200:
            raise SourceUnavailableError(
                what, f"HTTP {r.status_code}: {r.text[:200].strip()}", "check the BMC's Redfish service"
            )
        try:
            return r.json()
        except ValueError:
            raise SourceUnavailableError(
                what,
                f"answer is not JSON: {r.text[:80]!r}",
                "check the URL points at the BMC's Redfish service",
            ) from None

    def _get_optional(self, path: str) -> dict | None:
        try:
            return self.get(path)
        except SourceUnavailableError as e:
            if "HTTP 404" in e.problem:
                return None
            raise

    # -- discovery ---------------------------------------------------------------------------
    def _members(self, doc: dict) -> list[str]:
        return [m["@odata.id"] for m in doc.get("Members", []) if isinstance(m, dict) and "@odata.id" in m]

    def _chassis_reading(self, path: str, doc: dict) -> tuple[float | None, str | None]:
        env_link = (doc.get("EnvironmentMetrics") or {}).get("@odata.id")
        if env_link:
            env = self._get_optional(env_link)
            w = _reading((env or {}).get("PowerWatts"))
            if w is not None:
                return w, "EnvironmentMetrics"
        power_link = (doc.get("Power") or {}).get("@odata.id")
        if power_link:
            power = self._get_optional(power_link)
            for pc in (power or {}).get("PowerControl", []) or []:
                w = _reading(pc.get("PowerConsumedWatts"))
                if w is not None:
                    return w, "Power"
        sub_link = (doc.get("PowerSubsystem") or {}).get("@odata.id")
        if sub_link:
            sub = self._get_optional(sub_link) or {}
            psu_link = (sub.get("PowerSupplies") or {}).get("@odata.id")
            total, found = 0.0, False
            if psu_link:
                for psu_path in self._members(self._get_optional(psu_link) or {}):
                    psu = self._get_optional(psu_path) or {}
                    m_link = (psu.get("Metrics") or {}).get("@odata.id")
                    w = (
                        _reading((self._get_optional(m_link) or {}).get("InputPowerWatts"))
                        if m_link
                        else None
                    )
                    if w is not None:
                        total += w
                        found = True
            if found:
                return total, "PowerSubsystem"
        return None, None

    def readings(self) -> dict[str, tuple[float, str]]:
        """{chassis path: (watts, schema used)} of every chassis with a reading."""
        root = self.get("/redfish/v1")
        link = (root.get("Chassis") or {}).get("@odata.id")
        if not link:
            raise SourceUnavailableError(
                f"Redfish BMC {self.url}/redfish/v1",
                "has no Chassis collection",
                "this BMC does not expose power through Redfish",
            )
        out: dict[str, tuple[float, str]] = {}
        contained_by: dict[str, list[str]] = {}
        for path in self._members(self.get(link)):
            cid = path.rstrip("/").rsplit("/", 1)[-1]
            if self.chassis_ids is not None and cid not in self.chassis_ids:
                continue
            doc = self.get(path)
            w, how = self._chassis_reading(path, doc)
            if w is not None:
                out[path] = (w, how)
                contained_by[path] = _containers(doc)
        # drop chassis inside another chassis that has its own reading (no double count)
        return {p: v for p, v in out.items() if not any(c in out for c in contained_by.get(p, []))}

    def available(self) -> tuple[bool, str]:
        try:
            r = self.readings()
        except SourceUnavailableError as e:
            return False, str(e)
        if not r:
            return False, (
                f"Redfish BMC {self.url}: no chassis has a power reading "
                "(EnvironmentMetrics.PowerWatts, Power.PowerControl.PowerConsumedWatts or PowerSubsystem)"
            )
        return True, f"{len(r)} chassis with power ({', '.join(f'{p} via {h}' for p, (_, h) in r.items())})"

    def sample(self) -> float:
        """The node's current watts (sum over its chassis, see the module doc)."""
        r = self.readings()
        if not r:
            raise SourceUnavailableError(
                f"Redfish BMC {self.url}",
                "no chassis has a power reading",
                "check the BMC firmware exposes Power or EnvironmentMetrics",
            )
        return float(sum(w for w, _ in r.values()))
