"""EXAMPLE UPSTREAM — a stand-in for your internal CRM, billing and HR APIs.

Only `toolgate demo` runs it. It answers the paths the shipped tool specs forward to, and
refuses calls that do not carry the credential the gateway injects, so the demo shows that
the agent's own token never reaches it.
"""

from __future__ import annotations

import uuid

from aiohttp import web

CREDENTIALS = {"crm": "demo-crm-secret", "billing": "demo-billing-secret",
               "hr": "demo-hr-secret"}
SEEN = web.AppKey("seen", list)


def _check(request: web.Request, header: str, expected: str) -> None:
    if request.headers.get(header) != expected:
        raise web.HTTPUnauthorized(text='{"error": "missing upstream credential"}',
                                   content_type="application/json")


async def customer(request: web.Request) -> web.Response:
    _check(request, "Authorization", f"Bearer {CREDENTIALS['crm']}")
    cid = request.match_info["customer_id"]
    return web.json_response({"id": cid, "name": "Ada Lovelace", "plan": "business",
                              "email": "ada@example.com"})


async def order(request: web.Request) -> web.Response:
    _check(request, "Authorization", f"Bearer {CREDENTIALS['crm']}")
    return web.json_response({"id": request.match_info["order_id"], "total": 349.0,
                              "currency": "USD", "status": "delivered", "refunds": []})


async def note(request: web.Request) -> web.Response:
    _check(request, "Authorization", f"Bearer {CREDENTIALS['crm']}")
    body = await request.json()
    return web.json_response({"note_id": f"note_{uuid.uuid4().hex[:8]}",
                              "ticket_id": request.match_info["ticket_id"],
                              "visibility": body.get("visibility", "internal")}, status=201)


async def refund(request: web.Request) -> web.Response:
    _check(request, "Authorization", f"Bearer {CREDENTIALS['billing']}")
    body = await request.json()
    request.app[SEEN].append(request.headers.get("Idempotency-Key"))
    return web.json_response({"refund_id": f"re_{uuid.uuid4().hex[:10]}", "status": "created",
                              "amount": body["amount"], "currency": body["currency"]},
                             status=201)


async def bank_account(request: web.Request) -> web.Response:
    _check(request, "X-Api-Key", CREDENTIALS["hr"])
    return web.json_response({"status": "changed"})


def make_app() -> web.Application:
    app = web.Application()
    app[SEEN] = []
    app.router.add_get("/v1/customers/{customer_id}", customer)
    app.router.add_get("/v1/orders/{order_id}", order)
    app.router.add_post("/v1/tickets/{ticket_id}/notes", note)
    app.router.add_post("/v1/refunds", refund)
    app.router.add_put("/v1/employees/{employee_id}/bank-account", bank_account)
    return app
