"""Loopback HTTP for the end-to-end tests: a free port, and one request sent exactly as
written (no client-side normalizing of paths or headers)."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Reply:
    status: int
    headers: http.client.HTTPMessage
    raw: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.raw)

    @property
    def code(self) -> str | None:
        body = self.json
        return body.get("error", {}).get("code") if isinstance(body, dict) else None

    @property
    def request_id(self) -> str:
        return str(self.headers["X-Request-Id"])


def request(port: int, method: str, path: str, *, token: str | None = None,
            body: Any = None, raw_body: bytes | None = None,
            headers: Mapping[str, str] | None = None, timeout: float = 10) -> Reply:
    """One HTTP request with the path sent exactly as given (no client-side normalizing)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    hdrs = dict(headers or {})
    if token is not None:
        hdrs["Authorization"] = f"Bearer {token}"
    data = raw_body if raw_body is not None else (
        json.dumps(body).encode() if body is not None else None)
    if data is not None:
        hdrs.setdefault("Content-Type", "application/json")
    try:
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        return Reply(resp.status, resp.headers, resp.read())
    finally:
        conn.close()
