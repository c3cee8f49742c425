"""Prometheus' wire formats: what goes over HTTP, encoded and decoded without a
Python object per sample.

- PromQL text: label matchers as selectors (:func:`selector`, :func:`promql_str`,
  :func:`regex_union`).
- Remote read (protobuf): :func:`encode_read_request`; a ``SAMPLES`` answer
  (snappy-decompressed ``ReadResponse``) with :func:`decode_read_response`, a run of
  equal-length ``Sample`` messages decoded as one strided numpy view.  The streamed XOR
  chunks are :mod:`didact_core.ingest.prometheus.xorchunks`.
- The JSON query API: a ``matrix`` answer with :func:`decode_matrix_json` (numpy
  ``fromstring`` over the values, validated against the sample count, stdlib ``json``
  as the fallback).

Everything returns :class:`Series` (labels, int64 ms timestamps, float64 values).
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Prometheus' staleness marker (a NaN payload it writes when a series disappears)
STALE_NAN_BITS = 0x7FF0000000000002


@dataclass
class Series:
    """One time series: labels, timestamps (int64 ms) and float64 values."""

    labels: dict
    ts: np.ndarray
    values: np.ndarray


# -- PromQL text -------------------------------------------------------------------------


def regex_union(values: Sequence[str]) -> str:
    """An RE2 regex matching exactly one of ``values`` (Prometheus anchors it)."""
    return "|".join(re.escape(v) for v in values)


def promql_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def selector(metric: str | None, matchers: Sequence[tuple[str, str, str]]) -> str:
    """PromQL selector from (name, op, value) matchers; ``metric`` None means use matchers only."""
    body = ",".join(f"{n}{op}{promql_str(v)}" for n, op, v in matchers)
    return f"{metric or ''}{{{body}}}"


# -- protobuf (remote read) -----------------------------------------------------------


def pb_varint(n: int) -> bytes:
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


def pb_bytes(num: int, data: bytes) -> bytes:
    return pb_varint((num << 3) | 2) + pb_varint(len(data)) + data


def pb_uint(num: int, value: int) -> bytes:
    return pb_varint(num << 3) + pb_varint(value)


_MATCH_TYPES = {"=": 0, "!=": 1, "=~": 2, "!~": 3}


def encode_read_request(
    start_ms: int, end_ms: int, matchers: Sequence[tuple[str, str, str]], chunks: bool = False
) -> bytes:
    """A prometheus.ReadRequest with one Query [start_ms, end_ms] (inclusive).

    ``chunks`` asks for STREAMED_XOR_CHUNKS (servers that lack it answer SAMPLES)."""
    q = pb_uint(1, start_ms) + pb_uint(2, end_ms)
    for name, op, value in matchers:
        m = pb_uint(1, _MATCH_TYPES[op]) + pb_bytes(2, name.encode()) + pb_bytes(3, value.encode())
        q += pb_bytes(3, m)
    req = pb_bytes(1, q)
    if chunks:
        req += pb_uint(2, 1) + pb_uint(2, 0)  # accepted_response_types: STREAMED_XOR_CHUNKS, SAMPLES
    return req


def read_varint(buf: bytes, p: int) -> tuple[int, int]:
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


def read_label(raw: bytes, p: int, labels: dict) -> int:
    """Decode one ``Label {name=1, value=2}`` field starting at its tag; returns the next offset."""
    ln, p = read_varint(raw, p + 1)
    end = p + ln
    name = value = ""
    while p < end:
        t = raw[p]
        ln2, p2 = read_varint(raw, p + 1)
        text = raw[p2 : p2 + ln2].decode("utf-8")
        if t == 0x0A:
            name = text
        elif t == 0x12:
            value = text
        p = p2 + ln2
    labels[name] = value
    return p


def skip_field(buf: bytes, p: int) -> int:
    tag, p = read_varint(buf, p)
    wt = tag & 7
    if wt == 0:
        _, p = read_varint(buf, p)
    elif wt == 1:
        p += 8
    elif wt == 2:
        n, p = read_varint(buf, p)
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
            _, q2 = read_varint(buf, q + 1)
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
            ln, body = read_varint(buf, p + 1)
            ts_out.append(np.array([0], dtype=np.int64))
            v_out.append(np.array([0.0]))
            for kind, off, n in _sample_layout(buf, body, body + ln):
                if kind == "v":
                    v_out[-1][0] = np.frombuffer(buf, dtype="<f8", count=1, offset=body + off)[0]
                else:
                    ts_out[-1][0] = read_varint(buf, body + off)[0]
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
                        [read_varint(bytes(r[col : col + n]), 0)[0] for r in run], dtype=np.uint64
                    ).view(np.int64)
        ts_out.append(ts)
        v_out.append(vals)
        p += n_ok * stride
        window = min(window * 4, 1 << 16) if n_ok == n_max else 256
    return p


def decode_read_response(raw: bytes) -> list[Series]:
    """Decode an (uncompressed) prometheus.ReadResponse of SAMPLES into :class:`Series`."""
    arr = np.frombuffer(raw, dtype=np.uint8)
    out: list[Series] = []
    p, n = 0, len(raw)
    while p < n:
        if raw[p] != 0x0A:  # results = 1
            p = skip_field(raw, p)
            continue
        ln, p = read_varint(raw, p + 1)
        q_end = p + ln
        while p < q_end:
            if raw[p] != 0x0A:  # timeseries = 1
                p = skip_field(raw, p)
                continue
            ln, p = read_varint(raw, p + 1)
            s_end = p + ln
            labels: dict[str, str] = {}
            ts_parts: list[np.ndarray] = []
            v_parts: list[np.ndarray] = []
            while p < s_end:
                tag = raw[p]
                if tag == 0x0A:  # labels = 1
                    p = read_label(raw, p, labels)
                elif tag == 0x12:  # samples = 2
                    p = _decode_samples(arr, raw, p, s_end, ts_parts, v_parts)
                else:
                    p = skip_field(raw, p)
            if len(ts_parts) == 1:
                ts, vals = ts_parts[0], v_parts[0]
            elif ts_parts:
                ts, vals = np.concatenate(ts_parts), np.concatenate(v_parts)
            else:
                ts, vals = np.empty(0, np.int64), np.empty(0, np.float64)
            out.append(Series(labels, ts, vals))
    return out


def drop_stale(series: list[Series]) -> list[Series]:
    """Remove Prometheus staleness markers (not samples: a series ended there)."""
    for s in series:
        stale = s.values.view(np.uint64) == STALE_NAN_BITS
        if stale.any():
            s.ts, s.values = s.ts[~stale], s.values[~stale]
    return series


# -- JSON (query API) -----------------------------------------------------------------

_STRIP = b'[]"}'


def decode_matrix_json(body: bytes, fast: bool = True) -> list[Series]:
    """Decode a ``resultType: matrix`` query answer into :class:`Series` (ts in ms).

    Fast path: split the body at ``{"metric":{`` and parse all ``values`` numbers with one
    ``numpy.fromstring``; it is used only if the number count matches, else (and with
    ``fast=False``) stdlib json.  An answer of another shape raises ``ValueError``
    saying what is wrong.
    """
    head = body[:200]
    if not fast or b'"status":"success"' not in head or b'"resultType":"matrix"' not in head:
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


def answer_data(doc, result_type: str | None = None):
    """The ``data`` of a parsed Prometheus API answer ``{"status": "success", "data": …}``.

    ``result_type`` (``vector``, ``matrix``) also checks ``data`` is ``{"resultType":
    result_type, "result": [...]}``; ``"labels"`` checks it is a list of label sets (the
    series API).  Anything else raises ``ValueError`` naming what is wrong (a proxy's
    error page, another API, a broken server)."""
    if not isinstance(doc, dict):
        raise ValueError(f"the answer is a JSON {type(doc).__name__}, not an object")
    if doc.get("status") != "success":
        raise ValueError(f"status is {doc.get('status')!r}, not 'success'")
    data = doc.get("data")
    if result_type is None:
        return data
    if result_type == "labels":
        if not isinstance(data, list):
            raise ValueError(f"'data' is a JSON {type(data).__name__}, not a list of label sets")
        for item in data:
            if not isinstance(item, dict):
                raise ValueError(f"a label set is not an object: {str(item)[:80]}")
        return data
    if not isinstance(data, dict):
        raise ValueError(f"'data' is a JSON {type(data).__name__}, not an object with a result")
    if data.get("resultType") != result_type:
        raise ValueError(f"expected a {result_type} result, got {data.get('resultType')!r}")
    if not isinstance(data.get("result"), list):
        raise ValueError(f"'data.result' is a JSON {type(data.get('result')).__name__}, not a list")
    for item in data["result"] if result_type in ("vector", "matrix") else ():
        if not isinstance(item, dict) or not isinstance(item.get("metric", {}), dict):
            raise ValueError(f"a result item is not a {{'metric': {{…}}, …}} object: {str(item)[:80]}")
    return data


def _decode_matrix_slow(body: bytes) -> list[Series]:
    data = answer_data(json.loads(body), "matrix")
    out = []
    for s in data["result"]:
        vals = s.get("values", [])
        try:
            ts = np.rint(np.array([float(v[0]) for v in vals]) * 1000.0).astype(np.int64)
            v = np.array([float(v[1]) for v in vals], dtype=np.float64)
        except (TypeError, IndexError, KeyError) as e:
            raise ValueError(f'the values of {s.get("metric")} are not [time, "value"] pairs ({e})') from None
        out.append(Series(s.get("metric", {}), ts, v))
    return out


__all__ = [
    "STALE_NAN_BITS",
    "Series",
    "answer_data",
    "decode_matrix_json",
    "decode_read_response",
    "drop_stale",
    "encode_read_request",
    "pb_bytes",
    "pb_uint",
    "pb_varint",
    "promql_str",
    "read_label",
    "read_varint",
    "regex_union",
    "selector",
    "skip_field",
]
