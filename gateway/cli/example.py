"""`toolgate example-upstream`: the example CRM, billing and HR APIs on their own.

The shipped `toolgate.yaml` forwards every tool to http://127.0.0.1:9000; this serves the
example upstream (`gateway.example_upstream`) there, so the README's "Running it for real"
has an API behind the gateway. It reads the credentials it checks from CRM_TOKEN,
BILLING_TOKEN and HR_TOKEN — the variables the gateway reads them from — and refuses to
start without them. It binds 127.0.0.1 unless told otherwise, and prints one line per
request (never a header value but the request id and the idempotency key).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from gateway.config import Address, parse_address
from gateway.example_upstream import (
    CREDENTIAL_SOURCES,
    Credentials,
    CredentialsMissing,
    make_app,
)

DEFAULT_LISTEN = "127.0.0.1:9000"  # where the shipped toolgate.yaml's upstreams point


def add_parser(sub: Any) -> None:
    """`example-upstream [--listen HOST:PORT]` on the `toolgate` subcommand parser."""
    p = sub.add_parser(
        "example-upstream",
        help="serve the example CRM/billing/HR APIs the shipped toolgate.yaml forwards to",
        description="Serve the example upstream APIs for a local session. The credentials "
                    "it checks come from " + ", ".join(s.env for s in CREDENTIAL_SOURCES.values())
                    + ": export the same values for the gateway.")
    p.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT",
                   help=f"address to serve on (default {DEFAULT_LISTEN}; port 0 picks one)")


def run(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """Serve until SIGINT or SIGTERM; 0 then, 1 with one `error:` line if it cannot start."""
    try:
        address = parse_address(args.listen)
        credentials = Credentials.from_env(environ)
    except (ValueError, CredentialsMissing) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        asyncio.run(_serve(make_app(credentials, log_to=sys.stdout), address))
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        print(f"error: cannot listen on {args.listen}: {reason}", file=sys.stderr)
        return 1
    return 0


async def _serve(app: web.Application, address: Address) -> None:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, address.host, address.port).start()
        host, port = runner.addresses[0][:2]
        url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
        names = ", ".join(s.env for s in CREDENTIAL_SOURCES.values())
        print(f"example upstream (stand-in for CRM, billing and HR APIs) on {url}\n"
              f"checking the credentials in {names}; Ctrl-C stops it", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()
