"""Synthetic node scores with planted cluster events, for tests and quick checks.

What the cluster model sees, drawn directly (no telemetry, no node detector): per node and
step a log reconstruction error and a latent point around its job flavour's, rare single-node
faults, multi-node jobs whose members share a flavour, stragglers (one member drifts away
from its peers), and incidents — a filesystem stall over a share of every rack's nodes, a
rack event over one rack, a scheduler storm over most nodes.  The truth frames have the
simulator's shapes (``cluster_incidents``, ``job_members``, ``stragglers``, ``topology``).

    day = synthetic_day(nodes=48, per_rack=8, steps=720, seed=1, incidents=True)
    day["scores"], day["topology"], day["job_members"], day["cluster_incidents"], day["stragglers"]
"""

from __future__ import annotations

import numpy as np
import pandas as pd

LATENT_DIM = 3
#: log error: flavour levels around this, noise sd, OOD above this
_LE_BASE, _LE_NOISE, _OOD_LE = -4.0, 0.3, -2.6
_EFFECT = {"fs_stall": 2.0, "rack_network": 2.2, "rack_power": 1.8, "sched_storm": 1.5}


def _frame(rows: list, cols: list[str]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=cols)
    for c in ("start", "end"):
        df[c] = pd.to_datetime(df[c], utc=True)
    return df


def _place_jobs(rng, N: int, T: int, share: float, ts, le, lat, centres, levels, stragglers: bool):
    """Multi-node jobs (4 and 16 members, some of 2) on free nodes; a straggler in some."""
    free_from = np.zeros(N, dtype=int)
    members, strag = [], []
    k = 0
    target, used = share * N * T, 0
    while used < target and k < 500:
        size = int(rng.choice([2, 4, 4, 16])) if N >= 16 else int(rng.choice([2, 4]))
        length = int(rng.integers(30, 180))
        start = int(rng.integers(0, max(1, T - length)))
        cand = np.flatnonzero(free_from <= start)
        if len(cand) < size:
            k += 1
            continue
        nodes = rng.choice(cand, size=size, replace=False)
        end = min(T, start + length)
        free_from[nodes] = end
        f = int(rng.integers(len(levels)))
        centre = centres[f] + 0.2 * rng.standard_normal(LATENT_DIM)
        lat[start:end, nodes] = centre + 0.08 * rng.standard_normal((end - start, size, LATENT_DIM))
        le[start:end, nodes] = levels[f] + _LE_NOISE * rng.standard_normal((end - start, size))
        jid = f"job-{k:04d}"
        members += [(jid, "mpi", f"node{n:04d}", ts[start], ts[end - 1] + (ts[1] - ts[0])) for n in nodes]
        if stragglers and size >= 3 and rng.random() < 0.4:
            n = int(nodes[int(rng.integers(size))])
            s0 = start + int(rng.uniform(0, 0.4) * (end - start))
            lat[s0:end, n] += 0.8 * np.array([1.0, -0.5, 0.3])
            le[s0:end, n] += 0.6
            strag.append((jid, f"node{n:04d}", ts[s0], ts[end - 1] + (ts[1] - ts[0])))
        used += size * (end - start)
        k += 1
    return members, strag


def _incidents(rng, N: int, per_rack: int, T: int, ts, le, lat, count: int, effect: float = 1.0) -> list:
    rows, busy = [], np.zeros(T, dtype=bool)
    racks = np.arange(N) // per_rack
    kinds = ["fs_stall", "rack_network", "rack_power", "sched_storm"]
    for i in range(count):
        kind = kinds[i % len(kinds)]
        length = int(rng.integers(4, 20))
        for _ in range(50):
            s = int(rng.integers(5, T - length - 5))
            if not busy[s - 5 : s + length + 5].any():
                break
        busy[s : s + length] = True
        if kind.startswith("rack"):
            nodes = np.flatnonzero(racks == rng.integers(racks.max() + 1))
        else:
            share = 0.3 if kind == "fs_stall" else 0.7
            nodes = np.flatnonzero(rng.random(N) < share)
        sev = rng.uniform(0.7, 1.0, size=len(nodes))
        le[s : s + length, nodes] += effect * _EFFECT[kind] * sev
        lat[s : s + length, nodes] += effect * 0.5 * sev[:, None]
        rows.append((f"inc-{i:03d}", kind, ts[s], ts[s + length], sorted({f"rack-{racks[n]:02d}" for n in nodes}),
                     [f"node{n:04d}" for n in nodes]))  # fmt: skip
    return rows


def synthetic_day(
    nodes: int = 48, per_rack: int = 8, steps: int = 720, seed: int = 0, incidents: bool = True,
    stragglers: bool = True, n_incidents: int = 8, start: str = "2026-01-05", multinode_share: float = 0.4,
    effect: float = 1.0,
) -> dict[str, pd.DataFrame]:
    """One stretch of synthetic node scores and its truth (see the module docstring); ``effect``
    scales the incidents (0.25: faint, each touched node stays inside its normal range)."""
    rng = np.random.default_rng(seed)
    N, T = nodes, steps
    ts = pd.date_range(start, periods=T + 1, freq="60s", tz="UTC")
    centres = rng.normal(0, 1.5, size=(6, LATENT_DIM))
    levels = _LE_BASE + 0.3 * rng.standard_normal(6)
    flav = np.zeros((T, N), dtype=int)
    for n in range(N):  # single-node jobs: a new flavour every 20-120 steps
        t = 0
        while t < T:
            d = int(rng.integers(20, 120))
            flav[t : t + d, n] = rng.integers(len(levels))
            t += d
    le = levels[flav] + _LE_NOISE * rng.standard_normal((T, N))
    lat = centres[flav] + 0.15 * rng.standard_normal((T, N, LATENT_DIM))
    members, strag = _place_jobs(rng, N, T, multinode_share, ts, le, lat, centres, levels, stragglers)
    inc = _incidents(rng, N, per_rack, T, ts, le, lat, n_incidents, effect) if incidents else []
    for _ in range(int(0.002 * N * T)):  # single-node faults: not cluster incidents
        n, s = int(rng.integers(N)), int(rng.integers(T - 5))
        le[s : s + int(rng.integers(1, 5)), n] += rng.uniform(2.0, 4.0)
    names = np.array([f"node{n:04d}" for n in range(N)])
    scores = pd.DataFrame({"ts": np.repeat(ts[1:], N), "node": np.tile(names, T),
                           "error": np.exp(le).ravel(), "ood": (le > _OOD_LE).ravel()})  # fmt: skip
    for d in range(LATENT_DIM):
        scores[f"latent_{d}"] = lat[:, :, d].ravel().astype(np.float32)
    # labels in the simulator's convention: an event on steps [s, e) is on at interval ends ts[s+1..e]
    shift = ts[1] - ts[0]
    inc_frame = _frame([(i, k, s + shift, e + shift, r, n) for i, k, s, e, r, n in inc],
                       ["incident_id", "kind", "start", "end", "racks", "nodes"])  # fmt: skip
    job_frame = _frame([(j, f, n, s + shift, e + shift) for j, f, n, s, e in members],
                       ["job_id", "flavour", "node", "start", "end"])  # fmt: skip
    strag_frame = _frame([(j, n, s + shift, e + shift) for j, n, s, e in strag], ["job_id", "node", "start", "end"])
    topology = pd.DataFrame({"node": names, "rack": [f"rack-{n // per_rack:02d}" for n in range(N)]})
    return {"scores": scores, "topology": topology, "job_members": job_frame,
            "cluster_incidents": inc_frame, "stragglers": strag_frame}  # fmt: skip
