"""`dagster dev` (webserver + daemon) for tests, and its GraphQL API as the UI uses it."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from pathlib import Path

import requests

from didact_core.procs import terminate_tree

from .conftest import REPO
from .services import answers, free_port

#: how long a 2-day backfill of the nightly chain (4 runs, 2 trainings) may take: ~1.5 min
#: on a quiet 2-core VM, several times that beside the rest of the suite on a slower one
BACKFILL_TIMEOUT_S = 600.0
#: how long one data-spine run may take (~30 s quiet)
RUN_TIMEOUT_S = 300.0

_BACKFILL_ENDED = ("COMPLETED", "COMPLETED_SUCCESS", "FAILED", "CANCELED", "COMPLETED_FAILED")
_RUN_ENDED = ("SUCCESS", "FAILURE", "CANCELED")


def graphql(url: str, query: str, variables: dict | None = None) -> dict:
    """The ``data`` of a GraphQL request to the webserver at ``url`` (fails on any error)."""
    r = requests.post(f"{url}/graphql", json={"query": query, "variables": variables or {}}, timeout=30)
    r.raise_for_status()
    body = r.json()
    assert "errors" not in body, body["errors"]
    return body["data"]


def run_status(url: str, run_id: str) -> str:
    return graphql(url, "query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }",
                   {"id": run_id})["runOrError"]["status"]  # fmt: skip


def wait_run(url: str, run_id: str, timeout_s: float = RUN_TIMEOUT_S) -> str:
    """The run's status once it ended, or its last status after ``timeout_s``."""
    deadline, status = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        status = run_status(url, run_id)
        if status in _RUN_ENDED:
            break
        time.sleep(2)
    return status


def backfill_runs(url: str, backfill_id: str) -> list[str]:
    """``"status partition"`` of each run the backfill launched so far (for failure messages)."""
    data = graphql(url, """query($id: String!) { partitionBackfillOrError(backfillId: $id) {
                             ... on PartitionBackfill { runs(limit: 50) { status tags { key value } } } } }""",
                   {"id": backfill_id})  # fmt: skip
    runs = data["partitionBackfillOrError"]["runs"]
    return [f"{r['status']} " + next((t["value"] for t in r["tags"] if t["key"] == "dagster/partition"), "?")
            for r in runs]  # fmt: skip


def wait_backfill(url: str, backfill_id: str, timeout_s: float = BACKFILL_TIMEOUT_S) -> str:
    """The backfill's status once it ended; after ``timeout_s`` an assertion error naming its
    status and its runs' (a backfill still REQUESTED is still running)."""
    deadline, status = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        status = graphql(url, "query($id: String!) { partitionBackfillOrError(backfillId: $id) { "
                              "... on PartitionBackfill { status } } }", {"id": backfill_id},
                         )["partitionBackfillOrError"]["status"]  # fmt: skip
        if status in _BACKFILL_ENDED:
            return status
        time.sleep(2)
    raise AssertionError(f"backfill {backfill_id} still {status} after {timeout_s:.0f} s; its runs: "
                         f"{backfill_runs(url, backfill_id)}")  # fmt: skip


@contextlib.contextmanager
def dagster_dev(env: dict, log: Path, start_timeout_s: float = 180.0):
    """`dagster dev` (webserver + daemon) on a free 127.0.0.1 port, its output in ``log``
    (a file, not a pipe nobody reads: a full pipe would stall it); yields its URL."""
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "dagster"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1",
             "-p", str(port)], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_timeout_s
        while not answers(f"{url}/server_info"):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
            time.sleep(0.5)
        yield url
    finally:  # what is left after 10 s (dagster dev takes 30 s and more) is killed
        terminate_tree(proc, grace_s=10)
