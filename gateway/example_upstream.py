"""EXAMPLE UPSTREAM — a stand-in for your internal CRM, billing and HR APIs.

`toolgate demo` runs it in-process, and `toolgate example-upstream` serves it on its own
(`gateway.cli.example`) so the README's "Running it for real" has something to forward to.
It answers the paths the shipped tool specs forward to, with made-up data, and refuses
(401) a call that does not carry the credential the gateway injects for that API, so a
session shows that the agent's own token never reaches it.

The credentials it checks are the ones the shipped `toolgate.yaml` makes the gateway send:
`upstreams.<api>.credential` names the environment variable, the header and the prefix,
and `CREDENTIAL_SOURCES` below says the same (a test holds the two together).
"""

from __future__ import annotations

import hmac
import secrets
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TextIO

from aiohttp import web
from aiohttp.typedefs import Middleware


@dataclass(frozen=True)
class CredentialSource:
    """How the gateway sends one API's credential: `header: prefix + $env`."""
    env: str
    header: str
    prefix: str = ""


# The three APIs and, for each, what toolgate.yaml's `upstreams.<api>.credential` says.
CREDENTIAL_SOURCES: Mapping[str, CredentialSource] = MappingProxyType({
    "crm": CredentialSource("CRM_TOKEN", "Authorization", "Bearer "),
    "billing": CredentialSource("BILLING_TOKEN", "Authorization", "Bearer "),
    "hr": CredentialSource("HR_TOKEN", "X-Api-Key"),
})


class CredentialsMissing(Exception):
    """An environment variable the example upstream reads its credentials from is unset."""


@dataclass(frozen=True)
class Credentials:
    """The secret each example API expects to receive from the gateway."""
    crm: str
    billing: str
    hr: str

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Credentials:
        """The secrets from CRM_TOKEN, BILLING_TOKEN and HR_TOKEN: the variables the gateway
        reads them from too. Raises `CredentialsMissing` naming every unset or empty one."""
        missing = [s.env for s in CREDENTIAL_SOURCES.values() if not environ.get(s.env)]
        if missing:
            raise CredentialsMissing(
                f"{', '.join(missing)} not set: the example upstream checks the credentials "
                "the gateway injects, so export the same values where each of them runs")
        return cls(**{api: environ[s.env] for api, s in CREDENTIAL_SOURCES.items()})

    @classmethod
    def generate(cls) -> Credentials:
        """Fresh random secrets (the demo's, one set per run)."""
        return cls(**{api: secrets.token_urlsafe(24) for api in CREDENTIAL_SOURCES})

    def environ(self) -> dict[str, str]:
        """The gateway's environment for these secrets: {"CRM_TOKEN": …, …}."""
        return {s.env: self.secret(api) for api, s in CREDENTIAL_SOURCES.items()}

    def secret(self, api: str) -> str:
        value: str = getattr(self, api)
        return value

    def __repr__(self) -> str:
        return "Credentials(<redacted>)"  # SECURITY: never printed, even by accident


CREDENTIALS = web.AppKey("credentials", Credentials)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _check(request: web.Request, api: str) -> None:
    source = CREDENTIAL_SOURCES[api]
    expected = source.prefix + request.app[CREDENTIALS].secret(api)
    got = request.headers.get(source.header, "")
    # SECURITY: a constant-time comparison, as a real API would do.
    if not hmac.compare_digest(got.encode(), expected.encode()):
        raise web.HTTPUnauthorized(
            text=f'{{"error": "missing or wrong {api} credential in {source.header}"}}',
            content_type="application/json")


async def customer(request: web.Request) -> web.Response:
    _check(request, "crm")
    cid = request.match_info["customer_id"]
    return web.json_response({"id": cid, "name": "Ada Lovelace", "plan": "business",
                              "email": "ada@example.com"})


async def order(request: web.Request) -> web.Response:
    _check(request, "crm")
    return web.json_response({"id": request.match_info["order_id"], "total": 349.0,
                              "currency": "USD", "status": "delivered", "refunds": []})


async def note(request: web.Request) -> web.Response:
    _check(request, "crm")
    body = await request.json()
    return web.json_response({"note_id": f"note_{uuid.uuid4().hex[:8]}",
                              "ticket_id": request.match_info["ticket_id"],
                              "visibility": body.get("visibility", "internal")}, status=201)


async def refund(request: web.Request) -> web.Response:
    _check(request, "billing")
    body = await request.json()
    return web.json_response({"refund_id": f"re_{uuid.uuid4().hex[:10]}", "status": "created",
                              "amount": body["amount"], "currency": body["currency"]},
                             status=201)


async def bank_account(request: web.Request) -> web.Response:
    _check(request, "hr")
    return web.json_response({"status": "changed"})


def request_log(out: TextIO) -> Middleware:
    """One line per request on `out`: method, path, status and the correlation headers the
    gateway adds. Never a credential or any other header value."""
    @web.middleware
    async def log(request: web.Request, handler: Handler) -> web.StreamResponse:
        status = 500  # what aiohttp answers for anything but an HTTPException
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            seen = [f"{h}: {request.headers[h]}" for h in ("X-Request-Id", "Idempotency-Key")
                    if h in request.headers]
            print(f"{request.method} {request.path_qs} -> {status}"
                  + (f"  ({'; '.join(seen)})" if seen else ""), file=out, flush=True)
    return log


def make_app(credentials: Credentials, log_to: TextIO | None = None) -> web.Application:
    """The example APIs, checking `credentials`; with `log_to`, one line per request."""
    app = web.Application(middlewares=[] if log_to is None else [request_log(log_to)])
    app[CREDENTIALS] = credentials
    app.router.add_get("/v1/customers/{customer_id}", customer)
    app.router.add_get("/v1/orders/{order_id}", order)
    app.router.add_post("/v1/tickets/{ticket_id}/notes", note)
    app.router.add_post("/v1/refunds", refund)
    app.router.add_put("/v1/employees/{employee_id}/bank-account", bank_account)
    return app
