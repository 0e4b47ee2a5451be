"""Helpers shared by the approval tests: tokens, the approvals gateway, polling."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from gateway.devtokens import DevKey
from tests.e2e.harness import Gateway, Reply, request

HERE = Path(__file__).resolve().parent
T = TypeVar("T")


def approver(key: DevKey, sub: str, *roles: str, scope: bool = True,
             tenant: str = "acme") -> str:
    return key.token(sub, tenant=tenant, roles=roles,
                     scopes=["toolgate:approve"] if scope else ["billing:refund"])


def admin(gw: Gateway, method: str, path: str, token: str | None,
          body: Any = None) -> Reply:
    return request(gw.admin_port, method, path, token=token, body=body)


def wait_for(check: Callable[[], T | None], timeout: float = 15, what: str = "") -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def approval_status(gw: Gateway, approval_id: str, token: str) -> str:
    return str(admin(gw, "GET", f"/v1/approvals/{approval_id}", token).json["status"])
