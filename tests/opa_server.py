"""An OPA Data-API server for tests, on the real OPA engine.

The OPA server binary cannot be installed here; OPA's Go engine can, as a shared library
(opa-golib-python-bindings). This puts the part of OPA's REST API the gateway uses in front
of it — `POST /v1/data/<path>` with `{"input": …}`, `?provenance=true`, `GET /health` —
loaded with the same policy files the gateway would compile, as one bundle named `toolgate`
whose revision is given on the command line. The answers are the engine's own: a decision,
no `result` when the document is undefined, HTTP 500 with OPA's error body when evaluation
fails. The library treats a failing builtin as an error, which is what the gateway asks a
real OPA for (`strict-builtin-errors=true`); the server insists on that parameter, so a
gateway that forgot it would fail here. So the `opa` engine is tested against what OPA
computes, and only the HTTP framing is ours.

A test can make it misbehave through `/_test/*`: answer late (`delay_ms`), answer with a
status of its choosing (`status`), or report another bundle revision (`revision`).

    python -m tests.opa_server --port 8181 --revision r1 policies/ [more paths…]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from aiohttp import web
from opa_bindings import OpaEngine, OpaError, OpaUndefinedError

from gateway.policy.sources import load_sources

STATE = web.AppKey("state", dict)


def engine_for(paths: list[Path]) -> OpaEngine:
    """The real OPA engine loaded with the policy files and data the gateway would load."""
    sources = load_sources(paths)
    engine = OpaEngine()
    for name, text in sources.modules:
        engine.add_policy(name, text)
    engine.add_data(sources.data)
    return engine


async def data(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if state["delay_ms"]:
        await asyncio.sleep(state["delay_ms"] / 1000)
    if state["status"] != 200:
        return web.json_response({"code": "test_failure", "message": "told to fail"},
                                 status=state["status"])
    if request.query.get("strict-builtin-errors", "").lower() != "true":
        return web.json_response({"code": "test_failure", "message": "this server is strict "
                                  "about builtin errors: ask with strict-builtin-errors=true"},
                                 status=400)
    body: Any = await request.json()
    path = request.match_info["path"].strip("/").replace("/", ".")
    answer: dict[str, Any] = {}
    try:
        answer["result"] = await asyncio.to_thread(state["engine"].eval_document, path,
                                                   body.get("input"))
    except OpaUndefinedError:
        pass
    except OpaError as exc:
        return web.json_response({"code": "internal_error", "message": str(exc)}, status=500)
    if request.query.get("provenance", "").lower() == "true":
        answer["provenance"] = {"version": "opa-golib-python-bindings",
                                "bundles": {"toolgate": {"revision": state["revision"]}}}
    return web.json_response(answer)


async def health(request: web.Request) -> web.Response:
    return web.json_response({})


async def control(request: web.Request) -> web.Response:
    state = request.app[STATE]
    for key, kind in (("delay_ms", int), ("status", int), ("revision", str)):
        if key in request.query:
            state[key] = kind(request.query[key])
    return web.json_response({k: v for k, v in state.items() if k != "engine"})


def app(paths: list[Path], revision: str) -> web.Application:
    application = web.Application()
    application[STATE] = {"engine": engine_for(paths), "revision": revision, "delay_ms": 0,
                          "status": 200}
    application.router.add_post("/v1/data/{path:.*}", data)
    application.router.add_get("/health", health)
    application.router.add_post("/_test/set", control)
    return application


def main() -> None:
    parser = argparse.ArgumentParser(prog="opa_server")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--revision", default="test-revision")
    parser.add_argument("paths", nargs="+", type=Path)
    args = parser.parse_args()
    print("listening", flush=True, file=sys.stderr)
    web.run_app(app(args.paths, args.revision), host="127.0.0.1", port=args.port,
                print=None, access_log=None)


if __name__ == "__main__":
    main()
