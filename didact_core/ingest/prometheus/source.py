"""Read one UTC day of node exporter metrics from a Prometheus server.

:class:`PrometheusSource` turns ``node_cpu_seconds_total{<node label>, cpu, mode}`` into
the wide raw CPU frame of :mod:`didact_core.schema` (one row per ts, node, cpu; one
column per mode), rows ordered by (node, cpu, ts), and node power metrics into
``RawBlock.power``.  It reads the **raw samples** (every scrape, its own timestamp), not
a step-aligned resampling, so what comes back is exactly what Prometheus stored.

Which API
---------
``api="remote_read"`` (default, via ``"auto"``): ``POST /api/v1/read``, the remote-read
protobuf API, asking for ``STREAMED_XOR_CHUNKS``: Prometheus sends its stored Gorilla/XOR
chunks without decoding them, and they are decoded here with numpy, all chunks of an
answer at once (:func:`decode_xor_chunks`).  Servers without streaming answer
``SAMPLES`` (snappy-compressed ``ReadResponse``), decoded straight from the protobuf bytes
(a run of equal-length ``Sample`` messages is one strided view).  Neither path makes a
Python object per sample.  Measured on a 2-core box (``bench/README_prometheus.md``):
chunks cost Prometheus ~15× less CPU than SAMPLES and ~2× less data, and the day
arrives several times faster than through the JSON API.  Stale markers are dropped.

``api="query"``: ``POST /api/v1/query`` with range-vector selectors
(``metric{...}[<window>]``), parsed by a byte-level JSON scanner (numpy ``fromstring``
over the values, validated against the sample count, with a stdlib ``json`` fallback;
orjson was measured and is no faster here: the cost is Python objects, not parsing).
Works with anything that speaks the Prometheus HTTP API (Thanos, VictoriaMetrics, ...).
``"auto"`` uses remote read and falls back to ``"query"`` once if the server answers
remote read with 404/405/415/501 or a non-protobuf body.

Chunking: a day is fetched in requests of at most ``max_samples_per_query`` samples
and ``max_points_per_series`` (11,000, Prometheus' points-per-series limit) points per
series, split first by time window, then by node subsets, ``concurrency`` requests in
flight; the next block of nodes is prefetched while the caller works on the current one.

Nodes
-----
The node of a series is the value of ``node_label`` (default ``instance``); with
``strip_port`` (default) a trailing ``:port`` is removed, so ``host:9100`` → ``host``.
The nodes *expected* on a day are the configured ``nodes`` list if given, otherwise
every node that has CPU series on the previous day or on the day itself (the series
API, no samples are decoded).  Expected nodes with no samples in the day are listed in
the first block's ``missing_nodes`` (no exception); a day with no samples at all raises
:class:`SourceUnavailableError`.

Power
-----
When present, per node and scrape: ``rapl`` = Σ d(joules)/dt of the
``node_rapl_{package,dram}_joules_total`` counters (a negative step is a wrap or reset
and gives no watts for that interval, unless ``rapl_max_energy_j`` gives the wrap
range); ``hwmon`` = Σ over hwmon power sensors of ``node_hwmon_power_*watt`` (one
element per sensor: average, else input, else plain); ``didact_power_watts{source}``
(what :mod:`didact_core.ingest.openmetrics` writes) keeps its ``source`` label.

Errors are :class:`SourceUnavailableError` naming the URL, the problem and the fix:
unreachable, timed out, HTTP status (with Prometheus' own error text), auth refused,
nothing for the day.  Transient failures (connection refused/reset, timeouts, 429,
5xx) are retried ``retries`` times with exponential backoff and jitter.
"""

from __future__ import annotations

import concurrent.futures as cf
import datetime as dt
import json
import logging
import os
import random
import re
import threading
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pandas as pd
import requests

from didact_core.errors import DataQualityError, DidactError, SourceUnavailableError
from didact_core.schema import CPU_MODES, NODE_COUNTERS, NODE_GAUGES, RAW_CPU_COLUMNS, RAW_POWER_COLUMNS, TS_DTYPE, empty_raw_cpu
from didact_core.ingest.base import RawBlock, TelemetrySource, day_bounds

log = logging.getLogger(__name__)

CPU_METRIC = "node_cpu_seconds_total"
RAPL_METRIC_RE = r"node_rapl_.*joules_total"
HWMON_METRIC_RE = r"node_hwmon_power_(average_|input_)?watt"
#: node exporter's node-level metrics → raw node_metrics columns (see schema.NODE_COUNTERS)
NODE_METRICS = {
    "node_context_switches_total": "ctxt",
    "node_intr_total": "intr",
    "node_disk_io_time_seconds_total": "disk_io_time",
    "node_disk_read_bytes_total": "disk_read_bytes",
    "node_disk_written_bytes_total": "disk_written_bytes",
    "node_vmstat_pgfault": "pgfault",
    "node_network_receive_bytes_total": "net_rx_bytes",
    "node_network_transmit_bytes_total": "net_tx_bytes",
    "node_memory_MemTotal_bytes": "mem_total",
    "node_memory_MemAvailable_bytes": "mem_available",
    "node_load1": "load1",
}
_VIRTUAL_NET = re.compile(r"^(lo|veth.*|docker.*|br-.*|virbr.*)$")
DIDACT_POWER_METRIC = "didact_power_watts"
#: RAPL domains summed into a node's ``rapl`` watts (core/uncore are inside package)
RAPL_DOMAINS = ("package", "dram")

API_CHOICES = ("auto", "remote_read", "query")
DAY_MS = 86_400_000

# -- small parsing helpers ----------------------------------------------------------


def _env_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise DidactError(f"environment variable {name}={raw!r}", "is not a boolean", f"set {name} to 1 or 0")


def _env_num(env: Mapping[str, str], name: str, typ, default):
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return typ(raw)
    except ValueError:
        raise DidactError(
            f"environment variable {name}={raw!r}",
            f"is not a valid {typ.__name__}",
            f"set {name} to a {typ.__name__} or unset it",
        ) from None


def _redact(url: str) -> str:
    """The URL without user:password."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        parts = parts._replace(netloc=netloc)
    return urlunsplit(parts)


def _is_loopback(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    return host in ("localhost", "::1") or host.startswith("127.")


_PORT_RE = re.compile(r"^(.*?)(?::\d+)?$")


def regex_union(values: Sequence[str]) -> str:
    """An RE2 regex matching exactly one of ``values`` (Prometheus anchors it)."""
    return "|".join(re.escape(v) for v in values)


def _promql_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _selector(metric: str | None, matchers: Sequence[tuple[str, str, str]]) -> str:
    """PromQL selector from (name, op, value) matchers; ``metric`` None means use matchers only."""
    body = ",".join(f"{n}{op}{_promql_str(v)}" for n, op, v in matchers)
    return f"{metric or ''}{{{body}}}"


# -- protobuf (remote read) -----------------------------------------------------------


def _pb_varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _pb_bytes(num: int, data: bytes) -> bytes:
    return _pb_varint((num << 3) | 2) + _pb_varint(len(data)) + data


def _pb_uint(num: int, value: int) -> bytes:
    return _pb_varint(num << 3) + _pb_varint(value)


_MATCH_TYPES = {"=": 0, "!=": 1, "=~": 2, "!~": 3}


def encode_read_request(
    start_ms: int, end_ms: int, matchers: Sequence[tuple[str, str, str]], chunks: bool = False
) -> bytes:
    """A prometheus.ReadRequest with one Query [start_ms, end_ms] (inclusive).

    ``chunks`` asks for STREAMED_XOR_CHUNKS (servers that lack it answer SAMPLES)."""
    q = _pb_uint(1, start_ms) + _pb_uint(2, end_ms)
    for name, op, value in matchers:
        m = _pb_uint(1, _MATCH_TYPES[op]) + _pb_bytes(2, name.encode()) + _pb_bytes(3, value.encode())
        q += _pb_bytes(3, m)
    req = _pb_bytes(1, q)
    if chunks:
        req += _pb_uint(2, 1) + _pb_uint(2, 0)  # accepted_response_types: STREAMED_XOR_CHUNKS, SAMPLES
    return req


def _read_varint(buf: bytes, p: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        b = buf[p]
        p += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, p
        shift += 7
        if shift > 63:
            raise ValueError(f"varint too long at byte {p}")


def _read_label(raw: bytes, p: int, labels: dict) -> int:
    """Decode one ``Label {name=1, value=2}`` field starting at its tag; returns the next offset."""
    ln, p = _read_varint(raw, p + 1)
    end = p + ln
    name = value = ""
    while p < end:
        t = raw[p]
        ln2, p2 = _read_varint(raw, p + 1)
        text = raw[p2 : p2 + ln2].decode("utf-8")
        if t == 0x0A:
            name = text
        elif t == 0x12:
            value = text
        p = p2 + ln2
    labels[name] = value
    return p


def _skip_field(buf: bytes, p: int) -> int:
    tag, p = _read_varint(buf, p)
    wt = tag & 7
    if wt == 0:
        _, p = _read_varint(buf, p)
    elif wt == 1:
        p += 8
    elif wt == 2:
        n, p = _read_varint(buf, p)
        p += n
    elif wt == 5:
        p += 4
    else:
        raise ValueError(f"unsupported wire type {wt} at byte {p}")
    return p


def _sample_layout(buf: bytes, p: int, end: int) -> list[tuple[str, int, int]]:
    """Fields of one Sample message body [p, end): (kind, offset from p, length)."""
    layout = []
    q = p
    while q < end:
        tag = buf[q]
        if tag == 0x09:  # double value = 1
            layout.append(("v", q + 1 - p, 8))
            q += 9
        elif tag == 0x10:  # int64 timestamp = 2
            _, q2 = _read_varint(buf, q + 1)
            layout.append(("t", q + 1 - p, q2 - q - 1))
            q = q2
        else:
            raise ValueError(f"unexpected field tag 0x{tag:02x} in a Sample at byte {q}")
    if q != end:
        raise ValueError(f"Sample overruns its length at byte {q}")
    return layout


def _decode_samples(arr: np.ndarray, buf: bytes, p: int, end: int, ts_out: list, v_out: list) -> int:
    """Decode consecutive ``samples`` (field 2) records of a TimeSeries starting at ``p``.

    Records of equal length and layout form a run decoded as one strided (n, stride)
    view; a run ends at the first record whose header bytes differ (checked exactly, so
    the boundaries are the true ones).  Returns the position after the last record.
    """
    window = 256
    while p < end and buf[p] == 0x12:
        length = buf[p + 1]
        if length >= 0x80:  # a Sample is never this long; decode the odd one generically
            ln, body = _read_varint(buf, p + 1)
            ts_out.append(np.array([0], dtype=np.int64))
            v_out.append(np.array([0.0]))
            for kind, off, n in _sample_layout(buf, body, body + ln):
                if kind == "v":
                    v_out[-1][0] = np.frombuffer(buf, dtype="<f8", count=1, offset=body + off)[0]
                else:
                    ts_out[-1][0] = _read_varint(buf, body + off)[0]
            p = body + ln
            continue
        stride = length + 2
        layout = _sample_layout(buf, p + 2, p + stride)
        n_max = min(window, (end - p) // stride)
        region = arr[p : p + n_max * stride].reshape(n_max, stride)
        ok = (region[:, 0] == 0x12) & (region[:, 1] == length)
        for kind, off, n in layout:
            col = off + 2
            ok &= region[:, col - 1] == (0x09 if kind == "v" else 0x10)
            if kind == "t":
                if n > 1:
                    ok &= (region[:, col : col + n - 1] >= 0x80).all(axis=1)
                ok &= region[:, col + n - 1] < 0x80
        bad = np.flatnonzero(~ok)
        n_ok = int(bad[0]) if len(bad) else n_max
        run = region[:n_ok]
        ts = np.zeros(n_ok, dtype=np.int64)
        vals = np.zeros(n_ok, dtype=np.float64)
        for kind, off, n in layout:
            col = off + 2
            if kind == "v":
                vals = np.ascontiguousarray(run[:, col : col + 8]).view("<f8").ravel()
            else:
                ts = (run[:, col] & 0x7F).astype(np.int64)
                for k in range(1, min(n, 9)):
                    ts |= (run[:, col + k] & 0x7F).astype(np.int64) << (7 * k)
                if n == 10:  # negative int64: two's complement wrapped; rare, fix exactly
                    ts = np.array(
                        [_read_varint(bytes(r[col : col + n]), 0)[0] for r in run], dtype=np.uint64
                    ).view(np.int64)
        ts_out.append(ts)
        v_out.append(vals)
        p += n_ok * stride
        window = min(window * 4, 1 << 16) if n_ok == n_max else 256
    return p


@dataclass
class Series:
    """One time series: labels, timestamps (int64 ms) and float64 values."""

    labels: dict
    ts: np.ndarray
    values: np.ndarray


def decode_read_response(raw: bytes) -> list[Series]:
    """Decode an (uncompressed) prometheus.ReadResponse of SAMPLES into :class:`Series`."""
    arr = np.frombuffer(raw, dtype=np.uint8)
    out: list[Series] = []
    p, n = 0, len(raw)
    while p < n:
        if raw[p] != 0x0A:  # results = 1
            p = _skip_field(raw, p)
            continue
        ln, p = _read_varint(raw, p + 1)
        q_end = p + ln
        while p < q_end:
            if raw[p] != 0x0A:  # timeseries = 1
                p = _skip_field(raw, p)
                continue
            ln, p = _read_varint(raw, p + 1)
            s_end = p + ln
            labels: dict[str, str] = {}
            ts_parts: list[np.ndarray] = []
            v_parts: list[np.ndarray] = []
            while p < s_end:
                tag = raw[p]
                if tag == 0x0A:  # labels = 1
                    p = _read_label(raw, p, labels)
                elif tag == 0x12:  # samples = 2
                    p = _decode_samples(arr, raw, p, s_end, ts_parts, v_parts)
                else:
                    p = _skip_field(raw, p)
            if len(ts_parts) == 1:
                ts, vals = ts_parts[0], v_parts[0]
            elif ts_parts:
                ts, vals = np.concatenate(ts_parts), np.concatenate(v_parts)
            else:
                ts, vals = np.empty(0, np.int64), np.empty(0, np.float64)
            out.append(Series(labels, ts, vals))
    return out


def _drop_stale(series: list[Series]) -> list[Series]:
    """Remove Prometheus staleness markers (not samples: a series ended there)."""
    for s in series:
        stale = s.values.view(np.uint64) == STALE_NAN_BITS
        if stale.any():
            s.ts, s.values = s.ts[~stale], s.values[~stale]
    return series


# -- remote read, STREAMED_XOR_CHUNKS ----------------------------------------------------
#
# Prometheus sends its stored Gorilla/XOR chunks as they are (no decoding, ~8× less
# server CPU than SAMPLES, ~3× fewer bytes).  They are decoded here with numpy, all chunks
# of a response at once: step k decodes the k-th sample of every chunk that has one
# (chunks hold ≤ 120 samples), reading each chunk's bits through a 128-bit big-endian
# window gathered at its bit position.  The format is tsdb/chunkenc/xor.go's: a uint16
# sample count; t0 as a zigzag varint and v0 as 64 raw bits; t1 - t0 as a uvarint; then
# per sample a delta-of-delta (0 | 10+14 bits | 110+17 | 1110+20 | 1111+64) and the XOR of
# the value bits with the previous one (0 | 10 + meaningful bits | 11 + 5 bits leading
# zeros + 6 bits length + meaningful bits).

_U = np.uint64
_DOD_PREFIX = np.array([1] * 8 + [2] * 4 + [3] * 2 + [4, 4], dtype=np.uint64)  # by the top 4 bits
_DOD_BITS = np.array([0] * 8 + [14] * 4 + [17] * 2 + [20, 64], dtype=np.uint64)
#: Prometheus' staleness marker (a NaN payload it writes when a series disappears)
STALE_NAN_BITS = 0x7FF0000000000002


def _top64(hi: np.ndarray, lo: np.ndarray, s: np.ndarray) -> np.ndarray:
    """64 bits starting ``s`` (0..63) bits into the 128-bit window (hi, lo)."""
    return (hi << s) | ((lo >> _U(1)) >> (_U(63) - s))


def _varints_at(b: np.ndarray, pos: np.ndarray, signed: bool) -> tuple[np.ndarray, np.ndarray]:
    """(u)varints starting at byte positions ``pos`` → (values int64, positions after)."""
    val = np.zeros(len(pos), dtype=np.uint64)
    cont = np.ones(len(pos), dtype=bool)
    p = pos.copy()
    for i in range(10):
        byte = b[p].astype(np.uint64)
        val |= np.where(cont, (byte & _U(0x7F)) << _U(7 * i), _U(0))
        nxt = cont & (byte >= 0x80)
        p = np.where(cont, p + 1, p)
        cont = nxt
        if not cont.any():
            break
    if signed:
        v = (val >> _U(1)).astype(np.int64)
        return np.where((val & _U(1)) != 0, ~v, v), p
    return val.astype(np.int64), p


def _xor_value(hi, lo, s, vb, leading, trailing) -> np.ndarray:
    """Apply one XOR value record at window offset ``s`` (in place); returns bits used."""
    w = _top64(hi, lo, s)
    c0 = (w >> _U(63)) != 0
    new = c0 & (((w >> _U(62)) & _U(1)) != 0)
    newlead = (w >> _U(57)) & _U(0x1F)
    newsig = (w >> _U(51)) & _U(0x3F)
    newsig[newsig == 0] = 64  # 0 encodes 64 meaningful bits
    np.copyto(leading, newlead, where=new)
    np.copyto(trailing, _U(64) - newlead - newsig, where=new)
    sig = _U(64) - leading - trailing
    hdr = np.where(new, _U(13), _U(2))
    bits = (_top64(hi, lo, s + hdr) >> (_U(64) - sig)) << trailing
    vb ^= np.where(c0, bits, _U(0))
    return np.where(c0, hdr + sig, _U(1))


def decode_xor_chunks(buf: bytes, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode the XOR chunks whose bytes begin at offsets ``starts`` of ``buf``.

    Returns ``(ts_ms, values, counts)``: chunk i's samples are at
    ``[sum(counts[:i]), sum(counts[:i+1]))`` of ``ts_ms``/``values``.
    """
    pad = np.zeros(len(buf) + 32, dtype=np.uint8)
    pad[: len(buf)] = np.frombuffer(buf, dtype=np.uint8)
    # every byte offset seen as a big-endian uint64 (a strided view, no copy)
    view = np.ndarray(shape=(len(buf) + 16,), dtype=">u8", buffer=pad, offset=0, strides=(1,))

    def window(bitpos):
        byte = bitpos >> 3
        return view[byte].astype(_U), view[byte + 8].astype(_U), (bitpos & 7).astype(_U)

    starts = np.asarray(starts, dtype=np.int64)
    counts = (pad[starts].astype(np.int64) << 8) | pad[starts + 1].astype(np.int64)
    offs = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offs[1:])
    ts_out = np.empty(int(offs[-1]), dtype=np.int64)
    vb_out = np.empty(int(offs[-1]), dtype=np.uint64)
    order = np.argsort(-counts, kind="stable")  # longest first: step k works on a prefix
    cnt = counts[order]
    first = offs[:-1][order]
    m = int(np.count_nonzero(cnt > 0))
    if m == 0:
        return ts_out, vb_out.view(np.float64), counts
    t, p = _varints_at(pad, starts[order][:m] + 2, signed=True)
    vb = view[p].astype(_U)
    ts_out[first[:m]] = t
    vb_out[first[:m]] = vb
    bitpos = (p + 8) * 8
    tdelta = np.zeros(m, dtype=np.int64)
    leading = np.zeros(m, dtype=_U)
    trailing = np.zeros(m, dtype=_U)
    neg_cnt = -cnt[:m]
    for k in range(1, int(cnt[0])):
        n = int(np.searchsorted(neg_cnt, -k, side="left"))  # chunks with more than k samples
        t, bitpos, tdelta = t[:n], bitpos[:n], tdelta[:n]
        vb, leading, trailing = vb[:n].copy(), leading[:n].copy(), trailing[:n].copy()
        if k == 1:
            tdelta, pb = _varints_at(pad, bitpos >> 3, signed=False)
            bitpos = pb * 8
            hi, lo, s = window(bitpos)
        else:
            hi, lo, s = window(bitpos)
            w = _top64(hi, lo, s)
            top4 = (w >> _U(60)).astype(np.intp)
            plen, size = _DOD_PREFIX[top4], _DOD_BITS[top4]
            small = size < _U(64)
            sz = np.where(small, size, _U(0))
            sz1 = np.maximum(sz, _U(1))
            raw = np.where(sz > 0, (w << plen) >> (_U(64) - sz1), _U(0))
            negative = (sz > 0) & (raw > (_U(1) << (sz1 - _U(1))))
            dod = raw.astype(np.int64) - np.where(negative, (_U(1) << sz).astype(np.int64), 0)
            s = s + plen + sz
            big = np.flatnonzero(~small)
            if len(big):  # 64-bit delta-of-delta: rare, read it and restart the window after it
                bh, bl, bs = window(bitpos[big] + 4)
                dod[big] = _top64(bh, bl, bs).astype(np.int64)
                after = bitpos[big] + 68
                nh, nl, ns = window(after)
                hi, lo, bitpos = hi.copy(), lo.copy(), bitpos.copy()
                hi[big], lo[big], s[big] = nh, nl, ns
                bitpos[big] = after - ns.astype(np.int64)
            tdelta = tdelta + dod
        t = t + tdelta
        used = _xor_value(hi, lo, s, vb, leading, trailing)
        bitpos = (bitpos - (bitpos & 7)) + (s + used).astype(np.int64)
        pos = first[:n] + k
        ts_out[pos] = t
        vb_out[pos] = vb
    return ts_out, vb_out.view(np.float64), counts


def decode_chunked_stream(raw: bytes, start_ms: int, end_ms: int) -> list[Series]:
    """Decode a STREAMED_XOR_CHUNKS remote-read answer into :class:`Series` in [start, end].

    Frames are ``uvarint(size) crc32c(4) ChunkedReadResponse``; a series split over
    several ``ChunkedSeries`` (frames are ≤ 1 MB) is joined again.  Non-XOR chunks
    (native histograms) are skipped and counted in the returned list's ``skipped``.
    """
    labels_list: list[dict] = []
    starts: list[int] = []
    owner: list[int] = []
    last_key = None
    p, n = 0, len(raw)
    skipped = 0
    while p < n:
        size, p = _read_varint(raw, p)
        p += 4  # CRC32C (Castagnoli) of the message; TCP already checks the bytes
        f_end = p + size
        while p < f_end:
            if raw[p] != 0x0A:  # chunked_series = 1 (query_index = 2 skipped)
                p = _skip_field(raw, p)
                continue
            ln, p = _read_varint(raw, p + 1)
            s_end = p + ln
            labels: dict[str, str] = {}
            chunk_starts: list[int] = []
            while p < s_end:
                tag = raw[p]
                if tag == 0x0A:  # labels = 1
                    p = _read_label(raw, p, labels)
                elif tag == 0x12:  # Chunk {min_time_ms=1, max_time_ms=2, type=3, data=4}
                    ln, p = _read_varint(raw, p + 1)
                    c_end = p + ln
                    ctype, data = 0, None
                    while p < c_end:
                        t = raw[p]
                        if t == 0x18:
                            ctype, p = _read_varint(raw, p + 1)
                        elif t == 0x22:
                            ln2, p2 = _read_varint(raw, p + 1)
                            data = p2
                            p = p2 + ln2
                        else:
                            p = _skip_field(raw, p)
                    if ctype == 1 and data is not None:
                        chunk_starts.append(data)
                    else:
                        skipped += 1
                else:
                    p = _skip_field(raw, p)
            key = tuple(sorted(labels.items()))
            if key != last_key:
                labels_list.append(labels)
                last_key = key
            starts.extend(chunk_starts)
            owner.extend([len(labels_list) - 1] * len(chunk_starts))
    if skipped:
        log.warning("remote read: skipped %d non-XOR chunks (native histograms?)", skipped)
    if not starts:
        return [Series(lb, np.empty(0, np.int64), np.empty(0)) for lb in labels_list]
    ts, vals, counts = decode_xor_chunks(raw, np.array(starts, dtype=np.int64))
    # samples of series i: its chunks are consecutive in `owner`
    owner_arr = np.array(owner, dtype=np.int64)
    per_series = np.bincount(owner_arr, weights=counts, minlength=len(labels_list)).astype(np.int64)
    bounds = np.zeros(len(labels_list) + 1, dtype=np.int64)
    np.cumsum(per_series, out=bounds[1:])
    keep = (ts >= start_ms) & (ts <= end_ms) & (vals.view(np.uint64) != STALE_NAN_BITS)
    out = []
    for i, lb in enumerate(labels_list):
        a, b = bounds[i], bounds[i + 1]
        k = keep[a:b]
        if k.all():
            out.append(Series(lb, ts[a:b], vals[a:b]))
        else:
            out.append(Series(lb, ts[a:b][k], vals[a:b][k]))
    return out


# -- JSON (query API) -----------------------------------------------------------------

_STRIP = b'[]"}'


def decode_matrix_json(body: bytes) -> list[Series]:
    """Decode a ``resultType: matrix`` query answer into :class:`Series` (ts in ms).

    Fast path: split the body at ``{"metric":{`` and parse all ``values`` numbers with one
    ``numpy.fromstring``; it is used only if the number count matches, else stdlib json.
    """
    head = body[:200]
    if b'"status":"success"' not in head or b'"resultType":"matrix"' not in head:
        return _decode_matrix_slow(body)
    parts = body.split(b'{"metric":{')[1:]
    labels = []
    counts = []
    chunks = []
    for part in parts:
        lab, sep, vals = part.partition(b'},"values":')
        if not sep:
            return _decode_matrix_slow(body)
        labels.append(json.loads(b"{" + lab + b"}"))
        n = vals.count(b"],[") + 1 if vals.startswith(b"[[") else 0
        counts.append(n)
        chunks.append(vals.translate(None, _STRIP).strip(b","))
    text = b",".join(c for c in chunks if c)
    total = sum(counts)
    if total == 0:
        return [Series(lb, np.empty(0, np.int64), np.empty(0)) for lb in labels]
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("error")
            nums = np.fromstring(text, dtype=np.float64, sep=",")
    except (ValueError, DeprecationWarning):
        return _decode_matrix_slow(body)
    if nums.size != 2 * total:
        return _decode_matrix_slow(body)
    pairs = nums.reshape(-1, 2)
    ts_all = np.rint(pairs[:, 0] * 1000.0).astype(np.int64)
    v_all = np.ascontiguousarray(pairs[:, 1])
    out = []
    pos = 0
    for lb, n in zip(labels, counts):
        out.append(Series(lb, ts_all[pos : pos + n], v_all[pos : pos + n]))
        pos += n
    return out


def _decode_matrix_slow(body: bytes) -> list[Series]:
    doc = json.loads(body)
    data = doc.get("data") or {}
    if data.get("resultType") != "matrix":
        raise ValueError(f"expected a matrix result, got {data.get('resultType')!r}")
    out = []
    for s in data.get("result", []):
        vals = s.get("values", [])
        ts = np.rint(np.array([float(v[0]) for v in vals]) * 1000.0).astype(np.int64)
        v = np.array([float(v[1]) for v in vals], dtype=np.float64)
        out.append(Series(s.get("metric", {}), ts, v))
    return out


# -- HTTP ---------------------------------------------------------------------------------


class _Retryable(Exception):
    def __init__(self, problem: str):
        super().__init__(problem)
        self.problem = problem


class _Unsupported(Exception):
    """The server does not offer remote read."""


@dataclass
class _Stats:
    requests: int = 0
    retries: int = 0
    bytes: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, requests_=0, retries=0, nbytes=0):
        with self.lock:
            self.requests += requests_
            self.retries += retries
            self.bytes += nbytes


# -- the source -------------------------------------------------------------------------


class PrometheusSource(TelemetrySource):
    """Node exporter CPU counters (and power) of one UTC day from Prometheus.

    Parameters (all keyword after ``url``):

    - ``node_label``: label that names the node (``instance``); ``strip_port``: drop ``:port``.
    - ``nodes``: the expected node list (else: nodes seen the day before or on the day).
    - ``job``: restrict to series with this ``job`` label.
    - ``api``: ``"auto"`` | ``"remote_read"`` | ``"query"`` (see the module doc).
    - ``username``/``password`` (basic auth) or ``bearer_token``; ``tls_verify``: bool or a
      CA bundle path.
    - ``timeout_s`` (per read), ``connect_timeout_s``, ``retries``, ``backoff_s``,
      ``max_backoff_s``: HTTP robustness.
    - ``concurrency``: requests in flight (default 4; on a loopback URL at most the
      CPU count, since the server competes for the same cores); ``max_samples_per_query``,
      ``max_points_per_series``: chunking.
    - ``power``: also read power metrics; ``rapl_max_energy_j``: RAPL wrap range if known;
      ``hwmon_chips``: regex restricting the hwmon chips summed.
    - ``compression``: gzip for the JSON API (default: off for loopback URLs).
    - ``remote_read_chunks``: ask remote read for raw XOR chunks (default) rather than
      decoded SAMPLES.
    """

    name = "prometheus"

    def __init__(
        self,
        url: str = "http://127.0.0.1:9090",
        node_label: str = "instance",
        *,
        nodes: Sequence[str] | None = None,
        strip_port: bool = True,
        job: str | None = None,
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
        max_samples_per_query: int = 1_000_000,
        max_points_per_series: int = 11_000,
        power: bool = True,
        node_metrics: bool = True,
        rapl_max_energy_j: float | None = None,
        hwmon_chips: str | None = None,
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
            concurrency = min(4, os.cpu_count() or 2) if _is_loopback(url) else 4
        if concurrency < 1 or retries < 0 or max_samples_per_query < 1 or max_points_per_series < 1:
            raise DidactError(
                "Prometheus source limits",
                "concurrency, max_samples_per_query and max_points_per_series must be ≥ 1, retries ≥ 0",
            )
        self.url = url.rstrip("/")
        self.node_label = node_label
        self.expected_nodes = sorted(set(nodes)) if nodes else None
        self.strip_port = strip_port
        self.job = job
        self.api = api
        self.timeout = (connect_timeout_s, timeout_s)
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.concurrency = concurrency
        self.max_samples_per_query = max_samples_per_query
        self.max_points_per_series = max_points_per_series
        self.power = power
        self.node_metrics = node_metrics
        self.rapl_max_energy_j = rapl_max_energy_j
        self.hwmon_chips = re.compile(hwmon_chips) if hwmon_chips else None
        self.compression = (not _is_loopback(url)) if compression is None else compression
        self.remote_read_chunks = remote_read_chunks
        self._auth_kind = "bearer" if bearer_token else ("basic" if username else "none")
        self.session = session or requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=2, pool_maxsize=max(concurrency, 4) + 2)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.verify = tls_verify
        if bearer_token:
            self.session.headers["Authorization"] = f"Bearer {bearer_token}"
        elif username:
            self.session.auth = (username, password or "")
        self.stats = _Stats()
        self._remote_read_ok: bool | None = None if api == "auto" else (api == "remote_read")

    # -- construction from the environment -------------------------------------------
    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, settings=None, **overrides
    ) -> PrometheusSource:
        """Build from environment variables (``settings`` supplies URL and node label if given).

        ``DIDACT_PROMETHEUS_URL``, ``DIDACT_PROMETHEUS_NODE_LABEL``,
        ``DIDACT_PROMETHEUS_USERNAME`` + ``DIDACT_PROMETHEUS_PASSWORD`` (basic auth),
        ``DIDACT_PROMETHEUS_BEARER_TOKEN`` or ``DIDACT_PROMETHEUS_BEARER_TOKEN_FILE``,
        ``DIDACT_PROMETHEUS_TLS_VERIFY`` (1/0 or a CA bundle path),
        ``DIDACT_PROMETHEUS_NODES`` (comma list, or ``@/path`` to a file, one node a line),
        ``DIDACT_PROMETHEUS_JOB``, ``DIDACT_PROMETHEUS_STRIP_PORT`` (1/0),
        ``DIDACT_PROMETHEUS_API`` (auto/remote_read/query),
        ``DIDACT_PROMETHEUS_TIMEOUT_S``, ``DIDACT_PROMETHEUS_RETRIES``,
        ``DIDACT_PROMETHEUS_CONCURRENCY``, ``DIDACT_PROMETHEUS_MAX_SAMPLES_PER_QUERY``.
        """
        env = os.environ if environ is None else environ
        kw: dict = {}
        if settings is not None:
            kw["url"] = settings.prometheus_url
            kw["node_label"] = settings.prometheus_node_label
        # Settings already read these variables; without settings, read them here
        if settings is None and env.get("DIDACT_PROMETHEUS_URL"):
            kw["url"] = env["DIDACT_PROMETHEUS_URL"]
        if settings is None and env.get("DIDACT_PROMETHEUS_NODE_LABEL"):
            kw["node_label"] = env["DIDACT_PROMETHEUS_NODE_LABEL"]
        if env.get("DIDACT_PROMETHEUS_USERNAME"):
            kw["username"] = env["DIDACT_PROMETHEUS_USERNAME"]
            kw["password"] = env.get("DIDACT_PROMETHEUS_PASSWORD", "")
        token = env.get("DIDACT_PROMETHEUS_BEARER_TOKEN")
        token_file = env.get("DIDACT_PROMETHEUS_BEARER_TOKEN_FILE")
        if not token and token_file:
            try:
                token = Path(token_file).read_text().strip()
            except OSError as e:
                raise DidactError(
                    f"DIDACT_PROMETHEUS_BEARER_TOKEN_FILE={token_file}",
                    f"cannot be read ({e.strerror or e})",
                    "point it at a readable token file",
                ) from None
        if token:
            kw["bearer_token"] = token
        verify = env.get("DIDACT_PROMETHEUS_TLS_VERIFY")
        if verify:
            if verify.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                kw["tls_verify"] = _env_bool(env, "DIDACT_PROMETHEUS_TLS_VERIFY", True)
            elif Path(verify).exists():
                kw["tls_verify"] = verify
            else:
                raise DidactError(
                    f"DIDACT_PROMETHEUS_TLS_VERIFY={verify!r}",
                    "is neither a boolean nor an existing CA file",
                    "set it to 1, 0 or the path of a CA bundle",
                )
        nodes = env.get("DIDACT_PROMETHEUS_NODES")
        if nodes:
            if nodes.startswith("@"):
                try:
                    lines = Path(nodes[1:]).read_text().splitlines()
                except OSError as e:
                    raise DidactError(
                        f"DIDACT_PROMETHEUS_NODES={nodes}",
                        f"cannot be read ({e.strerror or e})",
                        "point it at a file with one node name a line",
                    ) from None
                kw["nodes"] = [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]
            else:
                kw["nodes"] = [n.strip() for n in nodes.split(",") if n.strip()]
        if env.get("DIDACT_PROMETHEUS_JOB"):
            kw["job"] = env["DIDACT_PROMETHEUS_JOB"]
        if env.get("DIDACT_PROMETHEUS_API"):
            kw["api"] = env["DIDACT_PROMETHEUS_API"]
        if "DIDACT_PROMETHEUS_STRIP_PORT" in env:
            kw["strip_port"] = _env_bool(env, "DIDACT_PROMETHEUS_STRIP_PORT", True)
        for key, typ in (
            ("timeout_s", float),
            ("retries", int),
            ("concurrency", int),
            ("max_samples_per_query", int),
        ):
            val = _env_num(env, f"DIDACT_PROMETHEUS_{key.upper()}", typ, None)
            if val is not None:
                kw[key] = val
        kw.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**kw)

    def describe(self) -> dict:
        return {
            "source": self.name,
            "url": _redact(self.url),
            "node_label": self.node_label,
            "api": self.api
            if self._remote_read_ok is None
            else ("remote_read" if self._remote_read_ok else "query"),
            "auth": self._auth_kind,
            "job": self.job,
            "expected_nodes": len(self.expected_nodes or []),
        }

    def close(self) -> None:
        self.session.close()

    # -- HTTP with retries -----------------------------------------------------------
    def _what(self, path: str) -> str:
        return f"Prometheus {_redact(self.url)}{path}"

    def _post(self, path: str, data, headers: dict | None = None) -> requests.Response:
        """POST with retries on transient failures; raises SourceUnavailableError."""
        what = self._what(path)
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

    def _post_once(self, path: str, data, headers: dict | None) -> requests.Response:
        what = self._what(path)
        try:
            r = self.session.post(
                self.url + path, data=data, headers=headers, timeout=self.timeout, stream=True
            )
            body = b"".join(r.iter_content(1 << 20))
        except requests.exceptions.SSLError as e:
            raise SourceUnavailableError(
                what,
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
        self.stats.add(requests_=1, nbytes=len(body))
        r._content = body
        if r.status_code == 200:
            return r
        detail = _error_text(r, body)
        if r.status_code in (429, 502, 503, 504) or r.status_code >= 500 and r.status_code != 501:
            raise _Retryable(f"HTTP {r.status_code}: {detail}")
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

    # -- low-level reads ---------------------------------------------------------------
    def query_json(self, path: str, params: dict) -> dict:
        """A small JSON API call (``/api/v1/query``, ``/api/v1/series``); returns ``data``."""
        r = self._post(path, params, {"Accept-Encoding": "gzip" if self.compression else "identity"})
        try:
            doc = json.loads(r.content)
        except ValueError:
            raise SourceUnavailableError(
                self._what(path),
                f"answer is not JSON: {r.content[:120]!r}",
                "check DIDACT_PROMETHEUS_URL points at Prometheus itself",
            ) from None
        if doc.get("status") != "success":
            raise SourceUnavailableError(
                self._what(path),
                f"query failed: {doc.get('errorType')}: {doc.get('error')}",
                "check the server logs",
            )
        return doc.get("data")

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
                        self._what("/api/v1/read"),
                        f"remote read is not offered ({e})",
                        "use DIDACT_PROMETHEUS_API=query",
                    ) from None
                log.warning(
                    "%s: remote read not offered (%s); using the JSON query API",
                    self._what("/api/v1/read"),
                    e,
                )
                self._remote_read_ok = False
        return self._fetch_query(matchers, start_ms, end_ms)

    def _fetch_remote_read(self, matchers, start_ms: int, end_ms: int) -> list[Series]:
        import cramjam

        req = encode_read_request(start_ms, end_ms, matchers, chunks=self.remote_read_chunks)
        r = self._post(
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
            return _drop_stale(decode_read_response(raw))
        except (ValueError, IndexError, cramjam.DecompressionError) as e:
            raise SourceUnavailableError(
                self._what("/api/v1/read"),
                f"unreadable remote-read answer ({e})",
                "use DIDACT_PROMETHEUS_API=query and report the server version",
            ) from None

    def _fetch_query(self, matchers, start_ms: int, end_ms: int) -> list[Series]:
        # [start, end] inclusive via a range selector evaluated at end: Prometheus 2.x
        # includes the left edge, 3.x excludes it; ask for 1 ms more and filter.
        rng = end_ms - start_ms + 1
        sel = _selector(None, matchers) + f"[{rng}ms]"
        r = self._post(
            "/api/v1/query",
            {"query": sel, "time": f"{end_ms / 1000:.3f}"},
            {"Accept-Encoding": "gzip" if self.compression else "identity"},
        )
        if b'"status":"success"' not in r.content[:100]:
            doc = json.loads(r.content)
            raise SourceUnavailableError(
                self._what("/api/v1/query"),
                f"query failed: {doc.get('errorType')}: {doc.get('error')}",
                "check the server logs",
            )
        try:
            series = decode_matrix_json(r.content)
        except ValueError as e:
            raise SourceUnavailableError(
                self._what("/api/v1/query"), f"unreadable answer ({e})", "check the server version"
            ) from None
        for s in series:
            keep = s.ts >= start_ms
            if not keep.all():
                s.ts, s.values = s.ts[keep], s.values[keep]
        return series

    # -- the day's inventory -------------------------------------------------------------
    def _base_matchers(self) -> list[tuple[str, str, str]]:
        return [("job", "=", self.job)] if self.job else []

    def _node_of(self, raw: str) -> str:
        return _PORT_RE.match(raw).group(1) if self.strip_port else raw

    def _series_nodes(self, start_ms: int, end_ms: int) -> dict[str, dict[str, set]]:
        """{node: {"raw": {label values}, "cpus": {cpu labels}}} of idle-mode CPU series in range."""
        sel = _selector(CPU_METRIC, [*self._base_matchers(), ("mode", "=", "idle")])
        data = self.query_json(
            "/api/v1/series",
            {"match[]": sel, "start": f"{start_ms / 1000:.3f}", "end": f"{end_ms / 1000:.3f}"},
        )
        nodes: dict[str, dict[str, set]] = {}
        unlabeled = 0
        for labels in data or []:
            raw = labels.get(self.node_label)
            if raw is None:
                unlabeled += 1
                continue
            ent = nodes.setdefault(self._node_of(raw), {"raw": set(), "cpus": set()})
            ent["raw"].add(raw)
            ent["cpus"].add(labels.get("cpu", ""))
        if unlabeled:
            log.warning(
                "%d %s series have no '%s' label and are ignored", unlabeled, CPU_METRIC, self.node_label
            )
        for node, ent in nodes.items():
            if len(ent["raw"]) > 1:
                raise DidactError(
                    f"Prometheus node label '{self.node_label}'",
                    f"values {sorted(ent['raw'])} all map to node {node!r}",
                    "set DIDACT_PROMETHEUS_STRIP_PORT=0 or use a label that is unique per node",
                )
        return nodes

    def _points_per_series(self, start_ms: int, end_ms: int) -> int:
        """Most samples any node's cpu-0 idle series holds in the range (sizes the chunks)."""
        sel = _selector(CPU_METRIC, [*self._base_matchers(), ("mode", "=", "idle"), ("cpu", "=", "0")])
        data = self.query_json(
            "/api/v1/query",
            {
                "query": f"max(count_over_time({sel}[{end_ms - start_ms + 1}ms]))",
                "time": f"{end_ms / 1000:.3f}",
            },
        )
        res = (data or {}).get("result") or []
        if not res:
            return max(1, (end_ms - start_ms) // 1000)  # unknown: assume 1 s scrapes
        return max(1, int(float(res[0]["value"][1])))

    def nodes(self, day: dt.date) -> list[str]:
        """Expected nodes: the configured list, else nodes with CPU series on day-1 or day."""
        if self.expected_nodes is not None:
            return list(self.expected_nodes)
        start, _ = day_bounds(day)
        s = int(start.value // 1_000_000)
        seen = self._series_nodes(s - DAY_MS, s + DAY_MS - 1)
        return sorted(seen)

    # -- blocks ------------------------------------------------------------------------
    def _plan(self, raw_values: list[str], cpus_per_node: int, points: int, start_ms: int, end_ms: int):
        """Requests (raw node values, window start, window end) covering the block."""
        windows = max(1, -(-points // self.max_points_per_series))
        series_per_node = max(1, cpus_per_node) * len(CPU_MODES)
        while series_per_node * -(-points // windows) > self.max_samples_per_query and windows < points:
            windows *= 2
        per_window = -(-points // windows)
        nodes_per_req = max(1, self.max_samples_per_query // (series_per_node * per_window))
        span = end_ms - start_ms + 1
        edges = [start_ms + (span * i) // windows for i in range(windows + 1)]
        plan = []
        for i in range(0, len(raw_values), nodes_per_req):
            group = raw_values[i : i + nodes_per_req]
            for w in range(windows):
                plan.append((group, edges[w], edges[w + 1] - 1))
        return plan

    def _submit_block(
        self, pool: cf.Executor, node_infos: list[tuple[str, dict]], points: int, start_ms: int, end_ms: int
    ) -> dict:
        raw_values = sorted(r for _, ent in node_infos for r in ent["raw"])
        cpus = max((len(ent["cpus"]) for _, ent in node_infos), default=1)
        plan = self._plan(raw_values, cpus, points, start_ms, end_ms)
        base = self._base_matchers()
        futures = []
        for group, w0, w1 in plan:
            m = [("__name__", "=", CPU_METRIC), *base, (self.node_label, "=~", regex_union(group))]
            futures.append(pool.submit(self.fetch, m, w0, w1))
        power_future = None
        if self.power:
            pm = [
                ("__name__", "=~", f"{RAPL_METRIC_RE}|{HWMON_METRIC_RE}|{DIDACT_POWER_METRIC}"),
                *base,
                (self.node_label, "=~", regex_union(raw_values)),
            ]
            # RAPL watts need the sample before the day: start one scrape-ish earlier
            power_future = pool.submit(self.fetch, pm, start_ms - 60_000, end_ms)
        node_future = None
        if self.node_metrics:
            nm = [
                ("__name__", "=~", "|".join(NODE_METRICS)),
                *base,
                (self.node_label, "=~", regex_union(raw_values)),
            ]
            node_future = pool.submit(self.fetch, nm, start_ms, end_ms)
        return {
            "nodes": [n for n, _ in node_infos],
            "futures": futures,
            "power": power_future,
            "node_metrics": node_future,
            "requests": len(plan) + (1 if power_future else 0) + (1 if node_future else 0),
            "t0": time.perf_counter(),
        }

    def _collect_block(self, job: dict, start_ms: int, end_ms: int, missing: list[str]) -> RawBlock:
        series: list[Series] = []
        for f in job["futures"]:
            series.extend(f.result())
        cpu, info = self._assemble_cpu(series)
        meta = {
            "api": self.describe()["api"],
            "requests": job["requests"],
            "samples": info["samples"],
            "series": info["series"],
            **{k: v for k, v in info.items() if k not in ("samples", "series")},
        }
        power = None
        if job["power"] is not None:
            pseries = job["power"].result()
            power, pinfo = self.power_frame(pseries, start_ms, end_ms)
            meta.update(pinfo)
        node_metrics = None
        if job.get("node_metrics") is not None:
            node_metrics = self.node_metrics_frame(job["node_metrics"].result())
            meta["node_metric_rows"] = 0 if node_metrics is None else len(node_metrics)
        present = set(cpu["node"].unique()) if len(cpu) else set()
        empty = sorted(set(job["nodes"]) - present)
        meta["seconds"] = round(time.perf_counter() - job["t0"], 3)
        return RawBlock(
            cpu=cpu, power=power, node_metrics=node_metrics, missing_nodes=sorted(set(missing) | set(empty)), meta=meta
        )

    def node_metrics_frame(self, series: list[Series]) -> pd.DataFrame | None:
        """Node exporter's node-level series → one row per (node, scrape) with
        :data:`~didact_core.schema.NODE_COUNTERS` (summed over devices; loopback and
        virtual network devices excluded) and the gauges; None when no node had them all."""
        parts = []
        for s in series:
            name = s.labels.get("__name__", "")
            raw = s.labels.get(self.node_label)
            column = NODE_METRICS.get(name)
            if raw is None or column is None or not len(s.ts):
                continue
            if name.startswith("node_network_") and _VIRTUAL_NET.match(s.labels.get("device", "")):
                continue
            parts.append(pd.DataFrame({"node": self._node_of(raw), "ts": s.ts, "col": column, "v": s.values}))
        if not parts:
            return None
        long = pd.concat(parts, ignore_index=True)
        wide = long.pivot_table(index=["node", "ts"], columns="col", values="v", aggfunc="sum").reset_index()
        if "mem_total" in wide and "mem_available" in wide:
            wide["mem_used_bytes"] = wide["mem_total"] - wide["mem_available"]
        need = [*NODE_COUNTERS, *NODE_GAUGES]
        for c in need:
            if c not in wide:
                wide[c] = np.nan
        wide = wide.dropna(subset=need, how="all")
        nodes = sorted(wide["node"].unique())
        return pd.DataFrame(
            {
                "ts": pd.to_datetime(wide["ts"].to_numpy(), unit="ms", utc=True).astype(TS_DTYPE),
                "node": pd.Categorical(wide["node"], categories=nodes),
                **{c: wide[c].to_numpy(dtype=np.float64) for c in need},
            }
        ).sort_values(["node", "ts"], kind="stable").reset_index(drop=True)

    def iter_blocks(self, day: dt.date, nodes_per_block: int = 64) -> Iterator[RawBlock]:
        """Yield the day in blocks of ``nodes_per_block`` nodes (the next one is prefetched).

        Missing expected nodes are listed in the first block's ``missing_nodes``.
        """
        start, _ = day_bounds(day)
        start_ms = int(start.value // 1_000_000)
        end_ms = start_ms + DAY_MS - 1
        today = self._series_nodes(start_ms, end_ms)
        if self.expected_nodes is not None:
            expected = list(self.expected_nodes)
        else:
            expected = sorted(set(today) | set(self._series_nodes(start_ms - DAY_MS, start_ms - 1)))
        present = sorted(today)
        missing = sorted(set(expected) - set(present))
        if self.expected_nodes is not None:
            unexpected = sorted(set(present) - set(expected))
            if unexpected:
                log.info(
                    "%d nodes report but are not in the expected list (kept): %s",
                    len(unexpected),
                    unexpected[:10],
                )
        if not present:
            raise SourceUnavailableError(
                f"Prometheus {_redact(self.url)} day {day.isoformat()}",
                f"no {CPU_METRIC} series with a '{self.node_label}' label between {start.isoformat()} and "
                f"{(start + pd.Timedelta(days=1)).isoformat()}"
                + (f" for job {self.job!r}" if self.job else ""),
                "check the day is within Prometheus' retention, the node exporters were scraped, and "
                "DIDACT_PROMETHEUS_NODE_LABEL / DIDACT_PROMETHEUS_JOB",
            )
        points = self._points_per_series(start_ms, end_ms)
        groups = [present[i : i + nodes_per_block] for i in range(0, len(present), max(1, nodes_per_block))]
        total_samples = 0
        with cf.ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="didact-prom") as pool:
            jobs = [self._submit_block(pool, [(n, today[n]) for n in groups[0]], points, start_ms, end_ms)]
            try:
                for i in range(len(groups)):
                    if i + 1 < len(groups):
                        jobs.append(
                            self._submit_block(
                                pool, [(n, today[n]) for n in groups[i + 1]], points, start_ms, end_ms
                            )
                        )
                    block = self._collect_block(jobs[i], start_ms, end_ms, missing if i == 0 else [])
                    jobs[i] = None
                    total_samples += block.meta["samples"]
                    if i == 0:
                        block.meta["expected_nodes"] = len(expected)
                    yield block
            finally:
                for job in jobs:
                    if job:
                        for f in job["futures"]:
                            f.cancel()
        if total_samples == 0:
            raise SourceUnavailableError(
                f"Prometheus {_redact(self.url)} day {day.isoformat()}",
                f"{CPU_METRIC} series exist but hold no samples in the day",
                "check the day is within Prometheus' retention and the scrapes succeeded",
            )

    def read_day(self, day: dt.date, nodes_per_block: int = 64) -> RawBlock:
        """The whole day as one block (fine for small clusters and tests)."""
        blocks = list(self.iter_blocks(day, nodes_per_block))
        cpu = pd.concat([b.cpu for b in blocks], ignore_index=True)
        powers = [b.power for b in blocks if b.power is not None]
        power = pd.concat(powers, ignore_index=True) if powers else None
        nms = [b.node_metrics for b in blocks if b.node_metrics is not None]
        node_metrics = pd.concat(nms, ignore_index=True) if nms else None
        meta = {
            "blocks": len(blocks),
            "samples": sum(b.meta["samples"] for b in blocks),
            "requests": sum(b.meta["requests"] for b in blocks),
        }
        return RawBlock(cpu=cpu, power=power, node_metrics=node_metrics, missing_nodes=blocks[0].missing_nodes, meta=meta)

    # -- assembling frames -------------------------------------------------------------
    def _assemble_cpu(self, series: list[Series]) -> tuple[pd.DataFrame, dict]:
        """Long series → the wide raw CPU frame ordered by (node, cpu, ts)."""
        by_key: dict[tuple[str, int], dict[str, list[Series]]] = defaultdict(lambda: defaultdict(list))
        unknown_modes: set = set()
        samples = 0
        for s in series:
            samples += len(s.ts)
            mode = s.labels.get("mode")
            if mode not in CPU_MODES:
                unknown_modes.add(mode)
                continue
            raw = s.labels.get(self.node_label)
            cpu_label = s.labels.get("cpu", "")
            try:
                cpu = int(cpu_label)
            except ValueError:
                digits = re.sub(r"\D", "", cpu_label)
                if not digits:
                    raise DataQualityError(
                        f"{CPU_METRIC} series {s.labels}",
                        f"cpu label {cpu_label!r} is not a number",
                        "relabel cpu to the CPU index",
                    ) from None
                cpu = int(digits)
            if len(s.ts):
                by_key[(self._node_of(raw), cpu)][mode].append(s)
        if not by_key:
            return empty_raw_cpu(), {
                "samples": samples,
                "series": 0,
                "unknown_modes": sorted(map(str, unknown_modes)),
            }
        keys = sorted(by_key)
        ts_parts, node_rep, cpu_rep = [], [], []
        mode_parts = {m: [] for m in CPU_MODES}
        missing_modes = 0
        unaligned = 0
        for key in keys:
            modes = by_key[key]
            merged = {}
            for mode, parts in modes.items():
                parts.sort(key=lambda s: s.ts[0])
                if len(parts) == 1:
                    merged[mode] = (parts[0].ts, parts[0].values)
                else:
                    merged[mode] = (
                        np.concatenate([p.ts for p in parts]),
                        np.concatenate([p.values for p in parts]),
                    )
            ts_list = [v[0] for v in merged.values()]
            ts = ts_list[0]
            if not all(len(t) == len(ts) and np.array_equal(t, ts) for t in ts_list[1:]):
                unaligned += 1
                ts = np.unique(np.concatenate(ts_list))
            for mode in CPU_MODES:
                if mode not in merged:
                    missing_modes += 1
                    mode_parts[mode].append(np.full(len(ts), np.nan))
                    continue
                mts, mv = merged[mode]
                if len(mts) == len(ts) and (mts is ts or np.array_equal(mts, ts)):
                    mode_parts[mode].append(mv)
                else:
                    col = np.full(len(ts), np.nan)
                    col[np.searchsorted(ts, mts)] = mv
                    mode_parts[mode].append(col)
            ts_parts.append(ts)
            node_rep.append((key[0], len(ts)))
            cpu_rep.append((key[1], len(ts)))
        counts = np.array([n for _, n in node_rep])
        names = sorted({n for n, _ in node_rep})
        code_of = {n: i for i, n in enumerate(names)}
        node_col = pd.Categorical.from_codes(
            np.repeat(np.array([code_of[n] for n, _ in node_rep], dtype=np.int32), counts), names
        )
        data = {
            "ts": pd.Series(np.concatenate(ts_parts).astype("datetime64[ms]"))
            .dt.tz_localize("UTC")
            .astype(TS_DTYPE),
            "node": node_col,
            "cpu": np.repeat(np.array([c for c, _ in cpu_rep], dtype=np.int16), counts),
        }
        for mode in CPU_MODES:
            data[mode] = np.concatenate(mode_parts[mode])
        df = pd.DataFrame(data, columns=list(RAW_CPU_COLUMNS))
        info = {
            "samples": samples,
            "series": sum(len(v) for v in by_key.values()),
            "unknown_modes": sorted(map(str, unknown_modes)),
            "missing_mode_series": missing_modes,
            "unaligned_cpu_series": unaligned,
        }
        return df, info

    def power_frame(
        self, series: list[Series], start_ms: int, end_ms: int
    ) -> tuple[pd.DataFrame | None, dict]:
        """Power series (RAPL counters, hwmon/didact gauges) → ``RAW_POWER_COLUMNS`` rows in [start, end]."""
        from didact_core.power.base import counter_to_watts

        rows_ts, rows_node, rows_src, rows_w = [], [], [], []
        info = {"power_series": 0, "rapl_wraps": 0, "rapl_resets": 0}
        rapl: dict[str, list] = defaultdict(list)
        hwmon: dict[str, dict] = defaultdict(dict)
        for s in series:
            name = s.labels.get("__name__", "")
            raw = s.labels.get(self.node_label)
            if raw is None or not len(s.ts):
                continue
            node = self._node_of(raw)
            info["power_series"] += 1
            if name == DIDACT_POWER_METRIC:
                keep = (s.ts >= start_ms) & (s.ts <= end_ms)
                rows_ts.append(s.ts[keep])
                rows_node.append(np.full(keep.sum(), node, dtype=object))
                rows_src.append(np.full(keep.sum(), s.labels.get("source", "prometheus"), dtype=object))
                rows_w.append(s.values[keep])
            elif re.fullmatch(RAPL_METRIC_RE, name):
                domain = s.labels.get("rapl_zone") or name[len("node_rapl_") : -len("_joules_total")]
                domain = re.sub(r"[-_]?\d+$", "", domain)
                if domain in RAPL_DOMAINS:
                    rapl[node].append(s)
            elif re.fullmatch(HWMON_METRIC_RE, name):
                chip = s.labels.get("chip", "")
                if self.hwmon_chips and not self.hwmon_chips.search(chip):
                    continue
                sensor = (chip, s.labels.get("sensor", ""))
                rank = {"node_hwmon_power_average_watt": 0, "node_hwmon_power_input_watt": 1}.get(name, 2)
                if sensor not in hwmon[node] or rank < hwmon[node][sensor][0]:
                    hwmon[node][sensor] = (rank, s)
        for node, parts in rapl.items():
            frames = []
            for k, s in enumerate(parts):
                max_j = self.rapl_max_energy_j
                w, wraps, resets = counter_to_watts(s.ts, s.values, max_j)
                info["rapl_wraps"] += wraps
                info["rapl_resets"] += resets
                frames.append(pd.Series(w, index=s.ts[1:], name=k))
            wide = pd.concat(frames, axis=1)  # NaN where a domain lacks that scrape
            total = wide.sum(axis=1, min_count=len(frames)).dropna()
            total = total[(total.index >= start_ms) & (total.index <= end_ms)]
            rows_ts.append(total.index.to_numpy(np.int64))
            rows_node.append(np.full(len(total), node, dtype=object))
            rows_src.append(np.full(len(total), "rapl", dtype=object))
            rows_w.append(total.to_numpy(np.float64))
        for node, sensors in hwmon.items():
            frames = [pd.Series(s.values, index=s.ts, name=i) for i, (_, s) in enumerate(sensors.values())]
            total = pd.concat(frames, axis=1).sum(axis=1, min_count=len(frames)).dropna()
            total = total[(total.index >= start_ms) & (total.index <= end_ms)]
            rows_ts.append(total.index.to_numpy(np.int64))
            rows_node.append(np.full(len(total), node, dtype=object))
            rows_src.append(np.full(len(total), "hwmon", dtype=object))
            rows_w.append(total.to_numpy(np.float64))
        if not rows_ts or not sum(len(t) for t in rows_ts):
            return None, info
        df = pd.DataFrame(
            {
                "ts": pd.Series(np.concatenate(rows_ts).astype("datetime64[ms]"))
                .dt.tz_localize("UTC")
                .astype(TS_DTYPE),
                "node": pd.Series(np.concatenate(rows_node), dtype="string"),
                "source": pd.Series(np.concatenate(rows_src), dtype="string"),
                "watts": np.concatenate(rows_w).astype(np.float64),
            },
            columns=list(RAW_POWER_COLUMNS),
        )
        df = df.sort_values(["node", "source", "ts"], kind="stable", ignore_index=True)
        return df, info

    def read_power(
        self, start: pd.Timestamp, end: pd.Timestamp, nodes: Sequence[str] | None = None
    ) -> pd.DataFrame | None:
        """Power rows for [start, end) of ``nodes`` (raw label values, default all)."""
        s = int(pd.Timestamp(start).value // 1_000_000)
        e = int(pd.Timestamp(end).value // 1_000_000) - 1
        m = [
            ("__name__", "=~", f"{RAPL_METRIC_RE}|{HWMON_METRIC_RE}|{DIDACT_POWER_METRIC}"),
            *self._base_matchers(),
        ]
        if nodes:
            m.append((self.node_label, "=~", regex_union(list(nodes))))
        else:
            m.append((self.node_label, "=~", ".+"))
        df, _ = self.power_frame(self.fetch(m, s - 60_000, e), s, e)
        return df


def _error_text(r: requests.Response, body: bytes) -> str:
    try:
        doc = json.loads(body)
        if isinstance(doc, dict) and doc.get("error"):
            return f"{doc.get('errorType', 'error')}: {doc['error']}"[:300]
    except ValueError:
        pass
    return body[:300].decode("utf-8", "replace").strip() or r.reason or ""
