"""The admin API through a real `toolgate serve`: a body that never finishes arriving is
408 `request_timeout` after `limits.body_timeout_ms`, on every endpoint that reads one
(THREAT_MODEL D9), instead of holding the request — and a connection of the admin port's
128 — for as long as the client likes."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.devtokens import DevKey
from tests.e2e.harness import Gateway, Upstream, request, running
from tests.e2e.profiles import default_gateway

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
