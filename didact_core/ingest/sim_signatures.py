"""The simulator's tables: each job flavour's CPU-mode signature and node-level rates, and the
labelled behavioural faults (moved out of ``simulator`` so that ``sim_cluster`` can use them;
``didact_core.ingest.simulator`` re-exports every name)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from didact_core.schema import CPU_MODES

__all__ = ["FAULTS", "IDLE_SIGNATURE", "NODE_MEMORY_GB", "NODE_SIGNATURES", "SIGNATURES", "FlavourSignature", "sig"]

_M = {m: i for i, m in enumerate(CPU_MODES)}


def sig(**fractions: float) -> np.ndarray:
    """A signature vector over CPU_MODES from keyword fractions (normalised)."""
    v = np.zeros(len(CPU_MODES))
    for mode, f in fractions.items():
        v[_M[mode]] = f
    return v / v.sum()


@dataclass(frozen=True)
class FlavourSignature:
    """How the simulator draws a job flavour: which CPU threads it keeps busy, how their
    time splits between the CPU modes, and how long its jobs run.  ``name`` is the
    flavour's label."""

    name: str
    #: CPU threads the job keeps busy; 0 = none (idle), -1 = all of the node's
    threads: int
    signature: tuple
    #: job duration: median minutes and log-normal sigma
    median_minutes: float
    sigma: float = 0.5
    weight: float = 1.0


IDLE_SIGNATURE = sig(idle=0.975, iowait=0.004, irq=0.001, softirq=0.002, system=0.008, user=0.010)

#: The reference testbed's job flavours (DESIGN.md), idle CPUs included, by label.
SIGNATURES: dict[str, FlavourSignature] = {
    f.name: f
    for f in [
        FlavourSignature("idle", 0, tuple(IDLE_SIGNATURE), 30, 0.6, weight=2.0),
        FlavourSignature("io_good", -1, tuple(sig(idle=0.40, iowait=0.12, irq=0.01, softirq=0.05, system=0.17, user=0.25)), 45),
        FlavourSignature("io_bad", -1, tuple(sig(idle=0.18, iowait=0.55, irq=0.01, softirq=0.04, system=0.14, user=0.08)), 45),
        FlavourSignature("mpi_2", 2, tuple(sig(idle=0.02, irq=0.005, softirq=0.025, system=0.20, user=0.75)), 90),
        FlavourSignature("mpi_16", -1, tuple(sig(idle=0.01, irq=0.01, softirq=0.07, system=0.42, user=0.49)), 90),
        FlavourSignature("reco_1t", 1, tuple(sig(idle=0.03, iowait=0.01, irq=0.002, softirq=0.003, system=0.045, user=0.91)), 60),
        FlavourSignature("reco_2t", 2, tuple(sig(idle=0.03, iowait=0.01, irq=0.002, softirq=0.003, system=0.045, user=0.91)), 60),
        FlavourSignature("reco_4t", 4, tuple(sig(idle=0.03, iowait=0.01, irq=0.002, softirq=0.003, system=0.045, user=0.91)), 60),
        FlavourSignature("reco_8t", 8, tuple(sig(idle=0.03, iowait=0.01, irq=0.002, softirq=0.003, system=0.045, user=0.91)), 60),
        FlavourSignature("fit_amplitude", -1, tuple(sig(idle=0.08, irq=0.002, softirq=0.004, system=0.12, user=0.794)), 40),
        FlavourSignature("fit_mcmc", 1, tuple(sig(idle=0.02, irq=0.001, nice=0.88, softirq=0.002, system=0.02, user=0.077)), 40),
        FlavourSignature("fit_minuit", 1, tuple(sig(idle=0.30, irq=0.002, softirq=0.003, system=0.03, user=0.665)), 30),
    ]
}

#: Labelled behavioural faults: the signature replaces the job's on every CPU thread.
FAULTS: dict[str, np.ndarray] = {
    "cpu_hog": sig(idle=0.01, system=0.02, user=0.97),
    "io_stall": sig(idle=0.08, iowait=0.85, system=0.05, user=0.02),
    "steal_storm": sig(idle=0.05, steal=0.50, system=0.05, user=0.40),
    "softirq_storm": sig(idle=0.10, softirq=0.45, irq=0.05, system=0.15, user=0.25),
}


#: node-level signature per flavour: per-second rates of NODE_COUNTERS (context
#: switches, interrupts, disk busy seconds, disk bytes read/written, page faults,
#: network bytes in/out) and the memory in use (GB)
_NODE = {
    #             ctxt     intr   disk_io  read_B  write_B  pgfault  rx_B   tx_B  mem_GB
    "idle":      (1.5e3,   8e2,   0.002,   1e3,    2e4,     2e2,     2e3,   2e3,  1.5),
    "io_good":   (8e3,     6e3,   0.55,    4e7,    1.6e8,   3e3,     1e4,   1e4,  6),
    "io_bad":    (4.5e4,   3e4,   0.97,    5e5,    3e6,     1.5e3,   1e4,   1e4,  3),
    "mpi_2":     (2.5e4,   1.2e4, 0.01,    1e4,    5e4,     8e3,     8e7,   8e7,  8),
    "mpi_16":    (1.8e5,   6e4,   0.01,    1e4,    5e4,     3e4,     4e8,   4e8,  24),
    "reco_1t":   (3e3,     2e3,   0.05,    8e6,    1e6,     2e4,     5e3,   5e3,  3),
    "reco_2t":   (5e3,     3e3,   0.08,    1.6e7,  2e6,     4e4,     5e3,   5e3,  5),
    "reco_4t":   (9e3,     5e3,   0.12,    3.2e7,  4e6,     8e4,     5e3,   5e3,  9),
    "reco_8t":   (1.7e4,   9e3,   0.2,     6.4e7,  8e6,     1.6e5,   5e3,   5e3,  17),
    "fit_amplitude": (1.2e4, 7e3, 0.01,    1e5,    1e5,     1.2e5,   1e4,   1e4,  20),
    "fit_mcmc":  (2.5e3,   1.5e3, 0.001,   1e4,    1e4,     5e2,     2e3,   2e3,  1),
    "fit_minuit": (2e3,    1.2e3, 0.001,   1e4,    1e4,     3e3,     2e3,   2e3,  2),
    # labelled faults
    "cpu_hog":   (1e3,     9e2,   0.001,   0,      0,       1e2,     1e3,   1e3,  2),
    "io_stall":  (5e2,     4e2,   1.0,     1e3,    1e3,     1e2,     1e3,   1e3,  4),
    "steal_storm": (4e3,   3e3,   0.01,    1e4,    1e4,     2e3,     5e3,   5e3,  4),
    "softirq_storm": (5e4, 3e5,   0.01,    1e4,    1e4,     1e3,     5e8,   5e8,  4),
}  # fmt: skip
NODE_SIGNATURES = {k: np.asarray(v[:8], dtype=np.float64) for k, v in _NODE.items()}
NODE_MEMORY_GB = {k: v[8] for k, v in _NODE.items()}
