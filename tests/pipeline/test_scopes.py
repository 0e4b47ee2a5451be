"""Stage `scopes`: every scope the spec lists, or 403 naming the missing ones."""

from __future__ import annotations

import pytest

from gateway.core.errors import InsufficientScope
from gateway.devtokens import DevKey
from gateway.pipeline.authenticate import authenticate
from gateway.pipeline.scopes import scopes
from gateway.runtime import Runtime
from tests.support import context

REFUND = {"tenant_id": "acme", "order_id": "ord_1234", "amount": 5, "currency": "USD"}


async def test_all_scopes_present(rt: Runtime, agent_token: str) -> None:
    ctx = context(rt, "POST", "/billing/refunds", token=agent_token, body=REFUND)
    await authenticate(ctx, rt)
    await scopes(ctx, rt)


async def test_a_missing_scope_is_named(rt: Runtime, dev_key: DevKey) -> None:
    token = dev_key.token("reader", tenant="acme", scopes=["orders:read"])
    ctx = context(rt, "POST", "/billing/refunds", token=token, body=REFUND)
    await authenticate(ctx, rt)
    with pytest.raises(InsufficientScope) as info:
        await scopes(ctx, rt)
    assert info.value.extra["missing_scopes"] == ["billing:refund"]
    assert 'error="insufficient_scope"' in info.value.headers["WWW-Authenticate"]
