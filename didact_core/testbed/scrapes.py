"""Which node a Prometheus calls this host, and whether it holds recent samples of it:
the checks the recorder makes before its first segment."""

from __future__ import annotations

import contextlib
import re
import socket
import time
from urllib.parse import urlsplit

import requests

from didact_core.config import Settings
from didact_core.errors import DidactError, SourceUnavailableError
from didact_core.ingest.prometheus import PrometheusSource, node_name, promql_str, regex_union


def _source(settings: Settings, url: str) -> PrometheusSource:
    return PrometheusSource.from_settings(settings.replace(prometheus_url=url), retries=1, timeout_s=15.0)


def _parse_duration(s: str) -> float:
    total, n = 0.0, 0
    for value, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)", s or ""):
        total += float(value) * {"ms": 1e-3, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}[unit]
        n += 1
    return total if n else 0.0


def _local_hosts() -> set[str]:
    names = {"localhost", "127.0.0.1", "::1", "[::1]", socket.gethostname(), socket.getfqdn()}
    with contextlib.suppress(OSError):
        names.update(socket.gethostbyname_ex(socket.gethostname())[2])
    return {n.lower() for n in names if n}


def discover_node(settings: Settings, url: str) -> tuple[str, float]:
    """(node name, scrape interval s) of the target of Prometheus ``url`` that scrapes
    this host's node exporter, named the way PrometheusSource names nodes."""
    src = _source(settings, url)
    try:
        deadline = time.monotonic() + 15  # a Prometheus that just started lists its targets after ~5 s
        while True:
            try:
                r = src.session.get(url.rstrip("/") + "/api/v1/targets", params={"state": "active"}, timeout=15)
                targets = r.json()["data"]["activeTargets"] if r.status_code == 200 else []
            except (requests.RequestException, ValueError, KeyError, TypeError) as e:
                raise SourceUnavailableError(
                    f"Prometheus {url}", f"its targets cannot be read ({type(e).__name__})",
                    "check the URL, or pass --node-name",
                ) from None  # fmt: skip
            if targets or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        local = _local_hosts()
        found = []
        for t in targets:
            host = (urlsplit(t.get("scrapeUrl", "")).hostname or "").lower()
            raw = (t.get("labels") or {}).get(src.node_label)
            if host in local and raw and t.get("scrapeUrl", "").rstrip("/").endswith("/metrics"):
                found.append((node_name(raw, src.strip_port), _parse_duration(t.get("scrapeInterval", "")), t.get("scrapeUrl")))
        nodes = sorted({f[0] for f in found})
        if len(nodes) != 1:
            raise DidactError(
                f"Prometheus {url}",
                f"{'no target scrapes' if not nodes else f'several targets ({nodes}) scrape'} this host "
                f"({sorted(local)[:4]}…) with a '{src.node_label}' label",
                "pass --node-name with the name Prometheus gives this node",
            )  # fmt: skip
        return nodes[0], max((f[1] for f in found if f[0] == nodes[0]), default=0.0)
    finally:
        src.close()


def _recent_points(settings: Settings, url: str, node: str, window_s: int = 60) -> tuple[int, list[str]]:
    """Most node_cpu_seconds_total points in the last ``window_s`` of any CPU series that
    maps to ``node``, and the raw label values seen."""
    src = _source(settings, url)
    try:
        label = src.node_label
        value = regex_union([node]) + ("(:[0-9]+)?" if src.strip_port else "")
        data = src.query_json(
            "/api/v1/query",
            {"query": f'count_over_time(node_cpu_seconds_total{{mode="idle",{label}=~{promql_str(value)}}}[{window_s}s])'},
        )
        best, raws = 0, []
        for r in (data or {}).get("result", []):
            raw = r["metric"].get(label, "")
            if node_name(raw, src.strip_port) == node:
                raws.append(raw)
                best = max(best, int(float(r["value"][1])))
        return best, sorted(set(raws))
    finally:
        src.close()


def wait_for_scrapes(settings: Settings, url: str, node: str, points: int = 3, timeout_s: float = 60.0) -> None:
    """Wait until Prometheus holds ``points`` recent CPU samples of ``node``."""
    deadline = time.monotonic() + timeout_s
    got = 0
    while time.monotonic() < deadline:
        got, _ = _recent_points(settings, url, node)
        if got >= points:
            return
        time.sleep(0.25)
    raise DidactError(
        f"Prometheus {url}",
        f"has {got} node_cpu_seconds_total samples of node {node!r} in the last minute (wanted {points})",
        "check the node exporter is scraped and the node name (--node-name) matches its instance label",
    )


# -- labels CSV ----------------------------------------------------------------------------

