"""Storage faults as an operator meets them (issue 15, faults 1, 3, 4, 6): damaged
parts, a moved home, a damaged or lost catalog, orphans and a full disk — each a clear
error with the fix, and nothing lost."""

from __future__ import annotations

import datetime as dt
import errno
import logging
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from didact_assets import cli_storage
from didact_assets.cli import main as didact_cli
from didact_core.data import folders
from didact_core.data import parts as parts_mod
from didact_core.data import spine
from didact_core.data.catalog_rebuild import rebuild_catalog
from didact_core.data.parts import DamagedPartError, StorageError
from didact_core.data.warehouse import Warehouse
from didact_core.errors import DidactError

from .days import fixed_days

REPO = Path(__file__).resolve().parent.parent
DAY = fixed_days(1)[0]
RAW, AI = spine.RAW, spine.AI_READY


@pytest.fixture
def settings(settings):
    """The tiny cluster without injected data faults: a one-node part whose node has no
    fault interval trips an IndexError in labels.attach_intervals (reported to the lead)."""
    return settings.replace(fault_rate=0.0)


def day_of(d: str) -> dt.date:
    return dt.date.fromisoformat(d)


def ingest(settings, day=DAY, blocks=1):
    """A raw day of the 4-node cluster in four parts (one per node)."""

    return spine.ingest_raw(settings, day_of(day), nodes_per_block=blocks).version


def ai_ready(settings, day=DAY):
    return spine.build_ai_ready(settings, day_of(day)).version


def cli_verify(settings, *argv) -> int:
    import argparse

    p = argparse.ArgumentParser()
    cli_storage.add_parsers(p.add_subparsers(dest="cmd"))
    args = p.parse_args(["verify", *argv])
    return args.func(args, settings)


# -- fault 1: reads check the parts ---------------------------------------------------------


def test_a_deleted_raw_part_fails_ai_ready_naming_the_part_and_the_rollback(settings, didact_env):
    v1 = ingest(settings)
    v2 = ingest(settings)
    assert len(list((v2.path / "cpu").glob("part-*.parquet"))) == 4
    gone = v2.path / "cpu" / "part-00002.parquet"
    gone.unlink()
    with pytest.raises(DamagedPartError) as e:
        ai_ready(settings)
    msg = str(e.value)
    assert str(gone) in msg and "missing" in msg
    assert f"didact rollback --asset {RAW} --partition {DAY} --to v{v1.version}" in msg
    wh = Warehouse(settings.home_path)
    assert wh.head(AI, DAY) is None  # nothing half-built was published

    # the fix the error names works: all 4 nodes come back
    assert didact_cli(["rollback", "--asset", RAW, "--partition", DAY, "--to", f"v{v1.version}"]) == 0
    samples = wh.read(AI, DAY, "samples", version=ai_ready(settings).version)
    assert samples["node"].nunique() == settings.nodes


def test_without_an_intact_version_the_fix_is_to_rematerialise(settings):
    v1 = ingest(settings)
    (v1.path / "cpu" / "part-00000.parquet").unlink()
    with pytest.raises(DamagedPartError, match=f"re-materialise {RAW} for {DAY}"):
        ai_ready(settings)


def test_flipped_bytes_are_caught_and_verify_reports_them(settings, didact_env, capsys):
    ingest(settings)
    a1 = ai_ready(settings)
    a2 = ai_ready(settings)
    part = a2.path / "samples" / "part-00001.parquet"
    data = bytearray(part.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 64] = bytes(b ^ 0xFF for b in data[mid : mid + 64])
    part.write_bytes(bytes(data))

    wh = Warehouse(settings.home_path)
    with pytest.raises(DamagedPartError) as e:
        wh.read(AI, DAY, "samples")
    assert str(part) in str(e.value) and "content hash differs" in str(e.value)
    assert f"--to v{a1.version}" in str(e.value)

    assert cli_verify(settings) == 1
    out = capsys.readouterr().out
    assert "1 damaged" in out and AI in out
    assert cli_storage.damaged_heads_note(wh) is None  # status checks sizes only: same size
    assert didact_cli(["rollback", "--asset", AI, "--partition", DAY, "--to", str(a1.version)]) == 0
    assert cli_verify(settings) == 0
    assert cli_verify(settings, "--all-versions") == 1  # the damaged v2 is still stored
    assert len(wh.read(AI, DAY, "samples")) == a1.tables["samples"]


def test_a_truncated_part_fails_training_reads_with_the_path(settings):
    from didact_core.learn.split import load_split

    ingest(settings)
    a1 = ai_ready(settings)
    part = a1.path / "samples" / "part-00003.parquet"
    with open(part, "r+b") as f:
        f.truncate(part.stat().st_size // 2)
    wh = Warehouse(settings.home_path)
    with pytest.raises(DamagedPartError) as e:
        load_split(wh, DAY, "train", 1000, settings)
    assert str(part) in str(e.value) and "the catalog says" in str(e.value)
    assert "damaged heads" in cli_storage.damaged_heads_note(wh)


# -- fault 4: a damaged or lost catalog -------------------------------------------------------


def two_versions_and_a_rollback(settings) -> tuple:
    ingest(settings)
    a1, a2 = ai_ready(settings), ai_ready(settings)
    wh = Warehouse(settings.home_path)
    wh.rollback(AI, DAY, a1.version, reason="bad run")
    return wh, a1, a2


@pytest.mark.parametrize("damage", ["zero-bytes", "garbled", "deleted"])
def test_a_damaged_catalog_is_named_at_once_and_rebuilt_from_the_parts(settings, damage):
    wh, a1, a2 = two_versions_and_a_rollback(settings)
    before = {(v.asset, v.partition, v.version, v.data_version) for v, _ in wh.stored()}
    samples = wh.read(AI, DAY, "samples")
    db = settings.home_path / "warehouse.duckdb"
    if damage == "zero-bytes":
        db.write_bytes(b"")
    elif damage == "garbled":
        data = bytearray(db.read_bytes())
        for i in range(0, len(data), 512):
            data[i] ^= 0x5A
        db.write_bytes(bytes(data))
    else:
        db.unlink()

    t0 = time.monotonic()
    with pytest.raises(DidactError) as e:
        Warehouse(settings.home_path)
    assert time.monotonic() - t0 < 5  # not the 300 s lock wait
    assert "didact catalog rebuild" in str(e.value)
    assert {"zero-bytes": "empty (0 bytes", "garbled": "is damaged", "deleted": "is missing"}[damage] in str(e.value)
    assert "close other programs" not in str(e.value)
    if damage == "deleted":
        assert not db.exists()  # refused: no empty catalog beside the stored versions

    rep = rebuild_catalog(settings.home_path)
    assert rep.versions == len(before) and not rep.without_manifest
    assert (rep.kept_damaged is not None) == (damage != "deleted")
    wh = Warehouse(settings.home_path)
    assert {(v.asset, v.partition, v.version, v.data_version) for v, _ in wh.stored()} == before
    assert wh.require(AI, DAY).version == a1.version  # the rollback is remembered
    assert wh.read(AI, DAY, "samples").equals(samples)
    lin = wh.lineage(AI, DAY)
    assert list(lin["event"]) == ["materialize", "materialize", "rollback"]
    assert lin.iloc[-1]["reason"] == "bad run"
    assert wh.sql(f"select count(*) as n from {AI}__samples")["n"][0] == len(samples)
    # and it works on: a new version continues the numbering
    assert ai_ready(settings).version == a2.version + 1


def test_rebuild_refuses_a_healthy_catalog_without_force(settings):
    two_versions_and_a_rollback(settings)
    with pytest.raises(DidactError, match="--force"):
        rebuild_catalog(settings.home_path)
    assert rebuild_catalog(settings.home_path, force=True).versions == 3  # raw v1, AI-ready v1 and v2


# -- fault 6: orphans and a full disk ---------------------------------------------------------

_KILL_BEFORE_COMMIT = """
import datetime as dt, os, sys
from didact_core.config import Settings
from didact_core.data import folders, spine
def die(*a, **k):  # after the folder's rename, before the catalog commit
    os._exit(9)
folders.append_head = die
s = Settings(home=sys.argv[1], nodes=4, cpus=2, interval_s=60.0, seed=7, workers=1, fault_rate=0.0)
spine.build_ai_ready(s, dt.date.fromisoformat(sys.argv[2]))
"""


def orphan_of_a_killed_writer(settings) -> Path:
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(_KILL_BEFORE_COMMIT), settings.home, DAY],
                       cwd=REPO, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 9, r.stderr[-2000:]
    known = {v.path.name for v in Warehouse(settings.home_path).versions(AI, DAY)}
    orphans = [p for p in (settings.home_path / "data" / AI / DAY).glob("v*") if p.name not in known]
    assert len(orphans) == 1 and (orphans[0] / "manifest.json").exists()
    return orphans[0]


def age(path: Path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_prune_removes_an_orphan_version_folder_after_the_grace_period(settings, caplog):
    ingest(settings)
    a1 = ai_ready(settings)
    orphan = orphan_of_a_killed_writer(settings)
    wh = Warehouse(settings.home_path)
    assert wh.require(AI, DAY).version == a1.version  # head unchanged
    wh.prune(keep=5)
    assert orphan.exists()  # too fresh: it could be a concurrent writer's
    age(orphan, folders.ORPHAN_GRACE_S + 60)
    with caplog.at_level(logging.WARNING, logger="didact_core.data.folders"):
        wh.prune(keep=5)
    assert not orphan.exists()
    assert "orphan version folder" in caplog.text and orphan.name in caplog.text
    assert wh.read(AI, DAY, "samples").shape[0] == a1.tables["samples"]


def test_the_next_write_of_the_partition_removes_an_old_orphan(settings):
    ingest(settings)
    ai_ready(settings)
    orphan = orphan_of_a_killed_writer(settings)
    age(orphan, folders.ORPHAN_GRACE_S + 60)
    a2 = ai_ready(settings)
    assert not orphan.exists() and a2.path.exists()


def test_a_full_disk_while_writing_parts_is_a_clear_error_and_the_head_stays(settings, monkeypatch):
    ingest(settings)
    a1 = ai_ready(settings)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(parts_mod.pq, "write_table", full)
    with pytest.raises(StorageError) as e:
        ai_ready(settings)
    msg = str(e.value)
    assert "disk is full" in msg and "MB free" in msg and str(settings.home_path / "data" / AI / DAY) in msg
    assert "head is unchanged" in msg
    monkeypatch.undo()
    wh = Warehouse(settings.home_path)
    assert wh.require(AI, DAY).version == a1.version
    assert not list((settings.home_path / "data" / AI / DAY).glob(".tmp-*"))


def test_a_full_disk_while_publishing_leaves_no_orphan_and_the_head_stays(settings, monkeypatch):
    ingest(settings)
    a1 = ai_ready(settings)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(folders.json, "dump", full)  # the manifest, written inside the commit
    with pytest.raises(StorageError, match="disk is full while writing the version manifest"):
        ai_ready(settings)
    monkeypatch.undo()
    wh = Warehouse(settings.home_path)
    assert wh.require(AI, DAY).version == a1.version
    assert [p.name for p in (settings.home_path / "data" / AI / DAY).iterdir() if p.is_dir()] == [a1.path.name]
    assert ai_ready(settings).version == a1.version + 1


# -- fault 3: a moved home ----------------------------------------------------------------------


@pytest.fixture
def tiny_training(settings):
    return settings.replace(max_train_samples=2000, model_max_epochs=2, model_batch_size=512)


def test_a_moved_home_reads_rolls_back_and_trains_inside_itself(tiny_training, tmp_path, monkeypatch, capsys):
    from didact_core.learn import continual
    from didact_core.learn.registry import CHAMPION, ModelRegistry

    s = tiny_training
    days = fixed_days(3)
    for d in days[:2]:
        ingest(s, d, blocks=64)
        ai_ready(s, d)
        continual.train_day(s, d)
    old_home = s.home_path
    moved = tmp_path / "moved-home"
    subprocess.run(["cp", "-a", str(old_home), str(moved)], check=True)
    shutil.rmtree(old_home)

    m = s.replace(home=str(moved))
    monkeypatch.setenv("DIDACT_HOME", str(moved))
    for k, v in {"DIDACT_NODES": m.nodes, "DIDACT_CPUS": m.cpus, "DIDACT_INTERVAL_S": m.interval_s,
                 "DIDACT_SEED": m.seed, "DIDACT_WORKERS": 1}.items():  # fmt: skip
        monkeypatch.setenv(k, str(v))
    assert didact_cli(["status"]) == 0
    assert str(moved) in capsys.readouterr().out
    wh = Warehouse(moved)
    assert len(wh.read(AI, days[1], "samples")) == wh.require(AI, days[1]).tables["samples"]
    assert str(moved) in wh.sql("select sql from duckdb_views() where view_name = ?", [f"{AI}__samples"])["sql"][0]
    assert wh.sql(f"select count(*) as n from {AI}__samples")["n"][0] > 0

    reg = ModelRegistry(m)
    assert reg.alias(CHAMPION) is not None
    assert all(str(moved) in v.source or v.source.startswith("models:/") for v in reg.versions())
    det, _ = reg.load_alias(CHAMPION)  # the files are read from the moved home
    assert det is not None
    assert didact_cli(["rollback", "--asset", AI, "--partition", days[0], "--to", "v1"]) == 0

    ingest(m, days[2], blocks=64)
    ai_ready(m, days[2])
    out = continual.train_day(m, days[2])
    assert out.version.version == 3
    locations = mlflow_locations(moved / "mlflow" / "mlflow.db")
    assert len(locations) >= 3 + 2 * 3  # the experiment, 3 runs, 3 model versions (+ their logged models)
    assert all(str(moved / "mlflow" / "artifacts") in loc for loc in locations), locations
    assert not old_home.exists()  # nothing was written into the original home


def mlflow_locations(db: Path) -> list[str]:
    """Every file artifact location MLflow's sqlite store holds (the didact experiment's)."""
    import sqlite3

    from didact_core.learn.relocate import LOCATIONS

    con = sqlite3.connect(db)
    try:
        out = []
        for table, _key, col in LOCATIONS:
            out += [r[0] for r in con.execute(f"select {col} from {table}") if r[0] and "/mlflow/artifacts" in r[0]]
        return out
    finally:
        con.close()
