"""The HTTP client of a Prometheus server: one session, auth, TLS, timeouts, retries.

:class:`PrometheusClient` is what every didact reader of Prometheus shares (the nightly
:class:`~didact_core.ingest.prometheus.source.PrometheusSource`, the live feed of
``didact serve``, the power reader, the testbed).  It speaks three APIs:

- ``fetch(matchers, start_ms, end_ms)``: the raw samples of matching series, through
  remote read (``POST /api/v1/read``, streamed XOR chunks or snappy SAMPLES) or the JSON
  query API with range selectors; ``api="auto"`` uses remote read and falls back to the
  query API once if the server answers remote read with 404/405/415/501 or a
  non-protobuf body;
- ``instant(query, at)``: an instant vector (``/api/v1/query``);
- ``series(match, start_ms, end_ms)``: the label sets of matching series (``/api/v1/series``).

Errors are :class:`SourceUnavailableError` naming the URL (credentials redacted), the
problem and the fix: unreachable, timed out, HTTP status (with Prometheus' own error
text), auth refused, an answer of the wrong shape.  Transient failures (connection
refused/reset, timeouts, 429, 5xx) are retried ``retries`` times with exponential
backoff and jitter.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import cramjam
import requests

from didact_core.errors import DidactError, SourceUnavailableError
from didact_core.ingest.prometheus.wire import (
    Series,
    answer_data,
    decode_matrix_json,
    decode_read_response,
    drop_stale,
    encode_read_request,
    selector,
)
from didact_core.ingest.prometheus.xorchunks import decode_chunked_stream

log = logging.getLogger(__name__)

API_CHOICES = ("auto", "remote_read", "query")


def redact(url: str) -> str:
    """The URL without user:password."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        parts = parts._replace(netloc=netloc)
    return urlunsplit(parts)


def is_loopback(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    return host in ("localhost", "::1") or host.startswith("127.")


def secret_value(value) -> str | None:
    """The text of a settings secret (pydantic ``SecretStr`` or plain str); None if empty."""
    if value is None:
        return None
    text = value.get_secret_value() if hasattr(value, "get_secret_value") else str(value)
    return text or None


class _Retryable(Exception):
    def __init__(self, problem: str):
        super().__init__(problem)
        self.problem = problem


class _Unsupported(Exception):
    """The server does not offer remote read."""


@dataclass
class Stats:
    """Requests, retries and bytes received so far (thread-safe counters)."""

    requests: int = 0
    retries: int = 0
    bytes: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, requests_=0, retries=0, nbytes=0):
        with self.lock:
            self.requests += requests_
            self.retries += retries
            self.bytes += nbytes


def _error_text(r: requests.Response, body: bytes) -> str:
    try:
        doc = json.loads(body)
        if isinstance(doc, dict) and doc.get("error"):
            return f"{doc.get('errorType', 'error')}: {doc['error']}"[:300]
    except ValueError:
        pass
    return body[:300].decode("utf-8", "replace").strip() or r.reason or ""


class PrometheusClient:
    """One Prometheus server, over HTTP.

    - ``api``: ``"auto"`` | ``"remote_read"`` | ``"query"`` (how :meth:`fetch` reads samples).
    - ``username``/``password`` (basic auth) or ``bearer_token``; ``tls_verify``: bool or a
      CA bundle path.
    - ``timeout_s`` (per read), ``connect_timeout_s``, ``retries``, ``backoff_s``,
      ``max_backoff_s``: HTTP robustness.
    - ``concurrency``: requests its callers keep in flight (sizes the connection pool;
      default 4, on a loopback URL at most the CPU count, since the server competes for
      the same cores).
    - ``compression``: gzip for the JSON API (default: off for loopback URLs).
    - ``remote_read_chunks``: ask remote read for raw XOR chunks (default) rather than
      decoded SAMPLES.
    """

    def __init__(
        self,
        url: str = "http://127.0.0.1:9090",
        *,
        api: str = "auto",
        username: str | None = None,
        password: str | None = None,
        bearer_token: str | None = None,
        tls_verify: bool | str = True,
        timeout_s: float = 60.0,
        connect_timeout_s: float = 5.0,
        retries: int = 4,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
        concurrency: int | None = None,
        compression: bool | None = None,
        remote_read_chunks: bool = True,
        session: requests.Session | None = None,
    ):
        if api not in API_CHOICES:
            raise DidactError(
                f"Prometheus api={api!r}",
                "is not a known API",
                f"use one of {', '.join(API_CHOICES)} (DIDACT_PROMETHEUS_API)",
            )
        if not url.startswith(("http://", "https://")):
            raise DidactError(
                f"Prometheus URL {url!r}",
                "is not an http(s) URL",
                "set DIDACT_PROMETHEUS_URL like http://prometheus:9090",
            )
        if concurrency is None:  # the server shares our cores when it is local
            concurrency = min(4, os.cpu_count() or 2) if is_loopback(url) else 4
        if concurrency < 1 or retries < 0:
            raise DidactError(
                f"Prometheus client concurrency={concurrency}, retries={retries}",
                "concurrency must be ≥ 1 and retries ≥ 0",
                "fix DIDACT_PROMETHEUS_CONCURRENCY / DIDACT_PROMETHEUS_RETRIES",
            )
        self.url = url.rstrip("/")
        self.api = api
        self.timeout = (connect_timeout_s, timeout_s)
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.concurrency = concurrency
        self.compression = (not is_loopback(url)) if compression is None else compression
        self.remote_read_chunks = remote_read_chunks
        self.auth_kind = "bearer" if bearer_token else ("basic" if username else "none")
        self.session = session or requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=2, pool_maxsize=max(concurrency, 4) + 2)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.verify = tls_verify
        if bearer_token:
            self.session.headers["Authorization"] = f"Bearer {bearer_token}"
        elif username:
            self.session.auth = (username, password or "")
        self.stats = Stats()
        self._remote_read_ok: bool | None = None if api == "auto" else (api == "remote_read")

    @classmethod
    def from_settings(cls, settings, **overrides) -> PrometheusClient:
        """The client of ``settings``' Prometheus (``overrides`` that are not None win)."""
        return cls(**{**client_kwargs(settings), **{k: v for k, v in overrides.items() if v is not None}})

    @property
    def resolved_api(self) -> str:
        """The API :meth:`fetch` uses (``auto`` until the first fetch has decided)."""
        if self._remote_read_ok is None:
            return self.api
        return "remote_read" if self._remote_read_ok else "query"

    def describe(self) -> dict:
        """Facts for metadata (no secrets)."""
        return {"url": redact(self.url), "api": self.resolved_api, "auth": self.auth_kind}

    def close(self) -> None:
        self.session.close()

    def what(self, path: str = "") -> str:
        """How errors name this server (and ``path`` on it)."""
        return f"Prometheus {redact(self.url)}{path}"

    # -- HTTP with retries -----------------------------------------------------------
    def post(self, path: str, data, headers: dict | None = None) -> requests.Response:
        """POST with retries on transient failures; raises SourceUnavailableError."""
        what = self.what(path)
        attempts = self.retries + 1
        problem = "no attempt made"
        for attempt in range(attempts):
            if attempt:
                delay = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1)) * random.uniform(
                    0.5, 1.0
                )
                log.warning("%s: %s; retry %d/%d in %.1fs", what, problem, attempt, self.retries, delay)
                self.stats.add(retries=1)
                time.sleep(delay)
            try:
                return self._post_once(path, data, headers)
            except _Retryable as e:
                problem = e.problem
        raise SourceUnavailableError(
            what,
            f"{problem} (after {attempts} attempt{'s' if attempts > 1 else ''})",
            "check that Prometheus is running and reachable at DIDACT_PROMETHEUS_URL "
            "(or raise DIDACT_PROMETHEUS_TIMEOUT_S / DIDACT_PROMETHEUS_RETRIES for a slow server)",
        )

    def _send(self, path: str, data, headers: dict | None) -> tuple[requests.Response, bytes]:
        """One POST and its whole body; transport failures become _Retryable (TLS: final)."""
        try:
            r = self.session.post(
                self.url + path, data=data, headers=headers, timeout=self.timeout, stream=True
            )
            return r, b"".join(r.iter_content(1 << 20))
        except requests.exceptions.SSLError as e:
            raise SourceUnavailableError(
                self.what(path),
                f"TLS failed ({e.__class__.__name__}: {str(e)[:200]})",
                "fix the certificate or set DIDACT_PROMETHEUS_TLS_VERIFY to a CA bundle "
                "(0 disables verification)",
            ) from None
        except requests.exceptions.ConnectTimeout:
            raise _Retryable(f"connection timed out after {self.timeout[0]:g}s") from None
        except requests.exceptions.ConnectionError as e:
            reason = str(e.args[0] if e.args else e)
            if "Read timed out" in reason:
                raise _Retryable(f"no answer within {self.timeout[1]:g}s") from None
            short = (
                "connection refused" if "refused" in reason.lower() else f"cannot connect ({reason[:160]})"
            )
            raise _Retryable(short) from None
        except requests.exceptions.Timeout:
            raise _Retryable(f"no answer within {self.timeout[1]:g}s") from None
        except requests.exceptions.ChunkedEncodingError as e:
            raise _Retryable(f"answer cut off ({str(e)[:120]})") from None

    def _post_once(self, path: str, data, headers: dict | None) -> requests.Response:
        r, body = self._send(path, data, headers)
        self.stats.add(requests_=1, nbytes=len(body))
        r._content = body
        if r.status_code == 200:
            return r
        detail = _error_text(r, body)
        if r.status_code in (429, 502, 503, 504) or r.status_code >= 500 and r.status_code != 501:
            raise _Retryable(f"HTTP {r.status_code}: {detail}")
        what = self.what(path)
        if r.status_code in (401, 403):
            raise SourceUnavailableError(
                what,
                f"HTTP {r.status_code} (authentication refused): {detail}",
                "set DIDACT_PROMETHEUS_USERNAME/_PASSWORD or DIDACT_PROMETHEUS_BEARER_TOKEN",
            )
        if path == "/api/v1/read" and r.status_code in (404, 405, 415, 501):
            raise _Unsupported(f"HTTP {r.status_code}")
        raise SourceUnavailableError(
            what,
            f"HTTP {r.status_code}: {detail}",
            "check the query and the server version (see the message above)",
        )

    # -- the JSON API ------------------------------------------------------------------
    def _json_headers(self) -> dict:
        return {"Accept-Encoding": "gzip" if self.compression else "identity"}

    def _bad_answer(self, path: str, params: dict, problem: str) -> SourceUnavailableError:
        query = params.get("query") or params.get("match[]")
        return SourceUnavailableError(
            self.what(path) + (f" query {query}" if query else ""),
            problem,
            "check DIDACT_PROMETHEUS_URL points at Prometheus itself (not a proxy's or another "
            "service's page) and the server logs",
        )

    def query_json(self, path: str, params: dict, result_type: str | None = None):
        """A small JSON API call (``/api/v1/query``, ``/api/v1/series``); returns ``data``,
        checked to have the shape of that API (``result_type``: also its result type)."""
        r = self.post(path, params, self._json_headers())
        try:
            doc = json.loads(r.content)
        except ValueError:
            raise self._bad_answer(path, params, f"answer is not JSON: {r.content[:120]!r}") from None
        if isinstance(doc, dict) and doc.get("status") == "error":
            raise SourceUnavailableError(
                self.what(path),
                f"query failed: {doc.get('errorType')}: {doc.get('error')}",
                "check the server logs",
            )
        try:
            if path.endswith("/series"):
                return answer_data(doc, "labels")
            if path.endswith(("/query", "/query_range")):
                data = doc.get("data") if isinstance(doc, dict) else None
                kind = result_type or (data.get("resultType") if isinstance(data, dict) else None)
                return answer_data(doc, kind if isinstance(kind, str) else "vector")
            return answer_data(doc, result_type)
        except (ValueError, AttributeError) as e:
            raise self._bad_answer(path, params, f"answer has the wrong shape: {e}") from None

    def instant(self, query: str, at: float) -> list[dict]:
        """The instant vector of ``query`` at ``at`` (epoch s): ``[{"metric", "value"}]``."""
        params = {"query": query, "time": f"{at:.3f}"}
        result = self.query_json("/api/v1/query", params, "vector")["result"]
        for item in result:
            value = item.get("value")
            if not (isinstance(value, list) and len(value) == 2):
                raise self._bad_answer(
                    "/api/v1/query", params, f"a sample is not [time, value]: {str(item)[:80]}"
                )
        return result

    def series(self, match: str, start_ms: int, end_ms: int) -> list[dict]:
        """Label sets of the series matching ``match`` with samples in [start, end]."""
        params = {"match[]": match, "start": f"{start_ms / 1000:.3f}", "end": f"{end_ms / 1000:.3f}"}
        return self.query_json("/api/v1/series", params)

    # -- raw samples -------------------------------------------------------------------
    def fetch(self, matchers: Sequence[tuple[str, str, str]], start_ms: int, end_ms: int) -> list[Series]:
        """Raw samples of all series matching ``matchers`` with start_ms ≤ ts ≤ end_ms."""
        if self._remote_read_ok is not False:
            try:
                out = self._fetch_remote_read(matchers, start_ms, end_ms)
                self._remote_read_ok = True
                return out
            except _Unsupported as e:
                if self.api == "remote_read":
                    raise SourceUnavailableError(
                        self.what("/api/v1/read"),
                        f"remote read is not offered ({e})",
                        "use DIDACT_PROMETHEUS_API=query",
                    ) from None
                log.warning(
                    "%s: remote read not offered (%s); using the JSON query API", self.what("/api/v1/read"), e
                )
                self._remote_read_ok = False
        return self._fetch_query(matchers, start_ms, end_ms)

    def _fetch_remote_read(self, matchers, start_ms: int, end_ms: int) -> list[Series]:
        req = encode_read_request(start_ms, end_ms, matchers, chunks=self.remote_read_chunks)
        r = self.post(
            "/api/v1/read",
            bytes(cramjam.snappy.compress_raw(req)),
            {
                "Content-Type": "application/x-protobuf",
                "Content-Encoding": "snappy",
                "Accept-Encoding": "snappy",
                "X-Prometheus-Remote-Read-Version": "0.1.0",
            },
        )
        ctype = r.headers.get("Content-Type", "")
        if "protobuf" not in ctype:
            raise _Unsupported(f"answer is {ctype or 'untyped'}, not protobuf")
        try:
            if "x-streamed-protobuf" in ctype:
                return decode_chunked_stream(r.content, start_ms, end_ms)
            raw = bytes(cramjam.snappy.decompress_raw(r.content))
            return drop_stale(decode_read_response(raw))
        except (ValueError, IndexError, cramjam.DecompressionError) as e:
            raise SourceUnavailableError(
                self.what("/api/v1/read"),
                f"unreadable remote-read answer ({e})",
                "use DIDACT_PROMETHEUS_API=query and report the server version",
            ) from None

    def _fetch_query(self, matchers, start_ms: int, end_ms: int) -> list[Series]:
        # [start, end] inclusive via a range selector evaluated at end: Prometheus 2.x
        # includes the left edge, 3.x excludes it; ask for 1 ms more and filter.
        rng = end_ms - start_ms + 1
        params = {"query": selector(None, matchers) + f"[{rng}ms]", "time": f"{end_ms / 1000:.3f}"}
        r = self.post("/api/v1/query", params, self._json_headers())
        try:
            if b'"status":"success"' not in r.content[:100]:
                answer_data(json.loads(r.content), "matrix")  # says what is wrong
            series = decode_matrix_json(r.content)
        except ValueError as e:
            doc = _json_or_none(r.content)
            if isinstance(doc, dict) and doc.get("status") == "error":
                raise SourceUnavailableError(
                    self.what("/api/v1/query"),
                    f"query failed: {doc.get('errorType')}: {doc.get('error')}",
                    "check the server logs",
                ) from None
            problem = (
                f"answer is not JSON: {r.content[:120]!r}"
                if doc is None
                else f"answer has the wrong shape: {e}"
            )
            raise self._bad_answer("/api/v1/query", params, problem) from None
        for s in series:
            keep = s.ts >= start_ms
            if not keep.all():
                s.ts, s.values = s.ts[keep], s.values[keep]
        return series


def _json_or_none(body: bytes):
    try:
        return json.loads(body)
    except ValueError:
        return None


def client_kwargs(settings) -> dict:
    """:class:`PrometheusClient` arguments from a :class:`~didact_core.config.Settings`
    (its ``prometheus_*`` fields; unset numbers keep the client's defaults)."""
    kw: dict = {"url": settings.prometheus_url}
    username = settings.prometheus_username or None
    if username:
        kw["username"] = username
        kw["password"] = secret_value(settings.prometheus_password) or ""
    token = secret_value(settings.prometheus_bearer_token)
    if token:
        kw["bearer_token"] = token
    kw["tls_verify"] = settings.prometheus_tls_verify
    kw["api"] = settings.prometheus_api or "auto"
    for key in ("timeout_s", "retries", "concurrency"):
        value = getattr(settings, f"prometheus_{key}")
        if value is not None:
            kw[key] = value
    return kw


__all__ = [
    "API_CHOICES",
    "PrometheusClient",
    "Stats",
    "client_kwargs",
    "is_loopback",
    "redact",
    "secret_value",
]
