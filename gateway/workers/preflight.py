"""What the supervisor checks once, before any worker starts: what a gateway would
refuse at start, with the same one-line errors, and what only `--workers` needs."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Mapping

from gateway.audit.log import AuditStartError
from gateway.audit.settings import AuditKeyError, chain_key, redaction_key
from gateway.config import Settings
from gateway.core.errors import LoadError, LoadErrors
from gateway.startup import bind_error, starting


def preflight(settings: Settings, environ: Mapping[str, str], count: int) -> None:
    """What a gateway refuses at start, checked once by the supervisor so a bad config fails
    before any worker starts, with the error `toolgate serve` prints for it. Raises
    `LoadErrors`, `KeyConfigError`, `CredentialError`, `AuditStartError` or `StartupError`
    (`gateway.startup`: a port in use, a store that cannot be opened)."""
    from gateway import open_files  # noqa: PLC0415 (what serve imports, only when serving)
    from gateway.bundle import load_bundle  # noqa: PLC0415
    from gateway.keys import load_keys  # noqa: PLC0415
    from gateway.tracing import unavailable as tracing_unavailable  # noqa: PLC0415
    from gateway.upstreams.client import read_credential  # noqa: PLC0415

    where = str(settings.base_dir)
    if settings.audit.file is None:
        # SECURITY: N chains on one stream, with nothing to tell them apart, verify as none.
        raise LoadErrors([LoadError(where, None, "audit.file: --workers needs an audit file "
                                    "(each worker writes its own chain beside it); stdout "
                                    "alone would mix the chains")])
    if settings.listen.port == 0:
        raise LoadErrors([LoadError(where, None, "listen: --workers share one agent port; "
                                    "port 0 would give each its own")])
    problem = tracing_unavailable(settings.tracing)
    if problem is not None:
        raise LoadErrors([problem])
    bundle = load_bundle(settings)
    if bundle.policies is None:   # an OPA engine holds a client session
        asyncio.run(bundle.close())
    if settings.auth.jwks_url is None:
        load_keys(settings.auth, environ)
    # A JWKS URL is not fetched here: each worker fetches its own at start, and an IdP out
    # of reach stops no gateway (it starts unready and refuses calls until a fetch works).
    for upstream in settings.upstreams.values():
        read_credential(upstream, environ)
    try:
        chain_key(settings.audit, environ)
        redaction_key(settings.audit, environ)
    except AuditKeyError as exc:
        raise AuditStartError(str(exc)) from None
    open_files.fit_open_files(settings)
    _port_free(settings)
    with starting(settings):
        asyncio.run(_migrate(settings))


async def _migrate(settings: Settings) -> None:
    """Open the state store once, so its migrations (and a store that cannot be opened)
    are dealt with here, before the workers open it together."""
    from gateway.store import open_store  # noqa: PLC0415

    store = await open_store(settings)
    await store.close()


def _port_free(settings: Settings) -> None:
    """The agent port must be free: bound without SO_REUSEPORT, it is refused while anyone
    listens on it, another `--workers` gateway included (SO_REUSEPORT would let ours join
    its group and share its connections)."""
    address = settings.listen
    try:
        infos = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
        for family, kind, proto, _, sockaddr in infos:
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(sockaddr)
    except OSError as exc:
        raise bind_error("listen", address, exc) from None
