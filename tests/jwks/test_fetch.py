"""One GET of the JWKS URL against a real server on loopback: a 200 is read; a redirect, any
other status, a body past the bound (declared, streamed or compressed), a server that never
answers and a refused connection are failed fetches, named without the body."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.config import AuthSettings
from gateway.devtokens import DEV_AUDIENCE, DEV_ISSUER, DevKey
from gateway.jwks import JwksFetchError, fetch_jwks, fetch_key_set
from gateway.jwks.fetch import MAX_JWKS_BYTES, new_session
from gateway.keys import KeyConfigError, load_keys
from tests.e2e.net import free_port
from tests.jwks.idp import idp_server, jwks

CANARY = b"jwks-canary-0b9c"


@pytest.fixture
async def odd_server() -> AsyncIterator[str]:
    """Endpoints that misbehave: `/big` (declared), `/stream` (chunked, no length),
    `/bomb` (small gzip, large once inflated), `/hang` (never answers), `/500`."""
    never = asyncio.Event()

    async def big(request: web.Request) -> web.StreamResponse:
        return web.Response(body=b" " * (MAX_JWKS_BYTES + 1))

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for _ in range(MAX_JWKS_BYTES // 65_536 + 2):
            await response.write(b" " * 65_536)
        await response.write_eof()
        return response

    async def bomb(request: web.Request) -> web.StreamResponse:
        return web.Response(body=gzip.compress(b" " * (8 * MAX_JWKS_BYTES)),
                            headers={"Content-Encoding": "gzip"})

    async def hang(request: web.Request) -> web.StreamResponse:
        await never.wait()
        raise AssertionError("unreachable")

    async def error(request: web.Request) -> web.StreamResponse:
        return web.Response(status=500, body=CANARY)

    app = web.Application()
    for path, handler in (("/big", big), ("/stream", stream), ("/bomb", bomb),
                          ("/hang", hang), ("/500", error)):
        app.router.add_get(path, handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        never.set()
        await server.close()


async def fetch(url: str, timeout_s: float = 5) -> bytes:
    async with new_session() as session:
        return await fetch_jwks(session, url, timeout_s)


async def test_a_200_is_read(dev_key: DevKey) -> None:
    async with idp_server(jwks(dev_key)) as idp:
        body = await fetch(idp.url)
    assert json.loads(body) == jwks(dev_key)
    assert idp.hits == 1


async def test_a_redirect_is_not_followed(dev_key: DevKey) -> None:
    async with idp_server(jwks(dev_key)) as idp:
        with pytest.raises(JwksFetchError, match="answered 302; redirects are not followed"):
            await fetch(idp.url.replace("/jwks", "/redirect"))
        assert idp.hits == 1   # /jwks, where it pointed, was never asked


@pytest.mark.parametrize(("path", "message"), [
    ("/500", "answered 500"),
    ("/big", f"larger than {MAX_JWKS_BYTES} bytes"),
    ("/stream", f"larger than {MAX_JWKS_BYTES} bytes"),
    ("/bomb", f"larger than {MAX_JWKS_BYTES} bytes"),
])
async def test_an_unusable_answer_is_a_failed_fetch(odd_server: str, path: str,
                                                    message: str) -> None:
    with pytest.raises(JwksFetchError, match=message) as info:
        await fetch(odd_server + path)
    assert CANARY.decode() not in str(info.value)


async def test_a_server_that_never_answers_times_out(odd_server: str) -> None:
    with pytest.raises(JwksFetchError, match=r"no answer within 0\.2 s"):
        await fetch(odd_server + "/hang", timeout_s=0.2)


async def test_a_refused_connection_is_a_failed_fetch() -> None:
    with pytest.raises(JwksFetchError, match="ClientConnectorError"):
        await fetch(f"http://127.0.0.1:{free_port()}/jwks")


def settings(url: str) -> AuthSettings:
    return AuthSettings(issuer=DEV_ISSUER, audience=DEV_AUDIENCE, algorithms=("RS256",),
                        jwks_url=url, jwks_timeout_s=2)


async def test_check_fetches_the_set_once(dev_key: DevKey) -> None:
    """`toolgate check` (through `load_keys`) fetches the URL, outside any event loop."""
    async with idp_server(jwks(dev_key)) as idp:
        keys = await asyncio.to_thread(load_keys, settings(idp.url), {})
    assert [k.kid for k in keys] == [dev_key.kid]


async def test_check_names_the_url_and_the_problem(dev_key: DevKey) -> None:
    async with idp_server(b'{"keys": []}') as idp:
        with pytest.raises(KeyConfigError) as info:
            await asyncio.to_thread(fetch_key_set, settings(idp.url + "?tenant=" + "x" * 8))
    message = str(info.value)
    assert message.startswith(f"auth.jwks_url {idp.url}: no key in it can verify tokens")
    assert "tenant" not in message   # the query is not shown


async def test_an_unreachable_url_is_a_config_error_for_check() -> None:
    port = free_port()
    with pytest.raises(KeyConfigError, match="ClientConnectorError"):
        await asyncio.to_thread(fetch_key_set, settings(f"http://127.0.0.1:{port}/jwks"))
