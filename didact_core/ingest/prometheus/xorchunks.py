"""Prometheus' XOR chunks (remote read, ``STREAMED_XOR_CHUNKS``), decoded with numpy.

Prometheus sends its stored Gorilla/XOR chunks as they are (no decoding, ~8× less
server CPU than SAMPLES, ~3× fewer bytes).  They are decoded here with numpy, all chunks
of a response at once: step k decodes the k-th sample of every chunk that has one
(chunks hold ≤ 120 samples), reading each chunk's bits through a 128-bit big-endian
window gathered at its bit position.  The format is tsdb/chunkenc/xor.go's: a uint16
sample count; t0 as a zigzag varint and v0 as 64 raw bits; t1 - t0 as a uvarint; then
per sample a delta-of-delta (0 | 10+14 bits | 110+17 | 1110+20 | 1111+64) and the XOR of
the value bits with the previous one (0 | 10 + meaningful bits | 11 + 5 bits leading
zeros + 6 bits length + meaningful bits).
"""

from __future__ import annotations

import logging

import numpy as np

from didact_core.ingest.prometheus.wire import STALE_NAN_BITS, Series, read_label, read_varint, skip_field

log = logging.getLogger(__name__)

_U = np.uint64
_DOD_PREFIX = np.array([1] * 8 + [2] * 4 + [3] * 2 + [4, 4], dtype=np.uint64)  # by the top 4 bits
_DOD_BITS = np.array([0] * 8 + [14] * 4 + [17] * 2 + [20, 64], dtype=np.uint64)


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


class _BitWindow:
    """Every byte offset of a (padded) buffer seen as a big-endian uint64, so a 128-bit
    window at any bit position is two gathers (a strided view, no copy)."""

    def __init__(self, buf: bytes):
        self.pad = np.zeros(len(buf) + 32, dtype=np.uint8)
        self.pad[: len(buf)] = np.frombuffer(buf, dtype=np.uint8)
        self.view = np.ndarray(shape=(len(buf) + 16,), dtype=">u8", buffer=self.pad, offset=0, strides=(1,))

    def at(self, bitpos: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(hi, lo, bit offset into hi) of the windows at ``bitpos``."""
        byte = bitpos >> 3
        return self.view[byte].astype(_U), self.view[byte + 8].astype(_U), (bitpos & 7).astype(_U)


def _read_dod(win: _BitWindow, bitpos: np.ndarray):
    """Read one delta-of-delta record per chunk at ``bitpos``.

    Returns ``(dod, hi, lo, s, bitpos)``: the window and offset ``s`` just after the
    record (for the value record that follows) and ``bitpos`` of that window's start."""
    hi, lo, s = win.at(bitpos)
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
        bh, bl, bs = win.at(bitpos[big] + 4)
        dod[big] = _top64(bh, bl, bs).astype(np.int64)
        after = bitpos[big] + 68
        nh, nl, ns = win.at(after)
        hi, lo, bitpos = hi.copy(), lo.copy(), bitpos.copy()
        hi[big], lo[big], s[big] = nh, nl, ns
        bitpos[big] = after - ns.astype(np.int64)
    return dod, hi, lo, s, bitpos


def decode_xor_chunks(buf: bytes, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode the XOR chunks whose bytes begin at offsets ``starts`` of ``buf``.

    Returns ``(ts_ms, values, counts)``: chunk i's samples are at
    ``[sum(counts[:i]), sum(counts[:i+1]))`` of ``ts_ms``/``values``.
    """
    win = _BitWindow(buf)
    pad = win.pad
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
    vb = win.view[p].astype(_U)
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
            hi, lo, s = win.at(bitpos)
        else:
            dod, hi, lo, s, bitpos = _read_dod(win, bitpos)
            tdelta = tdelta + dod
        t = t + tdelta
        used = _xor_value(hi, lo, s, vb, leading, trailing)
        bitpos = (bitpos - (bitpos & 7)) + (s + used).astype(np.int64)
        pos = first[:n] + k
        ts_out[pos] = t
        vb_out[pos] = vb
    return ts_out, vb_out.view(np.float64), counts


def _read_chunk(raw: bytes, p: int) -> tuple[int, int | None, int]:
    """One ``Chunk {min_time_ms=1, max_time_ms=2, type=3, data=4}`` field at its tag:
    ``(type, offset of its data or None, offset after it)``."""
    ln, p = read_varint(raw, p + 1)
    c_end = p + ln
    ctype, data = 0, None
    while p < c_end:
        t = raw[p]
        if t == 0x18:
            ctype, p = read_varint(raw, p + 1)
        elif t == 0x22:
            ln2, p2 = read_varint(raw, p + 1)
            data = p2
            p = p2 + ln2
        else:
            p = skip_field(raw, p)
    return ctype, data, p


def _scan_frames(raw: bytes) -> tuple[list[dict], list[int], list[int], int]:
    """The frames' series: (labels of each series, XOR chunk data offsets, the series
    index of each chunk, non-XOR chunks skipped).  A series split over several
    ``ChunkedSeries`` (consecutive, same labels) is one series."""
    labels_list: list[dict] = []
    starts: list[int] = []
    owner: list[int] = []
    last_key = None
    p, n = 0, len(raw)
    skipped = 0
    while p < n:
        size, p = read_varint(raw, p)
        p += 4  # CRC32C (Castagnoli) of the message; TCP already checks the bytes
        f_end = p + size
        while p < f_end:
            if raw[p] != 0x0A:  # chunked_series = 1 (query_index = 2 skipped)
                p = skip_field(raw, p)
                continue
            ln, p = read_varint(raw, p + 1)
            s_end = p + ln
            labels: dict[str, str] = {}
            chunk_starts: list[int] = []
            while p < s_end:
                tag = raw[p]
                if tag == 0x0A:  # labels = 1
                    p = read_label(raw, p, labels)
                elif tag == 0x12:  # chunks = 2
                    ctype, data, p = _read_chunk(raw, p)
                    if ctype == 1 and data is not None:
                        chunk_starts.append(data)
                    else:
                        skipped += 1
                else:
                    p = skip_field(raw, p)
            key = tuple(sorted(labels.items()))
            if key != last_key:
                labels_list.append(labels)
                last_key = key
            starts.extend(chunk_starts)
            owner.extend([len(labels_list) - 1] * len(chunk_starts))
    return labels_list, starts, owner, skipped


def decode_chunked_stream(raw: bytes, start_ms: int, end_ms: int) -> list[Series]:
    """Decode a STREAMED_XOR_CHUNKS remote-read answer into :class:`Series` in [start, end].

    Frames are ``uvarint(size) crc32c(4) ChunkedReadResponse``; a series split over
    several ``ChunkedSeries`` (frames are ≤ 1 MB) is joined again.  Non-XOR chunks
    (native histograms) are skipped (logged).  Staleness markers are dropped.
    """
    labels_list, starts, owner, skipped = _scan_frames(raw)
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


__all__ = ["decode_chunked_stream", "decode_xor_chunks"]
