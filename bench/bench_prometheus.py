"""Benchmark: ingest one day of node exporter CPU counters from a real Prometheus.

    .venv/bin/python bench/bench_prometheus.py              # 200 nodes × 8 CPUs, 15 s scrapes
    .venv/bin/python bench/bench_prometheus.py --nodes 20   # a quick run

1. The simulator writes one synthetic UTC day as OpenMetrics (one file per 2 h window);
2. ``promtool tsdb create-blocks-from openmetrics`` turns it into TSDB blocks;
3. a Prometheus (127.0.0.1, free port, 100-year retention, compaction off) serves them;
4. the day is ingested, in one run, by
   - didact ``PrometheusSource`` (remote read, the default) → wide raw frames,
   - didact ``PrometheusSource(api="query")`` (JSON) → wide raw frames,
   - ``prometheus-api-client`` ``get_metric_range_data``, one call per node (the whole
     cluster in one call would not fit Prometheus' 50M-sample query limit, nor memory),
     with its default settings (gzip) and with ``Accept-Encoding: identity``; it stops at
     lists of ``[ts, "value"]`` (no DataFrame), which flatters it.

Prints samples/s of each and the ratios; ``--write-readme`` writes them with the command
into ``bench/README_prometheus.md``.  Needs ``scripts/install_system_deps.sh`` (prometheus,
promtool) and ``pip install prometheus-api-client==0.7.2``.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime as dt
import gc
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from didact_core.ingest.simulator import SimulatedCluster  # noqa: E402
from didact_core.ingest.openmetrics import write_openmetrics_windows  # noqa: E402
from didact_core.ingest.prometheus import PrometheusSource  # noqa: E402
from tests.services import find_binary, promtool_backfill, start_prometheus  # noqa: E402

log = logging.getLogger("bench_prometheus")


def build_tsdb(nodes: int, cpus: int, interval_s: float, day: dt.date, work: Path, jobs: int) -> dict:
    sim = SimulatedCluster(nodes_count=nodes, cpus=cpus, interval_s=interval_s, seed=0)
    t0 = time.perf_counter()
    files, stats = write_openmetrics_windows(sim.iter_blocks(day, nodes_per_block=25), work / "openmetrics")
    t1 = time.perf_counter()
    size = sum(f.stat().st_size for f in files)
    promtool = find_binary("promtool")
    with cf.ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(lambda f: promtool_backfill(f, work / "tsdb", promtool), files))
    t2 = time.perf_counter()
    shutil.rmtree(work / "openmetrics")
    tsdb_bytes = sum(p.stat().st_size for p in (work / "tsdb").rglob("*") if p.is_file())
    return {
        "cpu_samples_written": stats["cpu_samples"],
        "power_samples_written": stats["power_samples"],
        "openmetrics_bytes": size,
        "write_s": t1 - t0,
        "promtool_s": t2 - t1,
        "tsdb_bytes": tsdb_bytes,
        "files": len(files),
    }


def run_didact(url: str, day: dt.date, api: str, nodes_per_block: int = 64, chunks: bool = True) -> dict:
    src = PrometheusSource(url, api=api, remote_read_chunks=chunks)
    gc.collect()
    t0 = time.perf_counter()
    samples = rows = 0
    for block in src.iter_blocks(day, nodes_per_block=nodes_per_block):
        samples += block.meta["samples"]
        rows += len(block.cpu)
        del block
    el = time.perf_counter() - t0
    return {
        "samples": samples,
        "rows": rows,
        "seconds": el,
        "samples_per_s": samples / el,
        "requests": src.stats.requests,
        "bytes": src.stats.bytes,
        "concurrency": src.concurrency,
    }


def run_peer(url: str, day: dt.date, nodes: list[str], identity: bool) -> dict:
    from prometheus_api_client import PrometheusConnect

    pc = PrometheusConnect(
        url=url, disable_ssl=True, headers={"Accept-Encoding": "identity"} if identity else None
    )
    start = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
    end = start + dt.timedelta(days=1) - dt.timedelta(seconds=1)
    gc.collect()
    t0 = time.perf_counter()
    samples = 0
    for node in nodes:
        res = pc.get_metric_range_data(
            "node_cpu_seconds_total", label_config={"instance": node}, start_time=start, end_time=end
        )
        samples += sum(len(s["values"]) for s in res)
        del res
    el = time.perf_counter() - t0
    return {"samples": samples, "seconds": el, "samples_per_s": samples / el, "requests": len(nodes)}


def machine() -> str:
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    prom = subprocess.run(
        [find_binary("prometheus"), "--version"], capture_output=True, text=True
    ).stdout.split("\n")[0]
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {prom}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=200)
    ap.add_argument("--cpus", type=int, default=8)
    ap.add_argument("--interval", type=float, default=15.0, help="scrape interval of the synthetic day (s)")
    ap.add_argument("--day", default="2026-01-01")
    ap.add_argument("--workdir", help="keep the TSDB here (default: a temp folder, removed)")
    ap.add_argument("--promtool-jobs", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--skip-peer", action="store_true")
    ap.add_argument("--skip-query-api", action="store_true")
    ap.add_argument("--repeat", type=int, default=2, help="didact remote-read runs (best is reported)")
    ap.add_argument("--write-readme", action="store_true", help="write bench/README_prometheus.md")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    day = dt.date.fromisoformat(args.day)
    tmp = None
    work = Path(args.workdir) if args.workdir else Path(tmp := tempfile.mkdtemp(prefix="didact-bench-prom-"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {"nodes": args.nodes, "cpus": args.cpus, "interval_s": args.interval, "day": args.day}
    try:
        if not (work / "tsdb").exists():
            print(
                f"building the day: {args.nodes} nodes × {args.cpus} CPUs × "
                f"{86400 / args.interval:.0f} scrapes ...",
                flush=True,
            )
            results["build"] = build_tsdb(args.nodes, args.cpus, args.interval, day, work, args.promtool_jobs)
            (work / "build.json").write_text(json.dumps(results["build"]))
            b = results["build"]
            print(
                f"  OpenMetrics {b['openmetrics_bytes'] / 1e9:.2f} GB in {b['write_s']:.0f} s, promtool "
                f"{b['promtool_s']:.0f} s → TSDB {b['tsdb_bytes'] / 1e6:.0f} MB",
                flush=True,
            )
        elif (work / "build.json").exists():  # a kept --workdir: report how it was built
            results["build"] = json.loads((work / "build.json").read_text())
        with start_prometheus(
            work,
            storage=work / "tsdb",
            extra_args=["--storage.tsdb.min-block-duration=2h", "--storage.tsdb.max-block-duration=2h"],
        ) as prom:
            nodes = SimulatedCluster(nodes_count=args.nodes).nodes()
            runs = []
            for i in range(args.repeat):
                r = run_didact(prom.url, day, "auto")
                runs.append(r)
                print(
                    f"didact remote read  run {i + 1}: {r['samples']:,} samples in {r['seconds']:.1f} s = "
                    f"{r['samples_per_s'] / 1e6:.2f} M samples/s",
                    flush=True,
                )
            results["didact_remote_read"] = max(runs, key=lambda r: r["samples_per_s"])
            results["didact_remote_read_runs"] = [r["samples_per_s"] for r in runs]
            r = run_didact(prom.url, day, "remote_read", chunks=False)
            results["didact_remote_read_samples"] = r
            print(
                f"didact remote read SAMPLES: {r['samples']:,} samples in {r['seconds']:.1f} s = "
                f"{r['samples_per_s'] / 1e6:.2f} M samples/s",
                flush=True,
            )
            if not args.skip_query_api:
                r = run_didact(prom.url, day, "query")
                results["didact_query_api"] = r
                print(
                    f"didact JSON query   : {r['samples']:,} samples in {r['seconds']:.1f} s = "
                    f"{r['samples_per_s'] / 1e6:.2f} M samples/s",
                    flush=True,
                )
            if not args.skip_peer:
                for key, identity in (("peer_default", False), ("peer_identity", True)):
                    r = run_peer(prom.url, day, nodes, identity)
                    results[key] = r
                    print(
                        f"prometheus-api-client ({'identity' if identity else 'default, gzip'}): "
                        f"{r['samples']:,} samples in {r['seconds']:.1f} s = "
                        f"{r['samples_per_s'] / 1e6:.2f} M samples/s",
                        flush=True,
                    )
        best = results["didact_remote_read"]["samples_per_s"]
        if "peer_default" in results:
            results["speedup_vs_peer_default"] = best / results["peer_default"]["samples_per_s"]
            results["speedup_vs_peer_identity"] = best / results["peer_identity"]["samples_per_s"]
            print(
                f"didact vs prometheus-api-client: {results['speedup_vs_peer_default']:.1f}× (peer default), "
                f"{results['speedup_vs_peer_identity']:.1f}× (peer without gzip)"
            )
        ok = best >= 1e6 and results.get("speedup_vs_peer_default", 99) >= 5
        print(f"targets ≥ 1M samples/s and ≥ 5× the peer: {'met' if ok else 'NOT met'}")
        results["machine"] = machine()
        results["command"] = "python bench/bench_prometheus.py " + " ".join(
            argv if argv is not None else sys.argv[1:]
        )
        print(json.dumps(results, indent=1, default=str))
        if args.write_readme:
            write_readme(results)
        return 0
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


API_NOTES = """## Why remote read with XOR chunks (development measurements, same 2-core box)

One request for 5 nodes × 8 CPUs × 8 modes of a 15 s day (320 series, 1.84 M samples):

| API | bytes on the wire | Prometheus answers in | client decode |
|---|---:|---:|---:|
| `/api/v1/query` JSON, gzip (requests' default) | 21 MB | 4.6–5.9 s (gzip is the cost) | — |
| `/api/v1/query` JSON, identity | 61 MB | 0.50 s | 1.18 s byte scanner + `numpy.fromstring` [1] |
| `/api/v1/read` SAMPLES (snappy protobuf) | 25.8 MB | 0.27–0.30 s | 0.055 s snappy + 0.10 s numpy |
| `/api/v1/read` STREAMED_XOR_CHUNKS | 11.7 MB | 0.03–0.04 s | 0.06 s frames + 0.25–0.29 s numpy |

[1] for comparison `orjson.loads` alone took 2.46 s and `json.loads` 2.43 s, plus 0.56 s
to turn the lists into arrays.

A whole 20-node day (7.37 M samples) through `iter_blocks`: XOR chunks cost Prometheus
0.11 s of CPU and the client 1.2–1.4 s (48 MB); SAMPLES cost Prometheus 1.6–1.7 s and
the client 0.9–1.1 s (105 MB).  Both give bit-identical frames.  Chunks win where it
matters: the shared Prometheus does almost no work and a third of the bytes cross the
network; the price is client CPU (a compiled Gorilla decoder would remove most of it).
orjson was not adopted: on this payload it is no faster than `json` (the cost is building
Python objects), and the byte scanner avoids them altogether.

The machine is shared with other developers' jobs (load average ~4 on 2 cores during
these runs), so absolute figures are lower bounds; the ratios come from one run."""


def write_readme(r: dict) -> None:
    path = REPO / "bench" / "README_prometheus.md"
    rr = r["didact_remote_read"]
    lines = [
        "# Prometheus ingest benchmark",
        "",
        f"`{r['command'].replace('--write-readme', '').strip()}` on {r['machine']}.",
        "",
        f"One synthetic UTC day ({r['day']}): {r['nodes']} nodes × {r['cpus']} CPU threads × 8 modes, "
        f"{r['interval_s']:g} s scrapes = {rr['samples']:,} `node_cpu_seconds_total` samples, written by the "
        "simulator as OpenMetrics, backfilled with `promtool tsdb create-blocks-from openmetrics`, "
        "served by a local "
        "Prometheus (compaction off), ingested in one run:",
        "",
        "| reader | samples/s | seconds | notes |",
        "|---|---:|---:|---|",
        f"| didact `PrometheusSource` (remote read, default) | **{rr['samples_per_s'] / 1e6:.2f} M** | "
        f"{rr['seconds']:.1f} | best of {len(r['didact_remote_read_runs'])} "
        f"({', '.join(f'{x / 1e6:.2f} M' for x in r['didact_remote_read_runs'])}); "
        f"{rr['requests']} requests, "
        f"concurrency {rr['concurrency']}; output: wide raw frames |",
    ]
    if "didact_remote_read_samples" in r:
        q = r["didact_remote_read_samples"]
        lines.append(
            f"| didact, remote read asking for SAMPLES (`remote_read_chunks=False`) | "
            f"{q['samples_per_s'] / 1e6:.2f} M | {q['seconds']:.1f} | {q['requests']} requests |"
        )
    if "didact_query_api" in r:
        q = r["didact_query_api"]
        lines.append(
            f'| didact `PrometheusSource(api="query")` (JSON) | {q["samples_per_s"] / 1e6:.2f} M | '
            f"{q['seconds']:.1f} | {q['requests']} requests; output: wide raw frames |"
        )
    for key, note in (("peer_default", "defaults (gzip)"), ("peer_identity", "`Accept-Encoding: identity`")):
        if key in r:
            p = r[key]
            lines.append(
                f"| prometheus-api-client 0.7.2 `get_metric_range_data` | {p['samples_per_s'] / 1e6:.2f} M | "
                f'{p["seconds"]:.1f} | {note}; one call per node; output: lists of `[ts, "value"]` |'
            )
    if "speedup_vs_peer_default" in r:
        lines += [
            "",
            f"didact is **{r['speedup_vs_peer_default']:.1f}×** the peer with its defaults and "
            f"{r['speedup_vs_peer_identity']:.1f}× the peer without gzip.",
        ]
    if "build" in r:
        b = r["build"]
        lines += [
            "",
            f"Setup (not timed above): OpenMetrics {b['openmetrics_bytes'] / 1e9:.2f} GB in {b['files']} "
            f"files written in {b['write_s']:.0f} s; promtool {b['promtool_s']:.0f} s; TSDB "
            f"{b['tsdb_bytes'] / 1e6:.0f} MB.",
        ]
    raw = json.dumps(r, indent=1, default=str)
    lines += ["", API_NOTES, "", "Raw figures:", "", "```json", raw, "```", ""]
    path.write_text("\n".join(lines))
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
