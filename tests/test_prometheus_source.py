"""Reading a day of node exporter metrics from a real Prometheus.

- a live Prometheus scraping a real node exporter every second;
- a Prometheus filled by ``promtool tsdb create-blocks-from openmetrics`` with a
  simulated day (what goes in comes out, sample for sample);
- faults: a tiny local HTTP proxy in front of the real Prometheus injects them (refused
  connections, 500/503, slow answers, 401, a missing remote-read endpoint) — the proxy is
  the fault, Prometheus behind it is real.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import http.client
import http.server
import json
import threading
import time
import types

import numpy as np
import pandas as pd
import pytest

from didact_core.errors import DidactError, SourceUnavailableError
from didact_core.schema import CPU_MODES, RAW_CPU_COLUMNS, RAW_POWER_COLUMNS
from didact_core.ingest.openmetrics import format_timestamps, write_openmetrics, write_openmetrics_windows
from didact_core.ingest.prometheus import PrometheusSource, wire, xorchunks
from tests.services import (
    free_port,
    promtool_backfill,
    start_node_exporter,
    start_prometheus,
    utc_day_with_room,
    wait_for_samples,
)

# -- helpers -----------------------------------------------------------------------------------


def canonical_cpu(df: pd.DataFrame) -> pd.DataFrame:
    """Sorted by (node, cpu, ts), first of each repeated timestamp, plain dtypes."""
    out = df.assign(node=df["node"].astype(str)).sort_values(["node", "cpu", "ts"], kind="stable")
    out = out.drop_duplicates(["node", "cpu", "ts"], keep="first").reset_index(drop=True)
    return out[list(RAW_CPU_COLUMNS)]


def checksum(df: pd.DataFrame, value_cols) -> tuple[int, str]:
    """(number of values, sha256 over keys and value bits; NaNs of any payload hash alike)."""
    h = hashlib.sha256()
    h.update(df["node"].astype(str).str.cat(sep="|").encode())
    for col in [c for c in ("cpu", "source") if c in df.columns]:
        h.update(df[col].astype(str).str.cat(sep="|").encode())
    h.update(df["ts"].array.asi8.tobytes())
    n = 0
    for col in value_cols:
        v = df[col].to_numpy(dtype=np.float64).copy()
        v[np.isnan(v)] = -1.0e300
        h.update(v.tobytes())
        n += len(v)
    return n, h.hexdigest()


# -- (b) a simulated day, backfilled with promtool ------------------------------------------------


@pytest.fixture(scope="module")
def backfilled(tmp_path_factory):
    from didact_core.ingest.simulator import SimulatedCluster

    tmp = tmp_path_factory.mktemp("backfill")
    sim = SimulatedCluster(nodes_count=4, cpus=2, interval_s=15.0, seed=3)  # data faults left on
    day = dt.date(2026, 2, 3)
    block = sim.fetch_day(day)
    files, stats = write_openmetrics_windows(block, tmp / "openmetrics")
    for f in files:
        promtool_backfill(f, tmp / "tsdb")
    with start_prometheus(tmp, storage=tmp / "tsdb") as prom:
        yield types.SimpleNamespace(prom=prom, sim=sim, day=day, block=block, stats=stats, tmp=tmp)


@pytest.mark.slow
def test_backfilled_day_comes_back_sample_for_sample(backfilled):
    b = backfilled
    src = PrometheusSource(b.prom.url)
    assert src.nodes(b.day) == b.sim.nodes()
    blocks = list(src.iter_blocks(b.day, nodes_per_block=3))
    assert [len(x.cpu["node"].unique()) for x in blocks] == [3, 1]
    got = pd.concat([x.cpu for x in blocks], ignore_index=True)
    assert list(got.columns) == list(RAW_CPU_COLUMNS) and str(got["ts"].dtype) == "datetime64[ms, UTC]"
    # series ordered (node, cpu, ts)
    assert got.equals(got.sort_values(["node", "cpu", "ts"], kind="stable"))

    written = canonical_cpu(b.block.cpu)
    n_written, sum_written = checksum(written, CPU_MODES)
    n_got, sum_got = checksum(canonical_cpu(got), CPU_MODES)
    assert n_written == b.stats["cpu_samples"]
    assert sum(x.meta["samples"] for x in blocks) == n_written == n_got
    assert sum_got == sum_written
    injected = b.block.meta["data_faults"]
    assert b.stats["duplicates_dropped"] == injected["duplicate"] * b.sim.cpus

    # power went in as didact_power_watts{source="simulator"} and comes back unchanged
    power = pd.concat([x.power for x in blocks], ignore_index=True)
    assert list(power.columns) == list(RAW_POWER_COLUMNS)
    want = (
        b.block.power.assign(node=b.block.power["node"].astype(str))
        .sort_values(["node", "ts"])
        .reset_index(drop=True)
    )
    assert checksum(power, ["watts"]) == checksum(want[list(RAW_POWER_COLUMNS)], ["watts"])
    assert blocks[0].missing_nodes == [] and blocks[0].meta["api"] == "remote_read"


@pytest.mark.slow
def test_query_api_reads_the_same_day(backfilled):
    b = backfilled
    rr = PrometheusSource(b.prom.url, api="remote_read").read_day(b.day)
    # small chunks: many time windows and node groups per block
    q = PrometheusSource(b.prom.url, api="query", max_samples_per_query=20_000, max_points_per_series=1000)
    got = q.read_day(b.day)
    assert got.meta["requests"] > 20
    pd.testing.assert_frame_equal(canonical_cpu(got.cpu), canonical_cpu(rr.cpu))
    assert checksum(got.power, ["watts"]) == checksum(rr.power, ["watts"])


@pytest.mark.slow
def test_missing_nodes_are_listed_not_raised(backfilled):
    b = backfilled
    expected = b.sim.nodes() + ["node0099", "node0100"]
    src = PrometheusSource(b.prom.url, nodes=expected)
    assert src.nodes(b.day) == sorted(expected)
    blocks = list(src.iter_blocks(b.day, nodes_per_block=2))
    assert blocks[0].missing_nodes == ["node0099", "node0100"]
    assert all(x.missing_nodes == [] for x in blocks[1:])
    assert blocks[0].meta["expected_nodes"] == 6


@pytest.mark.slow
def test_a_day_without_data_is_a_clear_error(backfilled):
    src = PrometheusSource(backfilled.prom.url)
    with pytest.raises(SourceUnavailableError) as err:
        list(src.iter_blocks(backfilled.day + dt.timedelta(days=30)))
    msg = str(err.value)
    assert "no node_cpu_seconds_total series" in msg and "retention" in msg


# -- (a) a live node exporter -------------------------------------------------------------------------


@pytest.mark.slow
def test_live_node_exporter_counters(tmp_path):
    from didact_core.data.preprocess import preprocess

    day = utc_day_with_room()  # every sample scraped below falls on it
    with (
        start_node_exporter(tmp_path) as ne,
        start_prometheus(tmp_path, [ne.address], scrape_interval="1s") as prom,
    ):
        wait_for_samples(
            prom, 'count_over_time(node_cpu_seconds_total{mode="idle",cpu="0"}[1m])', 5, timeout=45
        )
        src = PrometheusSource(prom.url)
        assert src.nodes(day) == ["127.0.0.1"]  # instance 127.0.0.1:<port>, port stripped
        block = src.read_day(day)
    cpu = block.cpu
    assert set(cpu["node"].astype(str)) == {"127.0.0.1"}
    assert cpu["cpu"].nunique() >= 1 and cpu.groupby("cpu").size().min() >= 4
    assert not cpu[list(CPU_MODES)].isna().any().any(), "all 8 modes present on every scrape"
    for c, g in cpu.groupby("cpu"):
        assert g["ts"].is_monotonic_increasing
        for mode in CPU_MODES:
            steps = np.diff(g[mode].to_numpy())
            # Linux may move a CPU's iowait back a little (a known kernel quirk); all else never decreases
            floor = -0.5 if mode == "iowait" else 0.0
            assert (steps >= floor).all(), f"cpu {c} {mode} went backwards: {steps.min()}"
    ai, report = preprocess(cpu)
    assert len(ai) > 0 and report.counter_resets == 0
    fractions = ai[["idle", "iowait", "system", "user", "other"]].astype(np.float64).sum(axis=1)
    np.testing.assert_allclose(fractions, 1.0, atol=1e-5)


# -- (c) faults ----------------------------------------------------------------------------------------


class FaultProxy:
    """A local HTTP proxy to a real Prometheus that injects faults.

    ``script``: actions for the next requests ("pass", "500", "503", "slow"); then
    ``default``.  ``auth``: an Authorization header value it demands.  ``no_remote_read``:
    answer /api/v1/read with 404 as a server without it would.
    """

    def __init__(self, upstream_port: int, port: int | None = None):
        self.upstream_port = upstream_port
        self.port = port or free_port()
        self.script: list[str] = []
        self.default = "pass"
        self.auth: str | None = None
        self.no_remote_read = False
        self.slow_s = 1.5
        self.seen: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.server: http.server.ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def next_action(self, path: str) -> str:
        with self.lock:
            action = self.script.pop(0) if self.script else self.default
            self.seen.append((path, action))
            return action

    def start(self) -> FaultProxy:
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):  # keep pytest output clean
                pass

            def _reply(self, status: int, body: bytes, ctype="application/json", extra=()):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in extra:
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def _handle(self, method: str):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
                path = self.path.split("?")[0]
                action = proxy.next_action(path)
                if proxy.auth and self.headers.get("Authorization") != proxy.auth:
                    return self._reply(401, b"Unauthorized\n", "text/plain")
                if proxy.no_remote_read and path == "/api/v1/read":
                    return self._reply(404, b"404 page not found\n", "text/plain")
                if action in ("500", "503"):
                    err = {"status": "error", "errorType": "internal", "error": "injected fault"}
                    return self._reply(int(action), json.dumps(err).encode())
                if action == "slow":
                    time.sleep(proxy.slow_s)
                conn = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=30)
                try:
                    headers = {
                        k: v for k, v in self.headers.items() if k.lower() not in ("host", "authorization")
                    }
                    conn.request(method, self.path, body=body or None, headers=headers)
                    r = conn.getresponse()
                    data = r.read()
                    extra = [(k, v) for k, v in r.getheaders() if k.lower() == "content-encoding"]
                    self._reply(
                        r.status, data, r.getheader("Content-Type", "application/octet-stream"), extra
                    )
                finally:
                    conn.close()

            def do_GET(self):
                self._handle("GET")

            def do_POST(self):
                self._handle("POST")

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True
            block_on_close = False

            def handle_error(self, request, client_address):  # a client that gave up (timeout test)
                pass

        server = Server(("127.0.0.1", self.port), Handler)
        self.server = server
        self.thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.thread.join(5)
            self.server = None


@pytest.fixture
def proxy(backfilled):
    p = FaultProxy(backfilled.prom.port).start()
    yield p
    p.stop()


def _fast(url: str, **kw) -> PrometheusSource:
    kw.setdefault("retries", 2)
    return PrometheusSource(
        url,
        backoff_s=0.05,
        max_backoff_s=0.2,
        connect_timeout_s=1.0,
        timeout_s=kw.pop("timeout_s", 10.0),
        **kw,
    )


@pytest.mark.slow
def test_unreachable_server_is_a_clear_error():
    port = free_port()  # nothing listens there
    with pytest.raises(SourceUnavailableError) as err:
        _fast(f"http://127.0.0.1:{port}", retries=1).nodes(dt.date(2026, 2, 3))
    msg = str(err.value)
    assert f"127.0.0.1:{port}" in msg and "connection refused" in msg and "after 2 attempts" in msg
    assert "DIDACT_PROMETHEUS_URL" in msg


@pytest.mark.slow
def test_retry_succeeds_when_prometheus_comes_back(backfilled):
    port = free_port()
    p = FaultProxy(backfilled.prom.port, port)
    timer = threading.Timer(0.8, p.start)  # "Prometheus" comes up 0.8 s after we start asking
    timer.start()
    try:
        src = PrometheusSource(p.url, retries=8, backoff_s=0.1, max_backoff_s=0.4, connect_timeout_s=1.0)
        day = src.read_day(backfilled.day)
        assert src.stats.retries >= 1
        assert day.meta["samples"] == backfilled.stats["cpu_samples"]
    finally:
        timer.cancel()
        timer.join()
        p.stop()


@pytest.mark.slow
def test_http_errors_are_retried_then_reported(proxy, backfilled):
    proxy.script = ["503", "500"]  # the first request fails twice, then passes
    src = _fast(proxy.url)
    assert src.read_day(backfilled.day).meta["samples"] == backfilled.stats["cpu_samples"]
    assert src.stats.retries == 2 and [a for _, a in proxy.seen[:3]] == ["503", "500", "pass"]

    proxy.default = "500"
    with pytest.raises(SourceUnavailableError) as err:
        _fast(proxy.url).read_day(backfilled.day)
    assert "HTTP 500: internal: injected fault (after 3 attempts)" in str(err.value)


@pytest.mark.slow
def test_slow_server_times_out(proxy, backfilled):
    proxy.default = "slow"
    proxy.slow_s = 1.5
    t0 = time.monotonic()
    with pytest.raises(SourceUnavailableError, match=r"no answer within 0.3s \(after 2 attempts\)"):
        _fast(proxy.url, retries=1, timeout_s=0.3).nodes(backfilled.day)
    assert time.monotonic() - t0 < 5


@pytest.mark.slow
def test_bad_query_is_not_retried(backfilled):
    src = _fast(backfilled.prom.url)
    with pytest.raises(SourceUnavailableError, match=r"HTTP 400: bad_data"):
        src.query_json("/api/v1/query", {"query": "sum(("})
    assert src.stats.retries == 0


@pytest.mark.slow
def test_auth_from_env(proxy, backfilled):
    proxy.auth = "Basic ZGlkYWN0OnMzY3JldA=="  # didact:s3cret
    env = {
        "DIDACT_PROMETHEUS_URL": proxy.url,
        "DIDACT_PROMETHEUS_USERNAME": "didact",
        "DIDACT_PROMETHEUS_PASSWORD": "wrong",
        "DIDACT_PROMETHEUS_RETRIES": "0",
    }
    with pytest.raises(
        SourceUnavailableError, match=r"HTTP 401 \(authentication refused\).*DIDACT_PROMETHEUS_USERNAME"
    ):
        PrometheusSource.from_env(env).nodes(backfilled.day)
    env["DIDACT_PROMETHEUS_PASSWORD"] = "s3cret"
    src = PrometheusSource.from_env(env)
    assert src.describe()["auth"] == "basic" and "s3cret" not in json.dumps(src.describe())
    assert src.nodes(backfilled.day) == backfilled.sim.nodes()
    proxy.auth = "Bearer t0ken"
    src = PrometheusSource.from_env(
        {"DIDACT_PROMETHEUS_URL": proxy.url, "DIDACT_PROMETHEUS_BEARER_TOKEN": "t0ken"}
    )
    assert src.nodes(backfilled.day) == backfilled.sim.nodes()


@pytest.mark.slow
def test_falls_back_to_query_api_without_remote_read(proxy, backfilled):
    proxy.no_remote_read = True
    src = PrometheusSource(proxy.url)  # api="auto"
    day = src.read_day(backfilled.day)
    assert day.meta["samples"] == backfilled.stats["cpu_samples"] and src.describe()["api"] == "query"
    with pytest.raises(
        SourceUnavailableError, match="remote read is not offered.*DIDACT_PROMETHEUS_API=query"
    ):
        PrometheusSource(proxy.url, api="remote_read").read_day(backfilled.day)


# -- answers of the wrong shape (a proxy's page, another API, a broken server) ------------------------


@pytest.fixture
def wrong_answers():
    """A local HTTP server answering every request with ``server.body`` (JSON, status 200)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
            body = server.body
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.body = b"{}"
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


WRONG_SHAPES = {  # body, what the error says for the series API, for an instant query
    "data is a string": (
        b'{"status":"success","data":"oops"}',
        "'data' is a JSON str",
        "'data' is a JSON str",
    ),
    "a list, not an object": (
        b'[{"status":"success"}]',
        "the answer is a JSON list",
        "the answer is a JSON list",
    ),
    "result is not a list": (
        b'{"status":"success","data":{"resultType":"vector","result":"x"}}',
        "'data' is a JSON dict, not a list of label sets",
        "'data.result' is a JSON str, not a list",
    ),
    "items are not objects": (
        b'{"status":"success","data":{"resultType":"vector","result":[1,2]}}',
        "'data' is a JSON dict",
        "a result item is not",
    ),
    "a vector where a matrix belongs": (
        b'{"status":"success","data":{"resultType":"vector","result":[]}}',
        "'data' is a JSON dict",
        None,  # an empty vector is a right answer for the live feed
    ),
    "status missing": (b'{"data":[]}', "status is None", "status is None"),
    "not JSON": (b"<html>proxy login</html>", "answer is not JSON", "answer is not JSON"),
}


@pytest.mark.parametrize("shape", list(WRONG_SHAPES))
def test_an_answer_of_the_wrong_shape_is_a_clear_error(wrong_answers, shape):
    from didact_core.config import Settings
    from didact_core.ingest.live import PrometheusLiveFeed
    from didact_core.power import PrometheusPowerReader

    wrong_answers.body, series_problem, vector_problem = WRONG_SHAPES[shape]
    url = wrong_answers.url
    calls = {  # the day's inventory (series API), samples (query API), the live feed (instant queries)
        "nodes": lambda: PrometheusSource(url, retries=0).nodes(dt.date(2026, 2, 3)),
        "fetch": lambda: PrometheusSource(url, api="query", retries=0).fetch(
            [("__name__", "=", "up")], 0, 1000
        ),
        "live": lambda: PrometheusLiveFeed(Settings(prometheus_url=url, prometheus_retries=0)).poll(),
    }
    if vector_problem is None:
        del calls["live"]
    for name, call in calls.items():
        with pytest.raises(SourceUnavailableError) as err:
            call()
        msg = str(err.value)
        assert f"{url}/api/v1/" in msg and " query " in msg, (name, msg)  # names the URL and the query
        assert "DIDACT_PROMETHEUS_URL" in msg, (name, msg)  # and the fix
        if name == "nodes":
            assert series_problem in msg, msg
        elif name == "live":
            assert vector_problem in msg, msg
        else:
            assert "not JSON" in msg or "wrong shape" in msg, msg
    ok, why = PrometheusPowerReader(url=url, retries=0).available()
    assert not ok and url in why


# -- pure parts: config, decoders, writer -----------------------------------------------------------


def test_from_env(tmp_path):
    nodes = tmp_path / "nodes.txt"
    nodes.write_text("# expected nodes\nn2\nn1\n")
    token = tmp_path / "token"
    token.write_text("abc\n")
    src = PrometheusSource.from_env(
        {
            "DIDACT_PROMETHEUS_URL": "https://prom.example:9090/",
            "DIDACT_PROMETHEUS_NODE_LABEL": "nodename",
            "DIDACT_PROMETHEUS_NODES": f"@{nodes}",
            "DIDACT_PROMETHEUS_BEARER_TOKEN_FILE": str(token),
            "DIDACT_PROMETHEUS_TLS_VERIFY": "0",
            "DIDACT_PROMETHEUS_TIMEOUT_S": "12.5",
            "DIDACT_PROMETHEUS_RETRIES": "7",
            "DIDACT_PROMETHEUS_CONCURRENCY": "3",
            "DIDACT_PROMETHEUS_API": "query",
            "DIDACT_PROMETHEUS_STRIP_PORT": "0",
            "DIDACT_PROMETHEUS_JOB": "node",
        }
    )
    assert (src.url, src.node_label, src.expected_nodes, src.timeout[1], src.retries, src.concurrency) == (
        "https://prom.example:9090",
        "nodename",
        ["n1", "n2"],
        12.5,
        7,
        3,
    )
    assert src.session.verify is False and src.session.headers["Authorization"] == "Bearer abc"
    assert (src.api, src.strip_port, src.job, src.compression) == ("query", False, "node", True)
    with pytest.raises(DidactError, match="DIDACT_PROMETHEUS_RETRIES"):
        PrometheusSource.from_env({"DIDACT_PROMETHEUS_RETRIES": "many"})
    with pytest.raises(DidactError, match="DIDACT_PROMETHEUS_API"):
        PrometheusSource.from_env({"DIDACT_PROMETHEUS_API": "grpc"})


def _encode_response(series):
    """A prometheus.ReadResponse (one QueryResult) built by hand, as Go's gogoproto writes it."""
    pb = wire
    ts_msgs = b""
    for labels, samples in series:
        msg = b"".join(
            pb.pb_bytes(1, pb.pb_bytes(1, k.encode()) + pb.pb_bytes(2, v.encode())) for k, v in labels.items()
        )
        for t, v in samples:
            body = b""
            if v != 0:  # proto3: zero values are not written
                body += b"\x09" + np.float64(v).tobytes()
            if t != 0:
                body += b"\x10" + pb.pb_varint(t)
            msg += pb.pb_bytes(2, body)
        ts_msgs += pb.pb_bytes(1, msg)
    return pb.pb_bytes(1, ts_msgs)


def test_remote_read_decoder_handles_every_sample_shape():
    rng = np.random.default_rng(0)
    t0 = 1_767_225_600_000
    zeros_then_values = [(t0 + i * 15_000, 0.0 if i < 300 else float(i)) for i in range(1000)]
    alternating = [(t0 + i * 1000, float(i % 2) * 3.5) for i in range(700)]
    odd = [(0, 1.0), (5, 0.0), (t0, -2.5), (-7, 4.0)]  # epoch zero, tiny and negative timestamps
    random_vals = [(t0 + i, float(v)) for i, v in enumerate(rng.normal(size=5000))]
    series = [
        ({"__name__": "m", "k": "a"}, zeros_then_values),
        ({"__name__": "m", "k": "b"}, alternating),
        ({"__name__": "m", "k": "c"}, odd),
        ({"__name__": "m", "k": "d"}, random_vals),
        ({"__name__": "m", "k": "e"}, []),
    ]
    got = wire.decode_read_response(_encode_response(series))
    assert [s.labels["k"] for s in got] == ["a", "b", "c", "d", "e"]
    for s, (_, want) in zip(got, series):
        assert s.ts.tolist() == [t for t, _ in want]
        assert s.values.tolist() == [v for _, v in want]


def test_matrix_json_decoder_fast_and_fallback():
    body = (
        b'{"status":"success","data":{"resultType":"matrix","result":['
        b'{"metric":{"__name__":"x","cpu":"0"},"values":[[1767225600,"1.5"],[1767225600.015,"NaN"]]},'
        b'{"metric":{"cpu":"1"},"values":[[1767225601.5,"+Inf"]]}]}}'
    )
    for fast in (True, False):
        got = wire.decode_matrix_json(body, fast=fast)
        assert [s.labels.get("cpu") for s in got] == ["0", "1"]
        assert got[0].ts.tolist() == [1767225600000, 1767225600015] and got[1].ts.tolist() == [1767225601500]
        assert got[0].values[0] == 1.5 and np.isnan(got[0].values[1]) and got[1].values[0] == np.inf


def test_openmetrics_timestamps_survive_promtools_truncation():
    ms = np.arange(1_767_225_600_000, 1_767_225_600_000 + 20_000, 7, dtype=np.int64)
    text = format_timestamps(ms)
    # promtool: int64(float64(text) * 1000), i.e. truncation
    back = np.array([int(float(t) * 1000) for t in text], dtype=np.int64)
    np.testing.assert_array_equal(back, ms)
    assert format_timestamps(np.array([1_767_225_600_000]))[0] == "1767225600"


def test_openmetrics_text(tmp_path):
    from didact_core.ingest.base import RawBlock

    cpu = pd.DataFrame(
        {
            "ts": pd.to_datetime([1_767_225_615_000, 1_767_225_600_000], unit="ms", utc=True),
            "node": ['we"ird\\node', 'we"ird\\node'],
            "cpu": np.int16(0),
            **{m: [2.0, 1.0] for m in CPU_MODES},
        }
    )
    cpu.loc[0, "steal"] = np.nan
    power = pd.DataFrame(
        {
            "ts": pd.to_datetime([1_767_225_600_000], unit="ms", utc=True),
            "node": ["n"],
            "source": ["rapl"],
            "watts": [99.5],
        }
    )
    out = tmp_path / "x.om"
    stats = write_openmetrics(RawBlock(cpu=cpu, power=power), out)
    lines = out.read_text().splitlines()
    assert lines[0] == "# TYPE node_cpu_seconds counter" and lines[-1] == "# EOF"
    assert 'node_cpu_seconds_total{instance="we\\"ird\\\\node",cpu="0",mode="idle"} 1.0 1767225600' in lines
    assert 'node_cpu_seconds_total{instance="we\\"ird\\\\node",cpu="0",mode="steal"} NaN 1767225615' in lines
    assert 'didact_power_watts{instance="n",source="rapl"} 99.5 1767225600' in lines
    assert stats == {
        "cpu_samples": 16,
        "cpu_series": 8,
        "power_samples": 1,
        "duplicates_dropped": 0,
        "nan_values": 1,
    }


# -- the XOR chunk decoder against a reference encoder (tsdb/chunkenc/xor.go, bit by bit) --------


def _xor_chunk(samples: list[tuple[int, int]]) -> bytes:
    """Encode (ts_ms, value_bits) as Prometheus' XOR chunk, following xor.go literally."""
    bits: list[int] = []

    def put(value: int, n: int) -> None:
        bits.extend((value >> i) & 1 for i in range(n - 1, -1, -1))

    def put_bytes(data: bytes) -> None:
        for byte in data:
            put(byte, 8)

    state = {"leading": 0xFF, "trailing": 0}

    def xor_write(vb: int, prev: int) -> None:
        delta = vb ^ prev
        if delta == 0:
            put(0, 1)
            return
        put(1, 1)
        leading = min(64 - delta.bit_length(), 31)
        trailing = (delta & -delta).bit_length() - 1
        if state["leading"] != 0xFF and leading >= state["leading"] and trailing >= state["trailing"]:
            put(0, 1)
            put(delta >> state["trailing"], 64 - state["leading"] - state["trailing"])
        else:
            state["leading"], state["trailing"] = leading, trailing
            put(1, 1)
            put(leading, 5)
            sig = 64 - leading - trailing
            put(sig & 0x3F, 6)  # 64 is written as 0
            put(delta >> trailing, sig)

    t_prev = v_prev = t_delta = 0
    for i, (t, vb) in enumerate(samples):
        if i == 0:
            put_bytes(wire.pb_varint(((t << 1) ^ (t >> 63)) & (2**64 - 1)))  # zigzag varint
            put(vb, 64)
        elif i == 1:
            t_delta = t - t_prev
            put_bytes(wire.pb_varint(t_delta))
            xor_write(vb, v_prev)
        else:
            d = t - t_prev
            dod = d - t_delta
            t_delta = d
            for prefix, plen, size in ((0b10, 2, 14), (0b110, 3, 17), (0b1110, 4, 20)):
                if -((1 << (size - 1)) - 1) <= dod <= 1 << (size - 1):
                    break
            else:
                prefix = None
            if dod == 0:
                put(0, 1)
            elif prefix is not None:
                put(prefix, plen)
                put(dod & ((1 << size) - 1), size)
            else:
                put(0b1111, 4)
                put(dod & (2**64 - 1), 64)
            xor_write(vb, v_prev)
        t_prev, v_prev = t, vb
    bits.extend([0] * (-len(bits) % 8))
    body = bytes(int("".join(map(str, bits[i : i + 8])), 2) for i in range(0, len(bits), 8))
    return len(samples).to_bytes(2, "big") + body


def _bits(v: float) -> int:
    return int(np.float64(v).view(np.uint64))


def _frame(series_msgs: list[bytes]) -> bytes:
    msg = b"".join(wire.pb_bytes(1, m) for m in series_msgs)
    return wire.pb_varint(len(msg)) + b"\0\0\0\0" + msg


def _chunked_series(labels: dict, chunks: list[bytes]) -> bytes:
    pb = wire
    msg = b"".join(
        pb.pb_bytes(1, pb.pb_bytes(1, k.encode()) + pb.pb_bytes(2, v.encode())) for k, v in labels.items()
    )
    for c in chunks:
        msg += pb.pb_bytes(2, pb.pb_uint(3, 1) + pb.pb_bytes(4, c))
    return msg


def test_xor_chunk_decoder_matches_the_reference_encoder():
    rng = np.random.default_rng(1)
    t0 = 1_767_225_600_000
    # timestamps exercising every delta-of-delta size, negative ones, and a 64-bit jump
    steps = [15_000] * 5 + [
        15_001,
        14_999,
        15_000 + 8_000,
        15_000 - 8_191,
        15_000 + 60_000,
        15_000 - 65_000,
        15_000 + 500_000,
        15_000 - 520_000,
        15_000 + 3_000_000_000,
        15_000,
    ]
    ts = t0 + np.r_[0, np.cumsum(steps)]
    counter = 1234.5 + np.cumsum(rng.uniform(0, 15, len(ts)))
    counter[7] = counter[6]  # unchanged value
    vals_a = [_bits(v) for v in counter]
    vals_a[9] = _bits(float("nan"))
    vals_a[10] = wire.STALE_NAN_BITS  # a staleness marker: dropped by the decoder
    vals_b = [_bits(v) for v in [1.0, -1.0, 0.0, 5e-324, -np.inf, 2.0**60, 1.0, 1.0]]  # 64 meaningful bits
    vals_c = [_bits(v) for v in np.round(rng.uniform(0, 1e6, 130), 2)]  # 130 samples in 2 chunks
    a = list(zip(ts.tolist(), vals_a))
    b = list(zip((t0 + 1000 * np.arange(len(vals_b))).tolist(), vals_b))
    c = list(zip((t0 + 15_000 * np.arange(130)).tolist(), vals_c))
    single = [(t0, _bits(42.0))]
    raw = _frame(
        [
            _chunked_series({"k": "a"}, [_xor_chunk(a)]),
            _chunked_series({"k": "b"}, [_xor_chunk(b)]),
            _chunked_series({"k": "c"}, [_xor_chunk(c[:120])]),
        ]
    ) + _frame(
        [
            _chunked_series({"k": "c"}, [_xor_chunk(c[120:])]),  # the same series, next frame
            _chunked_series({"k": "d"}, [_xor_chunk(single)]),
        ]
    )
    got = xorchunks.decode_chunked_stream(raw, 0, 2**62)
    assert [s.labels["k"] for s in got] == ["a", "b", "c", "d"]
    for s, want in zip(got, [a, b, c, single]):
        want = [(t, v) for t, v in want if v != wire.STALE_NAN_BITS]
        assert s.ts.tolist() == [t for t, _ in want]
        assert s.values.view(np.uint64).tolist() == [v for _, v in want]
    # chunks overhang the asked range: only [start, end] comes back
    got = xorchunks.decode_chunked_stream(raw, t0 + 15_000 * 10, t0 + 15_000 * 20)
    assert got[2].ts.tolist() == [t for t, _ in c[10:21]]


@pytest.mark.slow
def test_power_reader_over_prometheus(backfilled):
    from didact_core.power import PrometheusPowerReader

    b = backfilled
    reader = PrometheusPowerReader(PrometheusSource(b.prom.url), nodes=["node0001"])
    start = pd.Timestamp(b.day, tz="UTC")
    df = reader.read(start, start + pd.Timedelta(hours=1))
    assert set(df["node"]) == {"node0001"} and set(df["source"]) == {"simulator"} and len(df) == 240
    ok, why = reader.available()  # backfilled data is old: nothing in the last day
    assert not ok and "no node_rapl" in why
