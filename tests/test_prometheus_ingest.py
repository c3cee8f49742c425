"""raw_node_metrics from a real Prometheus scraping a real node exporter, through the
same pipeline function the Dagster asset runs."""

from __future__ import annotations

import numpy as np
import pytest

from didact_core.data import spine as pipeline
from didact_core.errors import SourceUnavailableError
from didact_core.data.warehouse import Warehouse

from .services import free_port, start_node_exporter, start_prometheus, utc_day_with_room, wait_for_samples

pytestmark = pytest.mark.slow


def test_ingest_today_from_real_prometheus_then_survive_it_going_down(settings, tmp_path):
    today = utc_day_with_room()  # every sample scraped below falls on it
    with start_node_exporter(tmp_path) as ne, start_prometheus(tmp_path, [ne.address], scrape_interval="1s") as prom:
        wait_for_samples(prom, 'count_over_time(node_cpu_seconds_total{mode="idle",cpu="0"}[1m])', 5, timeout=45)
        s = settings.replace(source="prometheus", prometheus_url=prom.url, features=("cpu", "node"))
        res = pipeline.ingest_raw(s, today)
        ai = pipeline.build_ai_ready(s, today)
    wh = Warehouse(s.home_path)
    assert res.version.version == 1 and res.nodes == 1 and res.meta["source"] == "prometheus"
    cpu = wh.read("raw_node_metrics", today.isoformat(), "cpu")
    assert cpu.groupby("cpu").size().min() >= 4
    samples = wh.read("ai_ready_metrics", today.isoformat(), "samples")
    fractions = ["idle", "iowait", "system", "user", "other"]
    np.testing.assert_allclose(samples[fractions].astype(float).sum(axis=1), 1.0, atol=1e-5)
    # the node-level features come from the same real node exporter
    nm = wh.read("raw_node_metrics", today.isoformat(), "node_metrics")
    assert (np.diff(nm["ctxt"].to_numpy()) >= 0).all() and nm["mem_used_bytes"].gt(0).all()
    assert samples["ctxt_rate"].gt(0).all() and samples["load1"].ge(0).all()
    assert ai.report.counter_resets == 0

    # Prometheus is gone now: a clear error naming it, and the stored partition untouched
    down = s.replace(prometheus_url=f"http://127.0.0.1:{free_port()}")
    before = wh.versions("raw_node_metrics", today.isoformat())
    with pytest.raises(SourceUnavailableError, match="127.0.0.1"):
        pipeline.ingest_raw(down, today)
    assert wh.versions("raw_node_metrics", today.isoformat()) == before
    assert not list(s.home_path.glob("data/**/.tmp-*"))
