"""Nothing gets past the gate: each weakness of the hostile-agent issue, tried as an agent
(or a stranger on the admin port) would, against a real `toolgate serve`."""

from __future__ import annotations

import contextlib
import json
import resource
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.devtokens import DevKey
from tests.e2e import harness
from tests.e2e.approvals_support import admin, wait_for
from tests.e2e.harness import Gateway, Reply, Upstream, running
from tests.e2e.profiles import (
    TIGHT_LIMITS,
    default_gateway,
    hardened_gateway,
    shared_admin_gateway,
)

REFUND = {"tenant_id": "acme", "order_id": "ord_1234", "currency": "USD"}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, dev_key: DevKey,
       upstream: Upstream) -> Iterator[Gateway]:
    with running(hardened_gateway(tmp_path_factory.mktemp("attacks"), dev_key,
                                  upstream)) as gateway:
        yield gateway


def decision(gw: Gateway, reply: Reply) -> dict[str, Any]:
    [record] = [r for r in gw.records_for(reply.request_id) if r["kind"] == "decision"]
    return record


def raw(port: int, data: bytes, *, timeout: float = 5) -> bytes:
    """Bytes as they are, and everything the gateway answers before it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def answer(data: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


# ---- 1. run budgets -----------------------------------------------------------------------

def test_a_timeout_keeps_its_spend(gw: Gateway, token: str) -> None:
    run = {"X-Agent-Run-Id": "run-timeout"}
    slow = gw.call("GET", "/echo/slow", token=token, headers={**run, "X-Gate": "never"})
    assert (slow.status, slow.code) == (504, "upstream_timeout")
    # The upstream may have acted: the call counts (max_tool_calls is 8).
    for i in range(7):
        assert gw.call("GET", "/echo/items/a", token=token, headers=run).status == 200, i
    assert gw.call("GET", "/echo/items/a", token=token, headers=run).code == "budget_exceeded"


def test_a_negative_amount_cannot_lower_the_spend(gw: Gateway, token: str) -> None:
    run = {"X-Agent-Run-Id": "run-negative"}
    lower = gw.call("POST", "/state/spend", token=token, body={"amount": -1000}, headers=run)
    assert (lower.status, lower.code) == (422, "schema_invalid")
    assert gw.call("POST", "/state/spend", token=token, body={"amount": 100},
                   headers=run).status == 200
    assert gw.call("POST", "/state/spend", token=token, body={"amount": 1},
                   headers=run).code == "budget_exceeded"


def test_a_malformed_run_claim_is_never_replaced_by_the_header(
        gw: Gateway, upstream: Upstream, dev_key: DevKey) -> None:
    token = dev_key.token("svc-agent", tenant="acme", scopes=["echo:read"], run_id=42)
    reply = gw.call("GET", "/echo/items/a", token=token,
                    headers={"X-Agent-Run-Id": "a-fresh-budget"})
    assert (reply.status, reply.code) == (401, "unauthenticated")
    assert "malformed run_id claim" in reply.headers["WWW-Authenticate"]


# ---- 2. no token, credential or body in any log -------------------------------------------

def test_a_bare_lf_request_is_refused_and_recorded_and_not_logged(gw: Gateway,
                                                                  token: str) -> None:
    status, body = answer(raw(gw.port, b"POST /echo/items HTTP/1.1\nHost: x\nAuthorization: "
                              b"Bearer " + token.encode() + b"\nContent-Length: 30\n\n"
                              b'{"name": "canary-lf-body"}'))
    assert (status, body["error"]["code"]) == (400, "bad_request")
    [record] = [r for r in gw.records() if r["decision_id"] == body["error"]["request_id"]]
    assert (record["stage"], record["code"]) == ("parse", "bad_request")
    # The session-wide scan (tests/e2e/conftest.py) checks every log for the token too.
    assert token not in gw.log()
    assert "canary-lf-body" not in gw.log()


# ---- 3. slow clients ------------------------------------------------------------------------

@pytest.mark.parametrize("port_of", ["port", "admin_port"])
def test_a_head_that_never_ends_is_cut_off(gw: Gateway, port_of: str) -> None:
    port = getattr(gw, port_of)
    label = "agent" if port_of == "port" else "admin"
    series = f'toolgate_slow_request_heads_total{{port="{label}"}}'
    before = counted(gw, series)
    # Well before any default timeout (10 s): a later close fails the recv.
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        assert s.recv(1024) == b"", "the gateway closes the connection"
    assert counted(gw, series) == before + 1, "closed by the head timer, not another"


@pytest.mark.parametrize("port_of", ["port", "admin_port"])
def test_an_idle_connection_is_closed(gw: Gateway, port_of: str) -> None:
    with socket.create_connection(("127.0.0.1", getattr(gw, port_of)), timeout=10) as s:
        assert s.recv(1024) == b""


def test_a_body_that_never_ends_is_408_and_recorded(gw: Gateway, token: str) -> None:
    status, body = answer(raw(gw.port, b"POST /echo/items HTTP/1.1\r\nHost: x\r\n"
                              b"Authorization: Bearer " + token.encode() + b"\r\n"
                              b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
                              b'{"name": "'))
    assert (status, body["error"]["code"]) == (408, "request_timeout")
    [record] = [r for r in gw.records() if r["decision_id"] == body["error"]["request_id"]]
    assert (record["stage"], record["tool"]) == ("parse", "echo_post")


@pytest.mark.parametrize(("port_of", "cap"), [
    ("port", TIGHT_LIMITS["max_connections"]),
    ("admin_port", TIGHT_LIMITS["admin_max_connections"])])
def test_connections_past_the_cap_are_turned_away(gw: Gateway, port_of: str,
                                                  cap: int) -> None:
    port = getattr(gw, port_of)
    held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(cap)]
    try:
        for s in held:  # each is accepted and waits for its request
            s.sendall(b"GET /healthz HTTP/1.1\r\n")
        wait_for(lambda: b"503" in raw(port, b"GET /healthz HTTP/1.1\r\n\r\n")[:20],
                 what="a connection past the cap to be answered 503")
    finally:
        for s in held:
            s.close()
    wait_for(lambda: request_ok(gw, port), what="room again once the others closed")
    label = "agent" if port_of == "port" else "admin"
    assert counted(gw, f'toolgate_connections_turned_away_total{{port="{label}"}}') >= 1


def counted(gw: Gateway, series: str) -> float:
    """The value of one series on the admin port's /metrics (0 when it is absent)."""
    text = admin(gw, "GET", "/metrics", None).raw.decode()
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith(series + " ")]
    return values[0] if values else 0.0


def request_ok(gw: Gateway, port: int) -> bool:
    return b" 200 " in raw(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
                                 b"Connection: close\r\n\r\n")[:20] if port == gw.admin_port \
        else b"HTTP/1.1" in raw(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")


@pytest.mark.parametrize("port_of", ["port", "admin_port"])
def test_a_partial_head_behind_a_complete_request_is_cut_off(gw: Gateway,
                                                              port_of: str) -> None:
    label = "agent" if port_of == "port" else "admin"
    series = f'toolgate_slow_request_heads_total{{port="{label}"}}'
    before = counted(gw, series)
    data = raw(getattr(gw, port_of), b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                                     b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    assert data.startswith(b"HTTP/1.1 "), "the complete request is answered"
    # Closed by the head timer (counted), not by the idle timer after it.
    assert counted(gw, series) > before


ABANDONED = "did not take its response in time"


def test_a_client_that_never_reads_is_cut_off(gw: Gateway) -> None:
    """Answers pile up for a client that never reads: here 400 pipelined requests for the
    16 KB OpenAPI document, far more than the socket buffers hold. Past
    `limits.send_timeout_ms` the connection is aborted and what was left unsent dropped."""
    count, before = 400, gw.log().count(ABANDONED)
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.settimeout(10)
        s.connect(("127.0.0.1", gw.admin_port))
        s.sendall(b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n" * count)
        wait_for(lambda: gw.log().count(ABANDONED) > before,
                 what="the gateway to give up on a client that does not read")
        received = 0
        with contextlib.suppress(ConnectionResetError):
            while chunk := s.recv(1 << 20):
                received += len(chunk)
    assert received < count * len(admin(gw, "GET", "/openapi.json", None).raw)
    assert counted(gw, 'toolgate_send_timeouts_total{port="admin"}') >= 1


def over_capacity(port: int) -> dict[str, Any] | None:
    """The error of a connection turned away at a cap, or None if it was let in."""
    status, body = answer(raw(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
                                    b"Connection: close\r\n\r\n"))
    return body["error"] if status == 503 else None


def test_one_client_cannot_fill_the_admin_port(tmp_path: Path, dev_key: DevKey,
                                               upstream: Upstream) -> None:
    """The kubelet's probes use the admin port; one client (every loopback address is one)
    gets `limits.admin_max_connections_per_client` of it (2 here, of 8). The agent port
    has no per-client cap: its one client is the agent."""
    with running(shared_admin_gateway(tmp_path, dev_key, upstream)) as shared:
        held = [socket.create_connection(("127.0.0.1", port), timeout=5)
                for port in (shared.admin_port,) * 2 + (shared.port,) * 4]
        try:
            for s in held:
                s.sendall(b"GET /healthz HTTP/1.1\r\n")
            error = wait_for(lambda: over_capacity(shared.admin_port),
                             what="a third connection from one client to be turned away")
            assert error["code"] == "over_capacity"
            assert error["request_id"].startswith("req_")
            assert over_capacity(shared.port) is None
        finally:
            for s in held:
                s.close()
        wait_for(lambda: request_ok(shared, shared.admin_port), what="room once they closed")
        assert counted(shared, 'toolgate_connections_turned_away_total{port="admin"}') >= 1


def with_open_file_limit(monkeypatch: pytest.MonkeyPatch, ulimit: str) -> None:
    """The next gateway starts under `ulimit <ulimit>`, as a shell would start it."""
    command = harness.toolgate_command()
    monkeypatch.setattr(harness, "toolgate_command", lambda: [
        "sh", "-c", f'ulimit {ulimit} && exec "$@"', "sh", *command])


def test_caps_past_the_open_file_limit_refuse_to_start(
        tmp_path: Path, dev_key: DevKey, upstream: Upstream,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the limit the event loop resets new connections and says nothing (the kubelet's
    probes fail first): caps that cannot fit are a start-up error naming the numbers."""
    with_open_file_limit(monkeypatch, "-n 256")
    gateway = default_gateway(tmp_path, dev_key, upstream)
    with pytest.raises(RuntimeError, match="gateway exited 1"):
        gateway.start()
    log = gateway.log()
    assert "open-file limit is 256 (hard limit 256)" in log
    assert "limits.max_connections 1024 + limits.admin_max_connections 128" in log


def test_a_low_soft_open_file_limit_is_raised(tmp_path: Path, dev_key: DevKey,
                                              upstream: Upstream,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 4096:
        pytest.skip(f"the hard open-file limit here ({hard}) is below what the caps need")
    with_open_file_limit(monkeypatch, "-Sn 256")
    with running(default_gateway(tmp_path, dev_key, upstream)) as gateway:
        assert "raised the open-file limit from 256" in gateway.log()
        assert request_ok(gateway, gateway.admin_port)


# ---- 4. the admin port cannot fill the disk --------------------------------------------------

@pytest.mark.parametrize("with_agent_token", [False, True])
def test_admin_refusals_of_non_approvers_are_limited_and_aggregated(
        tmp_path_factory: pytest.TempPathFactory, dev_key: DevKey, upstream: Upstream,
        token: str, with_agent_token: bool) -> None:
    """Without a token, or with the agent's own (valid, without the approver scope): the
    agent shares the pod's network, so either could fill the audit volume."""
    gw = hardened_gateway(tmp_path_factory.mktemp("admin-flood"), dev_key, upstream)
    caller, first = (token, "insufficient_scope") if with_agent_token \
        else (None, "unauthenticated")
    path = "/v1/approvals/apr_" + "x" * 6000 + "/approve"
    with running(gw):
        codes = [admin(gw, "POST", path, caller).code for _ in range(200)]
        assert codes[0] == first
        assert codes.count("rate_limited") > 150, "past its burst, a client is slowed down"
        assert [r for r in gw.records() if r.get("event") == "refused"] == []
    [aggregate] = [r for r in gw.records() if r["kind"] == "admin_refusals"]
    assert aggregate["total"] == 200
    assert aggregate["rate_limited"] == codes.count("rate_limited")
    assert len(aggregate["sample"]) <= 5
    assert len(json.dumps(aggregate)) < 4096, "one bounded record, whatever the traffic"
    assert {(c["sub"], c["code"]) for c in aggregate["counts"]} == {
        ("svc-agent" if with_agent_token else None, first)}


@pytest.mark.parametrize("authorized", [True, False])
def test_a_refused_call_records_an_outline_not_its_body(gw: Gateway, token: str,
                                                        authorized: bool) -> None:
    """Agent-port refusals keep one record each, but never the body that was refused."""
    body = {**REFUND, "amount": "lots", "padding-" + "p" * 2000: "x" * 900_000}
    reply = gw.call("POST", "/billing/refunds", token=token if authorized else None,
                    body=body, headers={"Idempotency-Key": f"outline-{authorized}"})
    assert reply.code == ("schema_invalid" if authorized else "unauthenticated")
    record = decision(gw, reply)
    assert len(json.dumps(record)) < 2048
    assert record["args"] is None
    assert record["args_outline"] == {
        "declared": {"amount": {"type": "string", "bytes": 6},
                     "currency": {"type": "string", "bytes": 5},
                     "order_id": {"type": "string", "bytes": 10},
                     "tenant_id": {"type": "string", "bytes": 6}},
        "undeclared": 1}


@pytest.mark.parametrize("body", [
    b'{"' + b"A" * 400_000 + b'": 1, "' + b"A" * 400_000 + b'": 2}',   # a name given twice
    b'{"amount": ' + b"9" * 900_000 + b'.0}',                          # a number past a double
    b'{"amount": ' + b"9" * 900_000 + b"}",                            # an integer past 64 bits
])
def test_a_refused_body_is_never_quoted_whole(gw: Gateway, token: str, body: bytes) -> None:
    reply = gw.call("POST", "/billing/refunds", token=None, raw_body=body)
    assert (reply.status, reply.code) == (400, "invalid_json")
    assert len(reply.raw) < 1024
    assert len(json.dumps(decision(gw, reply))) < 2048


@pytest.mark.parametrize(("path", "code"), [
    ("/" + "p" * 7000, "tool_not_allowed"),
    ("/echo/items/a?" + "q" * 3500 + "=1&" + "q" * 3500 + "=2", "invalid_arguments")])
def test_a_refused_path_is_never_quoted_whole(gw: Gateway, token: str, path: str,
                                              code: str) -> None:
    reply = gw.call("GET", path, token=token)
    assert reply.code == code
    assert len(json.dumps(decision(gw, reply))) < 2048


def test_an_allowed_call_records_its_arguments(gw: Gateway, token: str) -> None:
    reply = gw.call("POST", "/billing/refunds", token=token, body={**REFUND, "amount": 5},
                    headers={"Idempotency-Key": "outline-allowed"})
    assert reply.status == 201
    record = decision(gw, reply)
    assert record["args"] == {**REFUND, "amount": 5}
    assert "args_outline" not in record


# ---- 5. parsing differentials ----------------------------------------------------------------

def test_an_anchored_pattern_refuses_a_trailing_newline(gw: Gateway, token: str) -> None:
    reply = gw.call("POST", "/billing/refunds", token=token,
                    body={**REFUND, "order_id": "ord_1234\n", "amount": 5},
                    headers={"Idempotency-Key": "pattern-1"})
    assert (reply.status, reply.code) == (422, "schema_invalid")


@pytest.mark.parametrize(("data", "headers", "code"), [
    ('{"name": "a", "count": 1}'.encode("utf-16"), {}, "invalid_json"),
    ('{"name": "a", "count": 1}'.encode("utf-32"), {}, "invalid_json"),
    (b'\xef\xbb\xbf{"name": "a", "count": 1}', {}, "invalid_json"),
    (b'{"name": "a", "count": 1}', {"Content-Type": "application/json; charset=latin-1"},
     "invalid_json"),
    (b'{"name": "a", "count": ' + b"9" * 5000 + b"}", {}, "invalid_json"),
    # Just under orjson's nesting limit: decided, then the record could not be written.
    (b'{"name": ' + b"[" * 252 + b"]" * 252 + b"}", {}, "invalid_json"),
])
def test_only_utf8_json_with_one_meaning(gw: Gateway, upstream: Upstream, token: str,
                                         data: bytes, headers: dict[str, str],
                                         code: str) -> None:
    before = len(upstream.seen)
    reply = gw.call("POST", "/echo/items", token=token, raw_body=data, headers=headers)
    assert (reply.status, reply.code) == (400, code)
    assert decision(gw, reply)["stage"] == "parse"
    assert len(upstream.seen) == before


def test_two_content_encodings_are_still_compressed(gw: Gateway, token: str) -> None:
    status, body = answer(raw(gw.port, b"POST /echo/items HTTP/1.1\r\nHost: x\r\n"
                              b"Authorization: Bearer " + token.encode() + b"\r\n"
                              b"Content-Type: application/json\r\nContent-Encoding: identity"
                              b"\r\nContent-Encoding: gzip\r\nContent-Length: 2\r\n"
                              b"Connection: close\r\n\r\n{}"))
    assert (status, body["error"]["code"]) == (415, "unsupported_media_type")


@pytest.mark.parametrize(("path", "status", "code"), [
    ("/echo/items/a%0Ab", 400, "invalid_arguments"),  # a tool's route, a bad parameter
    ("/nowhere%0A", 403, "tool_not_allowed"), ("/%0D%0A", 403, "tool_not_allowed")])
def test_every_path_is_decided_and_recorded(gw: Gateway, token: str, path: str,
                                            status: int, code: str) -> None:
    reply = gw.call("GET", path, token=token)
    assert (reply.status, reply.code) == (status, code)
    assert decision(gw, reply)["stage"] == "route"


@pytest.mark.parametrize("request_line", [b"OPTIONS * HTTP/1.1", b"CONNECT x:443 HTTP/1.1",
                                          b"GET http://elsewhere/echo/items/a HTTP/1.1"])
def test_a_target_that_is_not_a_path_is_decided_and_recorded(gw: Gateway, token: str,
                                                              request_line: bytes) -> None:
    status, body = answer(raw(gw.port, request_line + b"\r\nHost: x\r\nAuthorization: Bearer "
                              + token.encode() + b"\r\nConnection: close\r\n\r\n"))
    assert (status, body["error"]["code"]) == (403, "tool_not_allowed"), body
    [record] = [r for r in gw.records() if r["decision_id"] == body["error"]["request_id"]]
    assert (record["kind"], record["stage"]) == ("decision", "route")


# ---- 6. smaller ones ----------------------------------------------------------------------

def test_one_header_line_past_the_limit_is_refused_and_recorded(gw: Gateway,
                                                                token: str) -> None:
    status, body = answer(raw(gw.port, b"GET /echo/items/a HTTP/1.1\r\nHost: x\r\n"
                              b"Authorization: Bearer " + token.encode() + b"\r\n"
                              b"X-Pad: " + b"x" * 8200 + b"\r\n\r\n"))
    assert (status, body["error"]["code"]) == (400, "bad_request")
    [record] = [r for r in gw.records() if r["decision_id"] == body["error"]["request_id"]]
    assert (record["stage"], record["code"]) == ("parse", "bad_request")


def test_a_flood_of_large_headers_is_refused_and_recorded(gw: Gateway, token: str) -> None:
    headers = b"".join(b"X-Pad-%d: " % i + b"x" * 8000 + b"\r\n" for i in range(128))
    status, body = answer(raw(gw.port, b"GET /echo/items/a HTTP/1.1\r\nHost: x\r\n"
                              b"Authorization: Bearer " + token.encode() + b"\r\n" + headers
                              + b"\r\n"))
    assert (status, body["error"]["code"]) == (400, "bad_request")
    assert [r for r in gw.records() if r["decision_id"] == body["error"]["request_id"]]
