"""didact act notify: an Alertmanager-style webhook POST, received by a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from didact_core.act import AuditLog, NodeInfo, Observation, apply, parse_policy, plan
from didact_core.act import notify as webhook
from didact_core.errors import DidactError

POLICY = """
[notify]
url = "{url}"
timeout_s = 5

[[rule]]
name = "ood-streak"
when = "ood_consecutive >= 3"
action = "notify"
auto = true
"""


class Receiver:
    """A webhook receiver (stdlib http.server) that keeps what it was sent."""

    def __init__(self, status: int = 200):
        self.bodies: list[dict] = []
        self.headers: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                n = int(self.headers["Content-Length"])
                receiver.bodies.append(json.loads(self.rfile.read(n)))
                receiver.headers.append(dict(self.headers))
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


class FakeSlurm:
    def nodes(self):
        return {"n1": NodeInfo("n1", "IDLE"), "n2": NodeInfo("n2", "IDLE")}


def test_notify_posts_alertmanagers_webhook_format(tmp_path):
    audit = AuditLog(tmp_path / "audit.jsonl")
    with Receiver() as rx:
        policy = parse_policy(POLICY.format(url=rx.url), "act.toml")
        obs = {"n1": Observation("n1", 4, 17, ood_consecutive=4), "n2": Observation("n2", 2, 9, ood_consecutive=1)}
        out = apply(policy, obs, FakeSlurm(), audit)
    assert [(r["kind"], r["node"], r["http"], r["sent_to"]) for r in out] == [("notify", "n1", 200, rx.url)]
    body = rx.bodies[0]
    assert rx.headers[0]["Content-Type"] == "application/json"
    assert {k: body[k] for k in ("version", "status", "receiver", "truncatedAlerts")} == {
        "version": "4", "status": "firing", "receiver": "didact", "truncatedAlerts": 0}
    assert body["groupLabels"] == {"alertname": "DidactAct"} and body["externalURL"] == ""
    (a,) = body["alerts"]
    assert a["status"] == "firing" and a["endsAt"] == "0001-01-01T00:00:00Z" and len(a["fingerprint"]) == 16
    assert a["labels"] == {"alertname": "DidactAct", "node": "n1", "rule": "ood-streak", "action": "notify",
                           "severity": "warning"}  # fmt: skip
    assert a["annotations"]["summary"] == "didact: ood-streak ood_consecutive 4 (event 17)"
    assert a["annotations"]["description"] == "ood_consecutive >= 3 holds: ood_consecutive = 4"
    assert a["startsAt"].endswith("Z") and body["commonLabels"] == a["labels"]


def test_a_failing_receiver_is_a_recorded_failure(tmp_path):
    audit = AuditLog(tmp_path / "audit.jsonl")
    with Receiver(status=500) as rx:
        policy = parse_policy(POLICY.format(url=rx.url), "act.toml")
        out = apply(policy, {"n1": Observation("n1", 3, 1, ood_consecutive=3)}, FakeSlurm(), audit)
    assert out[0]["kind"] == "failed" and "answered HTTP 500" in out[0]["error"] and len(rx.bodies) == 1


def test_an_unreachable_receiver_is_a_clear_error():
    with Receiver() as rx:
        url = rx.url
    with pytest.raises(DidactError, match="did not take the alert.*notify\\] url or DIDACT_ACT_WEBHOOK_URL"):
        webhook.post(url, webhook.payload([]), timeout_s=2)


def test_a_notify_approved_after_the_streak_ended_is_not_sent(tmp_path):
    audit = AuditLog(tmp_path / "audit.jsonl")
    with Receiver() as rx:
        policy = parse_policy(POLICY.format(url=rx.url).replace("auto = true", "auto = false"), "act.toml")
        props, _ = plan(policy, {"n1": Observation("n1", 5, 3, ood_consecutive=3)}, FakeSlurm(), audit)
        # the node's newest interval was normal: the streak is 0 now
        out = apply(policy, {"n1": Observation("n1", 5, 3, ood_consecutive=0)}, FakeSlurm(), audit,
                    approve=[props[0].id])  # fmt: skip
    assert [r["kind"] for r in out] == ["refused"] and rx.bodies == []
