"""``notify``: an Alertmanager-style webhook POST.

The body is Alertmanager's webhook format (version 4), so whatever already receives
Alertmanager's notifications (a chat bridge, a pager, an incident tool) takes didact's::

    {"version": "4", "groupKey": "...", "status": "firing", "receiver": "didact",
     "groupLabels": {"alertname": "DidactAct"}, "commonLabels": {...}, "commonAnnotations": {...},
     "externalURL": "", "truncatedAlerts": 0,
     "alerts": [{"status": "firing", "labels": {"alertname": "DidactAct", "node": "n1", "rule": "...",
                 "action": "notify", "severity": "warning"},
                 "annotations": {"summary": "...", "description": "..."},
                 "startsAt": "2026-...Z", "endsAt": "0001-01-01T00:00:00Z",
                 "generatorURL": "", "fingerprint": "<16 hex>"}]}

The URL is the policy's ``[notify] url`` or ``DIDACT_ACT_WEBHOOK_URL``; the POST has a
timeout, and a receiver that fails or does not answer is a :class:`DidactError`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import urllib.error
import urllib.request
from collections.abc import Iterable

from didact_core.errors import DidactError

ALERTNAME = "DidactAct"
ZERO_TIME = "0001-01-01T00:00:00Z"


def _rfc3339(ts: dt.datetime) -> str:
    return ts.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def alert(node: str, rule: str, action: str, summary: str, description: str, starts: dt.datetime,
          severity: str = "warning") -> dict:  # fmt: skip
    labels = {"alertname": ALERTNAME, "node": node, "rule": rule, "action": action, "severity": severity}
    fp = hashlib.sha256(json.dumps(labels, sort_keys=True).encode()).hexdigest()[:16]
    return {"status": "firing", "labels": labels, "annotations": {"summary": summary, "description": description},
            "startsAt": _rfc3339(starts), "endsAt": ZERO_TIME, "generatorURL": "", "fingerprint": fp}  # fmt: skip


def payload(alerts: Iterable[dict], receiver: str = "didact") -> dict:
    """Alertmanager's webhook body for ``alerts`` (their common labels and annotations computed)."""
    alerts = list(alerts)
    common_l = _common([a["labels"] for a in alerts])
    common_a = _common([a["annotations"] for a in alerts])
    group = {"alertname": ALERTNAME}
    return {"version": "4", "groupKey": f'{{}}:{{alertname="{ALERTNAME}"}}', "truncatedAlerts": 0,
            "status": "firing", "receiver": receiver, "groupLabels": group, "commonLabels": common_l,
            "commonAnnotations": common_a, "externalURL": "", "alerts": alerts}  # fmt: skip


def _common(dicts: list[dict]) -> dict:
    if not dicts:
        return {}
    return {k: v for k, v in dicts[0].items() if all(d.get(k) == v for d in dicts[1:])}


def post(url: str, body: dict, timeout_s: float = 5.0) -> int:
    """POST ``body`` as JSON; the HTTP status (2xx), or a :class:`DidactError`."""
    data = json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST",
                                 headers={"Content-Type": "application/json", "User-Agent": "didact-act"})  # fmt: skip
    fix = "check the receiver at that URL (the policy's [notify] url or DIDACT_ACT_WEBHOOK_URL)"
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        raise DidactError(f"notify webhook {url}", f"answered HTTP {e.code} {e.reason}", fix) from None
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise DidactError(f"notify webhook {url}", f"did not take the alert ({reason})", fix) from None
