"""Serving benchmark: scoring latency of one interval, and /metrics scrape time.

    python bench/bench_scoring.py                  # 1,250 nodes x 8 CPUs = 10,000 samples; 1,000-node scrape
    python bench/bench_scoring.py --quick          # fewer repeats
    python bench/bench_scoring.py --no-scrape      # scoring only
    python bench/bench_scoring.py --no-rich        # the default model only

1. A detector with the champion's architecture (``ModelConfig()``: autoencoder 5-144-128-2,
   39,367 parameters) trained for a few epochs on one simulated day's AI-ready data.
2. **Scoring 10,000 node-CPU samples** (``--nodes`` x ``--cpus``): two consecutive polls of
   the simulated live feed, then, ``--repeats`` times, in the same process:
   - *model*: ``LoadedModel.score`` — feature transform + one forward pass (error and
     latent coordinates) of all samples;
   - *interval*: ``Scorer.score`` — what serving does every interval: validate the poll,
     pair it with the previous one, ``preprocess`` (counters → fractions), the model, and
     the per-node aggregation (mean/max error, latent mean, OOD flag);
   - *export*: ``ServingMetrics.interval`` — updating the exported state.
   Median and p99 (target: interval ≤ 10 ms on CPU).
   The same for a **rich + window-3 model** (``DIDACT_FEATURES=cpu,node DIDACT_WINDOW=3``:
   the five fractions + ten node-level features, three timesteps = 45 input columns,
   log1p + standardisation, otherwise ``ModelConfig()``), trained on the same day
   preprocessed with node-level metrics and window 3.  Its interval also polls the
   node-level metrics, pairs them, joins their rates (``preprocess``) and builds the
   lags from the rolling window buffer (four polls first, so every series has history).
3. **/metrics scrape time for 1,000 nodes** (``--scrape-nodes`` x ``--cpus``): the real
   ``python -m didact_core.serve.cli`` in a subprocess (a temporary DIDACT_HOME whose
   registry holds the benchmark model as champion, the simulated feed), HTTP GET
   ``/metrics`` ``--scrape-repeats`` times while it keeps scoring every 2 s; median, p99
   and the body size.  Twice: with the default cardinality cap (8,000 node-CPU series >
   4,096, so no per-CPU series) and with the cap lifted (every per-CPU series).
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from didact_core.config import Settings
from didact_core.ingest.live import SimulatedLiveFeed
from didact_core.learn.models import ModelConfig, hidden_for
from didact_core.learn.detector import Detector
from didact_core.data.preprocess import feature_columns, preprocess
from didact_core.serve import LoadedModel, Scorer, ServingMetrics
from didact_core.ingest.simulator import SimulatedCluster
from didact_core.testbed import free_port


def stats_ms(seconds: list[float]) -> tuple[float, float, float]:
    a = np.asarray(seconds) * 1e3
    return float(np.median(a)), float(np.percentile(a, 99)), float(a.min())


def train_model(epochs: int) -> tuple[Detector, float]:
    """The default architecture, trained on one simulated day (32 nodes x 8 CPUs, 60 s)."""
    t0 = time.perf_counter()
    sim = SimulatedCluster(nodes_count=32, cpus=8, interval_s=60.0, seed=1)
    day = dt.date.today() - dt.timedelta(days=2)
    ai, _ = preprocess(sim.fetch_day(day).cpu)
    X = ai[["idle", "iowait", "system", "user", "other"]].sample(n=min(len(ai), 200_000), random_state=0)
    det = Detector(ModelConfig(max_epochs=epochs)).fit(X)
    return det, time.perf_counter() - t0


RICH_FEATURES = ("cpu", "node")
RICH_WINDOW = 3


def train_rich_model(epochs: int) -> tuple[Detector, float]:
    """The default model over cpu,node features with window 3 (51 columns, log1p + standardise,
    widths sized to about 40K parameters as training sizes them), trained on the same simulated
    day, preprocessed with node-level metrics."""
    t0 = time.perf_counter()
    sim = SimulatedCluster(nodes_count=32, cpus=8, interval_s=60.0, seed=1)
    day = dt.date.today() - dt.timedelta(days=2)
    block = sim.fetch_day(day)
    ai, _ = preprocess(block.cpu, RICH_FEATURES, node_metrics=block.node_metrics, window=RICH_WINDOW)
    cols = feature_columns(RICH_FEATURES, RICH_WINDOW)
    X = ai[list(cols)].sample(n=min(len(ai), 200_000), random_state=0)
    cfg = ModelConfig(n_features=len(cols), hidden=hidden_for(len(cols)), max_epochs=epochs, log1p=True,
                      standardize=True)
    det = Detector(cfg, cols).fit(X)
    return det, time.perf_counter() - t0


def bench_scoring(det: Detector, nodes: int, cpus: int, repeats: int) -> dict:
    s = Settings(
        home=tempfile.mkdtemp(prefix="didact-bench-"), nodes=nodes, cpus=cpus, interval_s=15.0, seed=3
    )
    model = LoadedModel(det, version=1)
    ticks = iter(range(10**9))  # a poll per tick, a tick per simulated scrape: every scrape is seen once
    feed = SimulatedLiveFeed(s, speed=15, start=time.time(), clock=lambda: float(next(ticks)))
    need = model.needs_node_metrics
    t0 = time.perf_counter()
    polls = []
    for _ in range(model.window + 1):
        raw = feed.poll(node_metrics=need)
        polls.append((raw, feed.node_metrics()))
    gen_s = time.perf_counter() - t0
    scorer = Scorer(interval_s=feed.scrape_interval_s)
    for raw, nm in polls[:-1]:  # the first polls pair up and fill the window buffer
        scorer.score(raw, model, node_metrics=nm)
    first, nodes_before = scorer._prev, copy.deepcopy(scorer._nodes)
    last_raw, last_nm = polls[-1]
    res = scorer.score(last_raw, model, node_metrics=last_nm)
    n = len(res.samples)
    X = res.samples[list(model.features)].to_numpy(dtype=np.float32)
    metrics = ServingMetrics(cpu_label_cap=4096)
    t_model, t_interval, t_export = [], [], []
    for _ in range(3):  # warm-up
        model.score(X)
    for _ in range(repeats):
        t = time.perf_counter()
        model.score(X)
        t_model.append(time.perf_counter() - t)
        scorer._prev, scorer._nodes = first, copy.deepcopy(nodes_before)
        t = time.perf_counter()
        r = scorer.score(last_raw, model, node_metrics=last_nm)
        t_interval.append(time.perf_counter() - t)
        t = time.perf_counter()
        metrics.interval(r, feed.power(), time.time(), 0.0, 0)
        t_export.append(time.perf_counter() - t)
    shutil.rmtree(s.home, ignore_errors=True)
    return {
        "samples": n,
        "nodes": nodes,
        "gen_s": gen_s,
        "model": stats_ms(t_model),
        "interval": stats_ms(t_interval),
        "export": stats_ms(t_export),
        "fused": model._fused,
        "columns": len(model.features),
        "incomplete": res.report.window_incomplete,
    }


def bench_scrape(det: Detector, nodes: int, cpus: int, repeats: int, cap: int, workdir: Path) -> dict:
    """The real serving process over ``nodes`` simulated nodes; GET /metrics ``repeats`` times."""
    from didact_core.learn.registry import ModelRegistry

    home = workdir / f"home-{cap}"
    s = Settings(home=str(home), nodes=nodes, cpus=cpus, interval_s=60.0, seed=3)
    reg = ModelRegistry(s)
    with reg.run("bench-scoring"):
        v = reg.log_and_register(det, np.full((8, 5), 0.2, dtype=np.float32)).version
    reg.promote(v)
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "DIDACT_HOME": str(home),
        "DIDACT_NODES": str(nodes),
        "DIDACT_CPUS": str(cpus),
        "DIDACT_INTERVAL_S": "60",
        "DIDACT_SEED": "3",
    }
    argv = [
        sys.executable,
        "-m",
        "didact_core.serve.cli",
        "--port",
        str(port),
        "--interval",
        "2",
        "--reload",
        "60",
        "--speed",
        "30",
        "--cpu-label-cap",
        str(cap),
        "--no-review",
        "--log-level",
        "WARNING",
    ]
    log = open(workdir / f"serve-{cap}.log", "wb")  # noqa: SIM115 — closed below, after the process
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        t0 = time.monotonic()
        body = b""
        while time.monotonic() - t0 < 300:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"serving exited {proc.returncode}: {(workdir / f'serve-{cap}.log').read_text()[-2000:]}"
                )
            try:
                body = requests.get(url, timeout=30).content
                if body.count(b"didact_reconstruction_error{") >= nodes:
                    break
            except requests.RequestException:
                pass
            time.sleep(1)
        else:
            raise RuntimeError("serving did not export every node within 300 s")
        ready_s = time.monotonic() - t0
        times, sizes = [], []
        for _ in range(repeats):
            t = time.perf_counter()
            r = requests.get(url, timeout=30)
            times.append(time.perf_counter() - t)
            sizes.append(len(r.content))
            time.sleep(0.05)
        series = sum(1 for line in r.text.splitlines() if line and not line.startswith("#"))
        return {
            "cap": cap,
            "scrape": stats_ms(times),
            "bytes": int(np.median(sizes)),
            "series": series,
            "ready_s": ready_s,
        }
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=1250, help="nodes scored per interval (default 1,250)")
    p.add_argument("--cpus", type=int, default=8, help="CPU threads per node (default 8)")
    p.add_argument("--repeats", type=int, default=200, help="scoring repeats (default 200)")
    p.add_argument("--scrape-nodes", type=int, default=1000, help="nodes behind /metrics (default 1,000)")
    p.add_argument("--scrape-repeats", type=int, default=50, help="GET /metrics repeats (default 50)")
    p.add_argument("--epochs", type=int, default=3, help="training epochs of the benchmark model (default 3)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--no-scrape", action="store_true", help="skip the /metrics benchmark")
    p.add_argument("--no-rich", action="store_true", help="skip the rich + window-3 model")
    p.add_argument("--quick", action="store_true", help="50 scoring repeats, 20 scrapes")
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.scrape_repeats = 50, 20
    if args.threads:
        torch.set_num_threads(args.threads)
    load0 = os.getloadavg()
    print(
        f"# didact scoring benchmark — {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), load average {load0[0]:.2f}"
    )
    det, train_s = train_model(args.epochs)
    print(
        f"# model: ModelConfig() ({det.n_params:,} parameters), "
        f"trained {args.epochs} epochs in {train_s:.1f} s"
    )
    sc = bench_scoring(det, args.nodes, args.cpus, args.repeats)
    print(
        f"# scoring: {sc['samples']:,} node-CPU samples ({sc['nodes']:,} nodes x {args.cpus} CPUs), "
        f"{args.repeats} repeats; one-pass model: {sc['fused']}; feed's first polls {sc['gen_s']:.1f} s"
    )
    rows = [
        ("model: transform + forward (error, latent)", sc["model"]),
        ("interval: preprocess + model + per-node", sc["interval"]),
        ("export: update the exported state", sc["export"]),
    ]
    rich = None
    if not args.no_rich:
        rdet, rtrain_s = train_rich_model(args.epochs)
        print(
            f"# rich model: {len(rdet.feature_names)} columns (cpu,node x window {RICH_WINDOW}), "
            f"log1p + standardise, {rdet.n_params:,} parameters, trained {args.epochs} epochs in {rtrain_s:.1f} s"
        )
        rich = bench_scoring(rdet, args.nodes, args.cpus, args.repeats)
        print(
            f"# rich scoring: {rich['samples']:,} samples (series without history: {rich['incomplete']}); "
            f"one-pass model: {rich['fused']}; feed's first polls (with node metrics) {rich['gen_s']:.1f} s"
        )
        rows += [
            (f"rich+w{RICH_WINDOW} model: transform + forward ({rich['columns']} cols)", rich["model"]),
            (f"rich+w{RICH_WINDOW} interval: + node metrics, window buffer", rich["interval"]),
            (f"rich+w{RICH_WINDOW} export", rich["export"]),
        ]
    scrapes = []
    if not args.no_scrape:
        work = Path(tempfile.mkdtemp(prefix="didact-bench-scrape-"))
        try:
            for cap in (4096, args.scrape_nodes * args.cpus):
                scrapes.append(
                    bench_scrape(det, args.scrape_nodes, args.cpus, args.scrape_repeats, cap, work)
                )
        finally:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(f"{'measure':58s} {'median ms':>10s} {'p99 ms':>8s} {'min ms':>8s}")
    for name, (med, p99, mn) in rows:
        print(f"{name:58s} {med:>10.2f} {p99:>8.2f} {mn:>8.2f}")
    for r in scrapes:
        name = (
            f"GET /metrics, {args.scrape_nodes:,} nodes, cap {r['cap']:,} "
            f"({r['series']:,} series, {r['bytes'] / 1e6:.2f} MB)"
        )
        med, p99, mn = r["scrape"]
        print(f"{name:58s} {med:>10.2f} {p99:>8.2f} {mn:>8.2f}")
    print()
    target = "met" if sc["interval"][0] <= 10 else "NOT met"
    print(
        f"# target interval ≤ 10 ms for 10,000 samples: {target} ({sc['samples']:,} samples, median {sc['interval'][0]:.2f} ms)"
    )
    if rich is not None:
        target = "met" if rich["interval"][0] <= 10 else "NOT met"
        print(f"# rich + window-{RICH_WINDOW} model: {target} (median {rich['interval'][0]:.2f} ms)")
    print(
        f"# load average at start {load0[0]:.2f}, at end {os.getloadavg()[0]:.2f} (other work on the machine "
        "inflates the p99)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
