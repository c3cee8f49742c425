"""What the Dagster UI shows of a day: row counts, column schemas and their change checks,
rounded numbers, a real best_val_loss, and small inline plots (issue 15)."""

from __future__ import annotations

import base64
import re

import dagster as dg
import pytest

from didact_assets.assets import models, telemetry
from didact_assets.assets.metadata import MAX_IMAGE_BYTES, image, rounded
from didact_assets.definitions import schema_checks
from didact_core.data.warehouse import Warehouse

from .days import fixed_days
from .test_continual import resource

ASSETS = [telemetry.raw_node_metrics, telemetry.job_labels, telemetry.ai_ready_metrics,
          models.champion_model, models.model_evaluation]  # fmt: skip


@pytest.fixture
def tsettings(settings):
    return settings.replace(max_train_samples=2000, model_max_epochs=3, model_batch_size=512)


def metadata_of(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    [m] = result.asset_materializations_for_node(asset)
    return {k: v.value for k, v in m.metadata.items()}


def floats_in(meta: dict) -> list[float]:
    out = []
    for v in meta.values():
        if isinstance(v, float):
            out.append(v)
        elif isinstance(v, dict):
            out.extend(floats_in(v))
    return out


def png_bytes(md: str) -> bytes:
    m = re.fullmatch(r"!\[[^]]*\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", md)
    assert m, md[:80]
    return base64.b64decode(m.group(1))


def test_a_days_metadata_is_what_a_user_reads(tsettings):
    days = fixed_days(2)
    instance = dg.DagsterInstance.ephemeral()
    res = dg.materialize([*ASSETS, *schema_checks], partition_key=days[0], instance=instance,
                         resources={"didact": resource(tsettings)})  # fmt: skip
    assert res.success
    wh = Warehouse(tsettings.home_path)

    for asset, table in [("raw_node_metrics", "cpu"), ("job_labels", "labels"), ("ai_ready_metrics", "samples")]:
        meta = metadata_of(res, asset)
        assert meta["dagster/row_count"] == wh.require(asset, days[0]).tables[table] > 0
        columns = [c.name for c in meta["dagster/column_schema"].columns]
        assert columns == list(wh.read(asset, days[0], table).columns)
    ai_columns = [c.name for c in metadata_of(res, "ai_ready_metrics")["dagster/column_schema"].columns]
    assert set(tsettings.features) <= set(ai_columns)

    champion = metadata_of(res, "champion_model")
    assert isinstance(champion["best_val_loss"], float) and champion["best_val_loss"] > 0
    evaluation = metadata_of(res, "model_evaluation")
    for meta in (champion, evaluation, metadata_of(res, "ai_ready_metrics")):
        for x in floats_in(meta):
            assert x == float(f"{x:.4g}"), x
    for meta, names in [(champion, ["latent", "losses", "error_hist"]),
                        (evaluation, ["challenger_latent", "challenger_error_hist"])]:  # fmt: skip
        for name in names:
            png = png_bytes(meta[f"plot/{name}"])
            assert png.startswith(b"\x89PNG") and len(png) <= MAX_IMAGE_BYTES

    # the column-schema-change checks exist and pass, on the first day and on the next
    res2 = dg.materialize([*ASSETS[:3], *schema_checks], partition_key=days[1], instance=instance,
                          resources={"didact": resource(tsettings)})  # fmt: skip
    for r in (res, res2):
        checks = {(c.asset_key.path[-1], c.check_name): c.passed for c in r.get_asset_check_evaluations()}
        for asset in ("raw_node_metrics", "job_labels", "ai_ready_metrics"):
            assert checks[(asset, "column_schema_change")] is True


def test_rounding_and_a_big_image_shrinks():
    assert rounded(0.123456789) == 0.1235 and rounded(123456.7) == 123500.0
    assert rounded({"a": [1.0000001, 2], "b": True}) == {"a": [1.0, 2], "b": True}
    assert rounded(float("nan")) is None

    import io

    import numpy as np
    from PIL import Image

    noise = (np.random.default_rng(0).random((900, 1200, 3)) * 255).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="PNG")
    assert len(buf.getvalue()) > MAX_IMAGE_BYTES
    assert len(png_bytes(image(buf.getvalue(), "noise").value)) <= MAX_IMAGE_BYTES
