"""Job labels from a CSV or a Slurm export, validated, and joined onto samples."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from didact_core.errors import DidactError
from didact_core.data.hostlist import expand_hostlist
from didact_core.data.labels import join_labels, labels_from_frame, read_labels_csv, read_sacct
from didact_core.schema import LABEL_COLUMNS

GOOD_CSV = """\
node,start,end,label
# a comment line
node0000,2026-01-01T00:00:00Z,2026-01-01T01:00:00Z,mpi_16

node0000,2026-01-01T01:00:00Z,2026-01-01T02:30:00Z,io_good
node0001,1767225600,1767232800,reco_8t
node0001,2026-01-01 03:00:00+01:00,2026-01-01 04:00:00+01:00,idle
"""


def test_csv_labels_read(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text(GOOD_CSV)
    df = read_labels_csv(path, known_nodes=["node0000", "node0001"])
    assert list(df.columns) == [*LABEL_COLUMNS, "line"]
    assert df["line"].tolist() == [3, 5, 6, 7]  # file line numbers (header = 1)
    assert str(df["start"].dtype) == "datetime64[ms, UTC]"
    row = df[df["line"] == 7].iloc[0]
    assert row["start"] == pd.Timestamp("2026-01-01T02:00:00Z")  # +01:00 converted to UTC
    assert df[df["line"] == 6].iloc[0]["end"] == pd.Timestamp("2026-01-01T02:00:00Z")  # epoch seconds


def test_csv_label_problems_name_their_lines(tmp_path):
    bad = """\
node,start,end,label
node0000,2026-01-01T00:00:00Z,2026-01-01T01:00:00Z,mpi_16
node0000,2026-01-01T00:30:00Z,2026-01-01T02:00:00Z,io_good
node0042,2026-01-01T00:00:00Z,2026-01-01T01:00:00Z,idle
node0001,last tuesday,2026-01-01T01:00:00Z,idle
node0001,2026-01-01T05:00:00Z,2026-01-01T04:00:00Z,idle
node0001,2026-01-01T06:00:00Z,2026-01-01T07:00:00Z,
"""
    with pytest.raises(DidactError) as err:
        read_labels_csv(bad, known_nodes=["node0000", "node0001"])
    msg = str(err.value)
    assert "line(s) 5: start time not understood (e.g. 'last tuesday')" in msg
    assert "line(s) 6: end is not after start" in msg
    assert "line(s) 4: unknown node(s) ['node0042']" in msg
    assert "lines 2&3: labels overlap on the same node" in msg
    assert "line(s) 7: empty node or label" in msg
    # overlaps are allowed when asked (shared nodes)
    ok = read_labels_csv(
        bad.splitlines()[0] + "\n" + "\n".join(bad.splitlines()[1:3]) + "\n", allow_overlap=True
    )
    assert len(ok) == 2


def test_csv_job_ids_are_kept():
    """An optional job_id column says which rows are one multi-node job (an empty one is none)."""
    text = "node,start,end,label,job_id\n" \
           "node0000,2026-01-01T00:00:00Z,2026-01-01T01:00:00Z,mpi_16,77\n" \
           "node0001,2026-01-01T00:00:00Z,2026-01-01T01:00:00Z,mpi_16, 77\n" \
           "node0001,2026-01-01T01:00:00Z,2026-01-01T02:00:00Z,idle,\n"
    df = read_labels_csv(text, known_nodes=["node0000", "node0001"])
    assert list(df.columns) == [*LABEL_COLUMNS, "line", "job_id"]
    assert df["job_id"].tolist()[:2] == ["77", "77"] and pd.isna(df["job_id"].iloc[2])


def test_csv_needs_the_columns(tmp_path):
    with pytest.raises(DidactError, match=r"header lacks column\(s\) \['label'\]"):
        read_labels_csv("node,start,end\nn1,1,2\n")
    with pytest.raises(DidactError, match="does not exist"):
        read_labels_csv(tmp_path / "missing.csv")


SACCT = """\
JobID|JobName|NodeList|Start|End|State
1001|mpi_16|node[0001-0002]|2026-01-01T00:00:00|2026-01-01T01:30:00|COMPLETED
1002|reco_8t|node0003|2026-01-01T00:10:00|2026-01-01T00:50:00|COMPLETED
1003|fit_mcmc|node0003|2026-01-01T00:50:00|2026-01-01T02:00:00|FAILED
1004|pending|None assigned|Unknown|Unknown|PENDING
1005|running|node0004|2026-01-01T00:10:00|Unknown|RUNNING
"""


def test_sacct_export():
    df = read_sacct(SACCT, known_nodes=[f"node{i:04d}" for i in range(8)])
    assert df["node"].tolist() == ["node0001", "node0002", "node0003", "node0003"]
    assert df["label"].tolist() == ["mpi_16", "mpi_16", "reco_8t", "fit_mcmc"]
    assert df["line"].tolist() == [2, 2, 3, 4]
    assert df.attrs["skipped"] == 2  # never started / still running
    assert df["job_id"].tolist() == ["1001", "1001", "1002", "1003"]  # JobID: node0001-2 ran one job
    without_ids = "\n".join(ln.split("|", 1)[1] for ln in SACCT.splitlines())  # no JobID column
    assert "job_id" not in read_sacct(without_ids).columns
    zurich = read_sacct(SACCT, tz="Europe/Zurich")
    assert zurich["start"].iloc[0] == pd.Timestamp("2025-12-31T23:00:00Z")


def test_sacct_problems():
    bad = SACCT.replace("node0003|2026-01-01T00:50:00", "node0003|2026-01-01T00:40:00").replace(
        "node[0001-0002]", "node[0001-0002],gpu7"
    )
    with pytest.raises(DidactError) as err:
        read_sacct(bad, known_nodes=[f"node{i:04d}" for i in range(8)])
    assert "unknown node(s) ['gpu7']" in str(err.value) and "lines 3&4: labels overlap" in str(err.value)
    with pytest.raises(DidactError, match=r"header lacks \['NodeList'\]"):
        read_sacct("JobID|JobName|Start|End\n1|x|2026-01-01T00:00:00|2026-01-01T01:00:00\n")


def test_hostlist_expansion():
    assert expand_hostlist("n[01-03,07],gpu1") == ["n01", "n02", "n03", "n07", "gpu1"]
    assert expand_hostlist("r[1-2]c[8-9]") == ["r1c8", "r1c9", "r2c8", "r2c9"]
    assert expand_hostlist("node[0098-0101]") == ["node0098", "node0099", "node0100", "node0101"]
    with pytest.raises(ValueError):
        expand_hostlist("n[3-1]")


def test_join_labels_equals_a_brute_force_join():
    from didact_core.ingest.simulator import SimulatedCluster

    sim = SimulatedCluster(nodes_count=3, cpus=2, interval_s=60.0, seed=5)
    block = sim.fetch_day(dt.date(2026, 1, 5))
    labels = labels_from_frame(block.labels, known_nodes=sim.nodes())
    samples = block.cpu.sample(frac=1.0, random_state=0)  # any order in, same order out
    out = join_labels(samples, labels)
    assert out.index.equals(samples.index) and len(out) == len(samples)

    expect = []
    check = samples.iloc[::10]  # brute force on every 10th row keeps the test fast
    got = out.loc[check.index, "label"].tolist()
    for node, ts in zip(check["node"].astype(str), check["ts"]):
        hit = labels[(labels["node"] == node) & (labels["start"] <= ts) & (ts < labels["end"])]
        expect.append(hit["label"].iloc[-1] if len(hit) else pd.NA)
    assert [None if pd.isna(x) else x for x in got] == [None if pd.isna(x) else x for x in expect]
    assert out["label"].notna().mean() > 0.99  # the simulator labels the whole day


def test_join_labels_end_is_exclusive_and_gaps_unlabelled():
    labels = read_labels_csv(
        "node,start,end,label\nn1,2026-01-01T00:00:00Z,2026-01-01T00:30:00Z,a\n"
        "n1,2026-01-01T01:00:00Z,2026-01-01T02:00:00Z,b\n"
    )
    ts = pd.to_datetime(
        [
            "2026-01-01T00:00:00Z",
            "2026-01-01T00:29:59Z",
            "2026-01-01T00:30:00Z",
            "2026-01-01T01:00:00Z",
            "2026-01-01T03:00:00Z",
            "2026-01-01T00:10:00Z",
        ],
        utc=True,
    )
    samples = pd.DataFrame({"ts": ts, "node": ["n1"] * 5 + ["n2"], "cpu": np.int16(0)})
    got = join_labels(samples, labels)["label"].tolist()
    assert [None if pd.isna(x) else x for x in got] == ["a", "a", None, "b", None, None]


def test_read_labels_detects_the_format(tmp_path):
    from didact_core.data.labels import read_labels

    (tmp_path / "jobs.txt").write_text(SACCT)
    (tmp_path / "jobs.csv").write_text(GOOD_CSV)
    assert read_labels(tmp_path / "jobs.txt")["label"].tolist()[:2] == ["mpi_16", "mpi_16"]
    assert len(read_labels(tmp_path / "jobs.csv")) == 4
