"""Human vetting of OOD events: verdicts change what the next training sees."""

from __future__ import annotations

import pandas as pd
import pytest

from didact_assets.cli import main as didact_cli
from didact_core.learn import continual
from didact_core.data import spine as pipeline
from didact_core.errors import DidactError
from didact_core.learn.centroids import FlavourLookup
from didact_core.learn.registry import ModelRegistry
from didact_core.data.review import ACCEPTED_WEIGHT, ReviewQueue

from .conftest import last_days


@pytest.fixture
def msettings(settings):
    return settings.replace(max_train_samples=4000, model_max_epochs=3, model_batch_size=512)


def build_days(s, days):
    import datetime as dt

    for d in days:
        pipeline.ingest_raw(s, dt.date.fromisoformat(d))
        pipeline.build_ai_ready(s, dt.date.fromisoformat(d))


def event_from(row: pd.Series, features, score=1.0, threshold=0.1, version=1) -> dict:
    return {"ts": row["ts"], "node": row["node"], "cpu": int(row["cpu"]), "score": score, "threshold": threshold,
            "model_version": version, "features": {f: float(row[f]) for f in features},
            "latent_0": 0.0, "latent_1": 0.0}  # fmt: skip


def test_verdicts_change_the_next_training_set(msettings, monkeypatch, capsys):
    days = last_days(3)
    build_days(msettings, days)
    features = list(msettings.features)
    first = continual.train_day(msettings, days[0])
    assert first.excluded_by_review == 0 and first.added_from_review == 0

    # serving saw three odd samples on day 2; they are in day 2's training sample
    sample = continual.load_split(continual.Warehouse(msettings.home_path), days[1], "train",
                                  msettings.max_train_samples, msettings)  # fmt: skip
    picked = sample.iloc[[10, 500, 1500]]
    queue = ReviewQueue(msettings, nearest_flavour=FlavourLookup(msettings))
    ids = queue.add_events(pd.DataFrame([event_from(r, features) for _, r in picked.iterrows()]))
    assert len(queue.list()) == 3
    assert queue.list()["nearest_flavour"].notna().all()  # from the model's latent centroids

    # the operator's CLI
    monkeypatch.setenv("DIDACT_HOME", msettings.home)
    assert didact_cli(["review", "list"]) == 0
    out = capsys.readouterr().out
    assert "OOD events (pending)" in out and str(picked.iloc[0]["node"]) in out
    assert didact_cli(["review", "accept", str(ids[0]), "--reason", "new workload, fine", "--actor", "ana"]) == 0
    assert didact_cli(["review", "reject", str(ids[1]), "--reason", "stuck NFS", "--actor", "ana"]) == 0
    queue.verdict(ids[2], "reject", "fan failure", actor="bo")
    assert queue.list().empty
    assert set(queue.list(status="rejected")["verdict_by"]) == {"ana", "bo"}

    # bad input: unknown id, repeated verdict, no reason
    assert didact_cli(["review", "accept", "999", "--reason", "x"]) == 2
    assert "OOD event 999: does not exist" in capsys.readouterr().out
    with pytest.raises(DidactError, match="was already accepted by ana"):
        queue.verdict(ids[0], "reject", "changed my mind")
    [extra] = queue.add_events(pd.DataFrame([event_from(picked.iloc[1], features)]))
    with pytest.raises(DidactError, match="needs a reason"):
        queue.verdict(extra, "accept", " ")
    queue.verdict(extra, "reject", "duplicate of an earlier event")

    # day 2's training: rejected samples out, the accepted one in (weighted), once
    second = continual.train_day(msettings, days[1])
    assert second.excluded_by_review == 2  # exactly the two rejected rows (the duplicate covers one of them)
    assert second.added_from_review == ACCEPTED_WEIGHT
    reg = ModelRegistry(msettings)
    params = reg.client.get_run(second.mlflow_run_id).data.params
    assert params["data.excluded_by_review"] == "2" and params["data.added_from_review"] == str(ACCEPTED_WEIGHT)
    assert second.n_train == len(sample) - 2

    third = continual.train_day(msettings, days[2])
    assert third.added_from_review == 0  # accepted events train once

    # rejected events are kept as labelled anomalies for evaluation
    ev = continual.evaluate_day(msettings, days[2])
    assert ev.metrics["challenger"]["review"]["rejected_events"] == 3
    lin = continual.Warehouse(msettings.home_path).lineage("ood_review")
    assert lin["actor"].tolist()[:3] == ["ana", "ana", "bo"]
