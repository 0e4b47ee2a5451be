"""The admin API through a real `toolgate serve`: a body that never finishes arriving is
408 `request_timeout` after `limits.body_timeout_ms`, on every endpoint that reads one
(THREAT_MODEL D9), instead of holding the request — and a connection of the admin port's
128 — for as long as the client likes. And in-process (both apps on aiohttp's test server,
a real runtime): while the process drains, `approve` is refused and `reject` is not."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import build_apps
from gateway.devtokens import DevKey
from gateway.listener.drain import DRAIN, Drain
from gateway.web import RUNTIME
from tests.e2e.harness import Gateway, Upstream, request, running
from tests.e2e.profiles import default_gateway
from tests.support import UPSTREAM_SECRET, FakeClock, Recorder, config, records

BODY_TIMEOUT_MS = 500
POSTS = ["/v1/approvals/apr_0/approve", "/v1/approvals/apr_0/reject", "/v1/killswitch"]


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, dev_key: DevKey) -> Iterator[Gateway]:
    upstream = Upstream()
    upstream.start()
    gateway = default_gateway(tmp_path_factory.mktemp("admin"), dev_key, upstream)
    gateway.extra = {"limits": {"body_timeout_ms": BODY_TIMEOUT_MS}}
    try:
        with running(gateway):
            yield gateway
    finally:
        upstream.stop()


@pytest.fixture(scope="module")
def approver_token(dev_key: DevKey) -> str:
    return dev_key.token("alice", tenant="acme", roles=["billing-approver"],
                         scopes=["toolgate:approve"])


def unfinished(port: int, path: str, token: str) -> tuple[int, dict[str, Any]]:
    """A POST that promises 100 bytes of body and sends 13; the answer, read until the
    gateway closes the connection (the rest of the body can never be told apart from a
    next request)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                  "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
                  '{"comment": "'.encode())
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


@pytest.mark.parametrize("path", POSTS)
def test_a_body_that_never_ends_is_408(gw: Gateway, approver_token: str, path: str) -> None:
    status, body = unfinished(gw.admin_port, path, approver_token)
    assert (status, body["error"]["code"]) == (408, "request_timeout")


def test_a_whole_body_is_read_and_judged(gw: Gateway, approver_token: str) -> None:
    """The control: the same request, its body complete, gets past the body (to the 404 of
    an id that does not exist)."""
    reply = request(gw.admin_port, "POST", POSTS[0], token=approver_token,
                    body={"comment": "ok"})
    assert (reply.status, reply.code) == (404, "not_found")


REFUND = {"tenant_id": "acme", "order_id": "ord_1234", "currency": "USD", "amount": 250}


async def test_while_draining_approve_is_refused_and_reject_is_taken(
        tmp_path: Path, dev_key: DevKey, recorder: tuple[Recorder, str], clock: FakeClock,
        approver_token: str) -> None:
    """A call approved while the process stops could be cut mid-send by the drain: the
    vote is refused — 503 `over_capacity`, recorded as a refusal, the call still pending —
    so the approver approves it on another replica. A rejection sends nothing: taken."""
    settings = config(tmp_path, dev_key, recorder[1])
    app, admin = build_apps(settings, {"UPSTREAM_TOKEN": UPSTREAM_SECRET}, clock)
    draining = Drain()
    admin[DRAIN] = draining
    agent_token = dev_key.token("svc-agent", tenant="acme", scopes=["billing:refund"])
    auth = {"Authorization": f"Bearer {agent_token}"}
    async with TestClient(TestServer(app)) as agent, TestClient(TestServer(admin)) as adm:
        held = []
        for key in ("drain-approve", "drain-reject"):
            reply = await agent.post("/billing/refunds", json=REFUND,
                                     headers={**auth, "Idempotency-Key": key})
            assert reply.status == 202
            held.append((await reply.json())["approval_id"])
        draining.begin()
        voter = {"Authorization": f"Bearer {approver_token}"}
        refused = await adm.post(f"/v1/approvals/{held[0]}/approve", json={}, headers=voter)
        assert refused.status == 503
        error = (await refused.json())["error"]
        assert error["code"] == "over_capacity"
        assert "stopping" in error["message"] and "another replica" in error["message"]
        shown = await adm.get(f"/v1/approvals/{held[0]}", headers=voter)
        assert ((await shown.json())["status"], (await shown.json())["approvals"]) == (
            "pending", [])
        rejected = await adm.post(f"/v1/approvals/{held[1]}/reject",
                                  json={"reason": "not now"}, headers=voter)
        assert rejected.status == 200
        assert (await rejected.json())["status"] == "rejected"
        assert isinstance(agent.server, TestServer)
        found = [r for r in records(agent.server.app[RUNTIME])
                 if r.get("approval_id") == held[0] and r.get("event") == "refused"]
        assert [(r["code"], r["actor"]["sub"]) for r in found] == [("over_capacity", "alice")]
    assert recorder[0].seen == [], "nothing was sent"
