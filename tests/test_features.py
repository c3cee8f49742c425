"""Richer features and temporal context, from the simulator through training."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from didact_core.learn import continual
from didact_core.learn.registry import ModelRegistry
from didact_core.data import spine as pipeline
from didact_core.errors import DidactError
from didact_core.data.preprocess import check_features, feature_columns, node_features, preprocess
from didact_core.schema import CPU_MODES, NODE_FEATURES
from didact_core.ingest.simulator import SimulatedCluster
from didact_core.data.warehouse import Warehouse

from .days import fixed_days


def test_node_level_rates_follow_the_job_flavour(settings):
    day = dt.date.fromisoformat(fixed_days(1)[0])
    block = SimulatedCluster.from_settings(settings).fetch_day(day)
    nf = node_features(block.node_metrics)
    assert set(NODE_FEATURES) <= set(nf.columns)
    # rates are per second and positive; disk busy time is a fraction of a second per second
    assert (nf["ctxt_rate"].dropna() > 0).all()
    assert nf["disk_io_time_rate"].dropna().between(0, 1.01).all()
    # IO-bad-binned jobs keep the disk busier than MPI jobs do
    labels = block.labels
    from didact_core.data.labels import join_labels

    lab = join_labels(nf, labels)["label"].astype(str)
    io_bad = nf.loc[lab == "io_bad", "disk_io_time_rate"].median()
    mpi = nf.loc[lab.str.startswith("mpi"), "disk_io_time_rate"].median()
    assert io_bad > 10 * mpi


def test_windows_hold_the_previous_timesteps_of_the_same_series(settings):
    day = dt.date.fromisoformat(fixed_days(1)[0])
    block = SimulatedCluster.from_settings(settings).fetch_day(day)
    one, _ = preprocess(block.cpu, ("cpu",))
    three, rep = preprocess(block.cpu, ("cpu",), window=3)
    assert list(three.columns[-10:]) == list(feature_columns(("cpu",), 3)[5:])
    # the first two samples of every series have no full history
    assert rep.window_incomplete >= 2 * settings.nodes * settings.cpus
    # each lag is the value of the same series one/two scrapes earlier
    key = ["node", "cpu", "ts"]
    one = one.assign(node=one["node"].astype(str)).set_index(key)
    row = three.iloc[1000]
    step = dt.timedelta(seconds=settings.interval_s)
    prev = one.loc[(str(row["node"]), row["cpu"], row["ts"] - step)]
    prev2 = one.loc[(str(row["node"]), row["cpu"], row["ts"] - 2 * step)]
    assert row["user_lag1"] == pytest.approx(prev["user"]) and row["idle_lag2"] == pytest.approx(prev2["idle"])


def test_node_busy_features_describe_the_node_around_each_cpu(settings):
    day = dt.date.fromisoformat(fixed_days(1)[0])
    block = SimulatedCluster.from_settings(settings).fetch_day(day)
    df, rep = preprocess(block.cpu, ("busy", "node_busy", "node_busy_std"))
    assert rep.rows_out == len(df) > 0
    # every CPU row of one (node, scrape) carries that scrape's mean and spread of `busy`
    g = df.assign(node=df["node"].astype(str)).groupby(["node", "ts"])["busy"]
    np.testing.assert_allclose(df["node_busy"], g.transform("mean"), atol=1e-5)
    np.testing.assert_allclose(df["node_busy_std"], g.transform(lambda v: v.std(ddof=0)), atol=1e-4)
    assert df["node_busy"].between(0, 1).all() and (df["node_busy_std"] >= 0).all()
    # one busy thread of two, by hand: mean ½, spread ½ — unlike two idle or two busy threads
    ts = np.array([0, 1000, 0, 1000], "M8[ms]")
    raw = pd.DataFrame({"ts": pd.Series(ts).dt.tz_localize("UTC"), "node": ["a"] * 4, "cpu": [0, 0, 1, 1],
                        **{m: 0.0 for m in CPU_MODES}})  # fmt: skip
    raw.loc[raw.index[[1]], "user"] = 1.0
    raw.loc[raw.index[[3]], "idle"] = 1.0
    one, _ = preprocess(raw, ("user", "node_busy", "node_busy_std"), interval_s=1.0)
    assert one[["user", "node_busy", "node_busy_std"]].to_numpy().tolist() == [[1.0, 0.5, 0.5], [0.0, 0.5, 0.5]]
    assert "node_busy" in check_features(("node",))


def test_segments_are_runs_of_a_label_per_node_in_time_order():
    from didact_core.learn.separability import segment_ids

    ts = pd.to_datetime([3, 1, 2, 4, 5, 1, 2], unit="s", utc=True)
    frame = pd.DataFrame({"node": ["a", "a", "a", "a", "a", "b", "b"], "ts": ts,
                          "label": ["x", "x", "x", "y", "x", "x", "x"]})  # fmt: skip
    ids = segment_ids(frame)
    # a: x(1,2,3) y(4) x(5) -> three runs; b: one run; a sample of rows keeps the runs
    assert len(set(ids)) == 4 and len(set(ids[[0, 1, 2]])) == 1 and ids[3] != ids[4] != ids[0]
    assert ids[5] == ids[6] and ids[5] not in ids[:5]


def test_bad_feature_names_are_clear_errors():
    with pytest.raises(DidactError, match=r"unknown feature\(s\) \['cpu_temperature'\]"):
        check_features(("user", "cpu_temperature"))
    assert check_features(("cpu", "load1")) == ("idle", "iowait", "system", "user", "other", "load1")


def test_rich_features_with_context_train_and_separate_flavours(settings):
    s = settings.replace(nodes=8, features=("cpu", "node"), window=2, max_train_samples=8000, model_max_epochs=6)
    days = fixed_days(2)
    for d in days:
        pipeline.ingest_raw(s, dt.date.fromisoformat(d))
        pipeline.build_ai_ready(s, dt.date.fromisoformat(d))
        continual.train_day(s, d)
    meta = Warehouse(s.home_path).require("ai_ready_metrics", days[-1]).metadata
    assert meta["features"] == list(feature_columns(("cpu", "node"), 2)) and meta["window"] == 2
    ev = continual.evaluate_day(s, days[-1])
    h = ev.metrics["challenger"]["holdout"]
    assert h["latent_knn_accuracy"] > 0.8, h
    # the detector carries its fitted transform (log1p + standardisation for the rates)
    det, _ = ModelRegistry(s).load_alias("champion")
    assert det.config.log1p and det.config.standardize and det.feature_names == feature_columns(("cpu", "node"), 2)
    assert np.isfinite(h["mean_error"])


def test_testbed_evaluation_reports_separability_and_open_set(settings):
    from didact_core.testbed import evaluation as testbed_eval

    s = settings.replace(nodes=6, features=("cpu", "node"), fault_rate=0.0)
    day = fixed_days(1)[0]
    pipeline.ingest_raw(s, dt.date.fromisoformat(day))
    pipeline.build_ai_ready(s, dt.date.fromisoformat(day))
    r = testbed_eval.evaluate(s, [day], max_train=6000, max_test=3000, epochs=4, openset_epochs=2)
    assert r["latent_knn_accuracy"] > 0.8 and r["raw_knn_accuracy"] > 0.8 and r["pca2_knn_accuracy"] > 0.5
    assert set(r["openset_auc_by_flavour"]) == set(r["flavours"]) and len(r["flavours"]) >= 8
    assert 0.5 < r["openset_auc"] <= 1.0
    # whole-segment folds: each simulated job judged by the others only (no neighbouring seconds)
    assert r["segments"] >= len(r["flavours"]) and 0.5 < r["latent_knn_accuracy_by_segment"] <= 1.0
    assert r["plot_png"][:4] == b"\x89PNG"
    run = ModelRegistry(s).client.get_run(r["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.metrics["openset_auc"] == pytest.approx(r["openset_auc"])


# -- rolling statistics (issue 16) ----------------------------------------------------------------


def _digest(df: pd.DataFrame) -> str:
    import hashlib

    rows = pd.util.hash_pandas_object(df.assign(node=df["node"].astype(str)), index=False).to_numpy().tobytes()
    return hashlib.sha256(rows + ",".join(df.columns).encode()).hexdigest()[:16]


def test_default_features_are_bit_for_bit_those_before_rolling_statistics(settings):
    """Digests of preprocess's output on a simulated day, taken with the code before
    data/rolling.py existed: the default (5 fractions, window 1) and cpu,node window 3."""
    block = SimulatedCluster.from_settings(settings).fetch_day(dt.date.fromisoformat(fixed_days(1)[0]))
    import hashlib

    def raw(f):
        return hashlib.sha256(pd.util.hash_pandas_object(f.assign(node=f["node"].astype(str)), index=False)
                              .to_numpy().tobytes()).hexdigest()[:16]  # fmt: skip

    assert (raw(block.cpu), raw(block.node_metrics)) == ("916de63573a99998", "c0171eebdcee3ee4"), (
        "the simulator's day changed: re-pin these digests with the pre-rolling preprocess (git show 5132959)"
    )
    default, rep = preprocess(block.cpu)
    assert _digest(default) == "fd9fad7a845b8456" and rep.window_incomplete == 0
    rich, _ = preprocess(block.cpu, ("cpu", "node"), node_metrics=block.node_metrics, window=3)
    assert _digest(rich) == "551234199be51263"


def _series(busy, ts_s=None, node="a", cpu=0) -> pd.DataFrame:
    """Raw counters of one CPU whose busy (user) share of each 1-s interval is ``busy[i]``."""
    ts_s = list(range(len(busy) + 1)) if ts_s is None else ts_s
    user = np.r_[0.0, np.cumsum(busy)]
    idle = np.r_[0.0, np.cumsum(1.0 - np.asarray(busy))]
    return pd.DataFrame({"ts": pd.to_datetime(np.asarray(ts_s) * 1000, unit="ms", utc=True), "node": node, "cpu": cpu,
                         **{m: 0.0 for m in CPU_MODES}, "user": user, "idle": idle})  # fmt: skip


def test_rolling_statistics_on_a_hand_made_series_are_causal_and_right():
    busy = [0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.5, 1.0]
    df, rep = preprocess(_series(busy), ("busy", "rolling5"), interval_s=1.0)
    # R = 5 samples; a window needs ⌈5/2⌉ = 3 of them: the first two samples are dropped
    assert rep.window_incomplete == 2 and len(df) == len(busy) - 2
    assert [c for c in df.columns if c.endswith("_5s")] == list(check_features(("rolling5",)))
    for i, row in enumerate(df.itertuples(index=False), start=2):
        win = np.array(busy[max(0, i - 4) : i + 1])
        assert row.busy_mean_5s == pytest.approx(win.mean(), abs=1e-6)
        assert row.busy_std_5s == pytest.approx(win.std(), abs=1e-6)
        assert row.user_mean_5s == pytest.approx(win.mean(), abs=1e-6) and row.system_mean_5s == 0
    # lag-1 autocorrelation, mapped to [0, 1]: alternating 0/1 is near 0; a constant window has none → ½
    for i, row in enumerate(df.itertuples(index=False), start=2):
        win = np.array(busy[max(0, i - 4) : i + 1])
        d = win - win.mean()
        rho = np.clip((d[:-1] * d[1:]).mean() / (win.var() + 1e-3), -1, 1)
        assert row.busy_ac1_5s == pytest.approx((1 + rho) / 2, abs=1e-6)
    assert df["busy_ac1_5s"].iloc[2] < 0.2 and df["busy_ac1_5s"].iloc[8] == 0.5  # 0,1,0,1,0 and 0.5 × 5
    # causal: changing what comes later changes nothing before it
    later = busy[:8] + [0.0, 1.0, 0.0, 0.0]
    df2, _ = preprocess(_series(later), ("busy", "rolling5"), interval_s=1.0)
    cols = list(check_features(("rolling5",)))
    pd.testing.assert_frame_equal(df.iloc[:6][cols], df2.iloc[:6][cols], check_exact=True)
    assert not df.iloc[6:][cols].equals(df2.iloc[6:][cols])
    # a missed scrape is a hole in the window, not an older sample pulled in
    ts = [0, 1, 2, 3, 4, 5, 8, 9, 10]
    gap, rep = preprocess(_series([1.0] * 5 + [0.0, 0.0, 0.0], ts), ("busy", "rolling5"), interval_s=1.0)
    by_ts = gap.set_index(gap["ts"].astype("int64") // 1000)["busy_mean_5s"]
    # at 9 s the window (4.5 s, 9 s] holds the samples ending at 5 (busy 1), 8 and 9 (busy 0);
    # at 10 s only 8, 9, 10 — not the last five samples, which would reach back to 4 s
    assert by_ts[9] == pytest.approx(1 / 3) and by_ts[10] == 0.0 and rep.gaps == 1


def test_rolling_group_takes_node_rates_only_with_node_features():
    cpu_only = check_features(("cpu", "rolling"))
    assert "busy_std_30s" in cpu_only and not any(f.startswith(("ctxt", "intr")) for f in cpu_only)
    rich = check_features(("cpu", "node", "rolling60"))
    assert {"ctxt_cv_60s", "intr_logmean_60s", "busy_ac5_60s"} <= set(rich)
    with pytest.raises(DidactError, match="need a node-level feature"):
        check_features(("cpu", "ctxt_cv_30s"))
    with pytest.raises(DidactError, match="5 to 3600"):
        check_features(("rolling2",))
    from didact_core.data.preprocess import split_feature_columns

    cols = feature_columns(("cpu", "node", "rolling"), 2)
    assert split_feature_columns(cols) == (check_features(("cpu", "node", "rolling")), 2)


def test_rolling_features_are_the_same_bits_in_a_day_and_fed_in_two_halves(settings):
    """The batch path (a day at once) and the incremental one (two halves through one
    RollingState, as serving feeds it) give identical values for every sample both have."""
    from didact_core.data.rolling import RollingState

    block = SimulatedCluster.from_settings(settings).fetch_day(dt.date.fromisoformat(fixed_days(1)[0]))
    feats = ("cpu", "node", "rolling600")  # 10 samples at 60-s scrapes
    full, rep = preprocess(block.cpu, feats, node_metrics=block.node_metrics, interval_s=60.0, window=2)
    assert rep.window_incomplete >= settings.nodes * settings.cpus * 5
    assert (full[list(check_features(feats))] >= 0).all().all()  # log1p-safe
    cut = block.cpu["ts"].sort_values().iloc[len(block.cpu) // 2]
    state, parts = RollingState(), []
    for first in (True, False):
        cpu, nm = block.cpu, block.node_metrics
        if first:
            cpu, nm = cpu[cpu["ts"] < cut], nm[nm["ts"] < cut]
        else:  # the second half starts with each series' last scrape before the cut (its pair)
            cpu = pd.concat([cpu[cpu["ts"] < cut].groupby(["node", "cpu"], observed=True).tail(1), cpu[cpu["ts"] >= cut]])
            nm = pd.concat([nm[nm["ts"] < cut].groupby("node", observed=True).tail(1), nm[nm["ts"] >= cut]])
        part, _ = preprocess(cpu, feats, node_metrics=nm, interval_s=60.0, rolling=state)
        parts.append(part)
    inc = pd.concat(parts, ignore_index=True)
    cols = [c for c in check_features(feats) if c.endswith("600s")]
    key = ["node", "cpu", "ts"]
    a = full.assign(node=full["node"].astype(str)).set_index(key)[cols]
    b = inc.assign(node=inc["node"].astype(str)).set_index(key)[cols]
    assert a.index.isin(b.index).all() and len(b) >= len(a)
    assert np.array_equal(a.to_numpy(), b.loc[a.index].to_numpy())  # bit for bit
