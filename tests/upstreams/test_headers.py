"""Which agent headers may cross: an allow-list, and what a spec may never add to it."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from gateway.upstreams.headers import (
    agent_headers,
    gateway_headers,
    refused_name,
    response_headers,
)


def test_only_the_allow_list_crosses() -> None:
    headers: CIMultiDict[str] = CIMultiDict({
        "content-type": "application/json", "ACCEPT": "application/json",
        "Accept-Language": "de", "traceparent": "t", "tracestate": "s",
        "X-Forwarded-User": "admin", "X-Real-IP": "1.2.3.4", "Authorization": "Bearer x",
        "Cookie": "c", "X-Customer-Locale": "de-CH", "X-HTTP-Method-Override": "DELETE"})
    assert agent_headers(headers, ("X-Customer-Locale",)) == {
        "Content-Type": "application/json", "Accept": "application/json",
        "Accept-Language": "de", "traceparent": "t", "tracestate": "s",
        "X-Customer-Locale": "de-CH"}
    assert agent_headers(headers, ()) == {
        "Content-Type": "application/json", "Accept": "application/json",
        "Accept-Language": "de", "traceparent": "t", "tracestate": "s"}


def test_a_spec_listing_an_allowed_header_again_sends_it_once() -> None:
    headers: CIMultiDict[str] = CIMultiDict({"Content-Type": "application/json"})
    assert agent_headers(headers, ("content-type", "ACCEPT")) == {
        "Content-Type": "application/json"}


def test_a_repeated_header_is_one_line() -> None:
    headers: CIMultiDict[str] = CIMultiDict([("Accept", "a"), ("accept", "b")])
    assert agent_headers(headers, ()) == {"Accept": "a, b"}


@pytest.mark.parametrize("name", [
    "Authorization", "cookie", "Proxy-Authorization", "Host", "Content-Length",
    "Transfer-Encoding", "Connection", "X-Forwarded-For", "x-forwarded-user",
    "Forwarded", "X-Real-IP", "X-Request-Id", "Idempotency-Key", "Accept-Encoding",
    "bad name", "bad:name", "",
])
def test_a_spec_can_never_allow(name: str) -> None:
    assert refused_name(name) is not None


@pytest.mark.parametrize("name", ["X-Customer-Locale", "X-Delay", "If-Match"])
def test_a_spec_may_allow(name: str) -> None:
    assert refused_name(name) is None


def test_the_gateway_sets_its_own_forwarding_headers() -> None:
    assert gateway_headers(peer="10.0.0.1", scheme="https", forwarded_host="gw",
                           request_id="req_1", idempotency_key=None) == {
        "X-Forwarded-For": "10.0.0.1", "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "gw", "X-Request-Id": "req_1"}
    assert gateway_headers(peer="p", scheme="http", forwarded_host="gw", request_id="r",
                           idempotency_key="k")["Idempotency-Key"] == "k"


def test_response_headers_drop_hop_by_hop_and_the_gateway_s_own() -> None:
    kept = response_headers([("Content-Type", "a"), ("Connection", "close"),
                             ("Keep-Alive", "x"), ("X-Request-Id", "forged"),
                             ("X-Toolgate-Decision", "allow"), ("X-Upstream", "y")])
    assert kept == [("Content-Type", "a"), ("X-Upstream", "y")]
