"""What a start-up failure says: one line, what failed and how to fix it, never a traceback.

`toolgate serve` prints `error: <line>` on stderr and exits 1 for anything that stops the
gateway before it serves (`gateway.serve`; under `--workers N`, the supervisor's checks in
`gateway.workers.preflight` and a worker's own start, reported once by the supervisor).
Config, key, credential and tracing problems already have their own one-line errors
(`LoadErrors`, `KeyConfigError`, `CredentialError`); this module describes the rest: a
port that cannot be bound, a state store that cannot be opened, an audit log that cannot be
written, and, as a last resort, any other exception by its type.

SECURITY: a line never holds a DSN's password — a PostgreSQL failure names the host, port,
database and user only, and a DSN the driver cannot parse is said to be so, never quoted —
and never the message of an exception it does not know: any exception's message can quote a
secret (asyncpg's DSN errors quote the password). Of those it says the type and where it
was raised; only the gateway's own messages and the OS's error text are shown.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import socket
import sqlite3
import traceback
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

from gateway.audit.log import AuditStartError
from gateway.config import Address, Settings
from gateway.core.errors import GatewayError, LoadError, LoadErrors, StoreUnavailable
from gateway.keys import KeyConfigError
from gateway.upstreams.client import CredentialError

_CREDENTIALS = re.compile(r"(://[^/@\s:]*:)[^@\s/]*@")
MAX_LINE = 500


class StartupError(Exception):
    """The gateway cannot start. `str()` is the one line to print after `error: `."""


# Start-up failures that are one line (each) already: `toolgate serve` prints them as they
# are, as `toolgate check` does.
ONE_LINE = (StartupError, LoadErrors, LoadError, KeyConfigError, CredentialError)


@contextlib.contextmanager
def starting(settings: Settings) -> Iterator[None]:
    """Around what the gateway does to start: any other exception becomes its
    `StartupError` line (`describe`)."""
    try:
        yield
    except ONE_LINE:
        raise
    except Exception as exc:  # noqa: BLE001 (whatever stops the start: one line, no traceback)
        raise describe(settings, exc) from None


def _uid() -> str:
    return str(os.getuid()) if hasattr(os, "getuid") else "this user"


def bind_error(key: str, address: Address, exc: OSError) -> StartupError:
    """A port that cannot be bound (`key` is `listen` or `admin_listen`)."""
    where = f"{key}: {address}"
    if exc.errno == errno.EADDRINUSE:
        return StartupError(
            f"{where}: the port is already in use by another process: stop that process "
            f"(`ss -ltnp 'sport = :{address.port}'` names it) or set `{key}` to a free port")
    if exc.errno == errno.EADDRNOTAVAIL:
        return StartupError(f"{where}: no network interface of this host has the address "
                            f"{address.host}: use 127.0.0.1, 0.0.0.0 or an address of this "
                            "host")
    if exc.errno == errno.EACCES and address.port < 1024:
        return StartupError(f"{where}: permission denied: a port below 1024 needs "
                            "privileges; use a port from 1024 up")
    if isinstance(exc, socket.gaierror):
        return StartupError(f"{where}: the host name {address.host} does not resolve")
    return StartupError(f"{where}: cannot listen: {exc.strerror or type(exc).__name__}")


def store_error(settings: Settings, exc: BaseException) -> StartupError:
    """A state store that cannot be opened: the SQLite file, or the PostgreSQL server."""
    path = settings.sqlite_path
    if path is not None:
        reason = _dir_problem(path.parent)
        if reason is None:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else (
                exc.message if isinstance(exc, GatewayError) else type(exc).__name__)
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, sqlite3.Error):
                reason += f": {cause}"   # SQLite's own text names no value, only the problem
        return StartupError(
            f"store: cannot open the SQLite file {path}: {reason}: its directory must be one "
            f"this user (uid {_uid()}) can create and write; or set `store` to another path "
            "(sqlite:////absolute/path.db)")
    return _postgres_error(settings.store, exc)


def _postgres_error(dsn: str, exc: BaseException) -> StartupError:
    import asyncpg  # noqa: PLC0415 (only for a PostgreSQL store)

    from gateway.store.postgres import DSN_UNPARSABLE  # noqa: PLC0415 (asyncpg on demand)

    parts = urlsplit(dsn)
    try:
        host, port = parts.hostname or "localhost", parts.port or 5432
    except ValueError:
        host, port = "?", 5432
    user = unquote(parts.username or "") or "(the OS user)"
    database = unquote(parts.path.lstrip("/")) or user
    server = f"PostgreSQL at {host}:{port}"
    cause = exc.__cause__ if isinstance(exc, StoreUnavailable) else exc
    if isinstance(cause, (ValueError, asyncpg.ClientConfigurationError)):
        # SECURITY: its message quotes the DSN, password included (`gateway.store.postgres`).
        line = DSN_UNPARSABLE
    elif isinstance(cause, asyncpg.InvalidCatalogNameError):
        line = (f'database "{database}" does not exist on {server}: create it '
                f"(`createdb -h {host} -p {port} -U {user} {database}`) or name an existing "
                "one in `store`")
    elif isinstance(cause, (asyncpg.InvalidPasswordError,
                            asyncpg.InvalidAuthorizationSpecificationError)):
        line = (f'{server} refused the user "{user}" ({type(cause).__name__}): check the '
                "user and password in `store`, and the server's pg_hba.conf")
    elif isinstance(cause, ConnectionRefusedError):
        line = (f"cannot connect to {server}: connection refused: is the server running and "
                "listening there? Check the host and port in `store`")
    elif isinstance(cause, socket.gaierror):
        line = f"cannot connect to {server}: the host name {host} does not resolve"
    elif isinstance(cause, TimeoutError):
        line = (f"cannot connect to {server}: no answer in time: check the host, port and "
                "any firewall between them")
    elif isinstance(cause, asyncpg.PostgresError):
        line = (f"{server} refused to open the state store: {type(cause).__name__} "
                f"(SQLSTATE {cause.sqlstate})")
    elif isinstance(cause, OSError):
        line = f"cannot connect to {server}: {cause.strerror or type(cause).__name__}"
    else:
        line = exc.message if isinstance(exc, GatewayError) else type(exc).__name__
    return StartupError(f"store: {line}")


def audit_error(settings: Settings, exc: AuditStartError) -> StartupError:
    """The audit log cannot be opened: its message, with what to do when the file's
    directory cannot be created or written."""
    file = settings.audit.file
    problem = None if file is None else _dir_problem(file.parent)
    if file is None or problem is None:
        return StartupError(str(exc))
    return StartupError(f"audit: cannot write {file}: {problem}: audit.file must be in a "
                        f"directory this user (uid {_uid()}) can create and write")


def _dir_problem(directory: Path) -> str | None:
    """Why files cannot be made in `directory` (it, or what it would be created in, is a
    file, or is not writable), or None when nothing there explains a failure."""
    existing = directory
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    return None


def _from_store(settings: Settings, exc: BaseException) -> bool:
    """An OS or SQLite error raised opening the SQLite file (or making its directory)."""
    path = settings.sqlite_path
    if path is None:
        return False
    if isinstance(exc, sqlite3.Error):
        return True
    filename = getattr(exc, "filename", None)
    if not isinstance(exc, OSError) or filename is None:
        return False
    named = Path(os.fsdecode(filename))
    return named == path or named in path.parents


def describe(settings: Settings, exc: BaseException) -> StartupError:
    """The one line for an exception that stopped the gateway before it served."""
    if isinstance(exc, StartupError):
        return exc
    if isinstance(exc, StoreUnavailable) or _from_store(settings, exc):
        return store_error(settings, exc)
    if isinstance(exc, AuditStartError):
        return audit_error(settings, exc)
    return StartupError(f"the gateway could not start: {_what(exc)}")


def _what(exc: BaseException) -> str:
    """SECURITY: an exception as a line may show it — its type, and its text only where the
    text is known to hold no secret: the gateway's own message (`GatewayError`, URL
    credentials masked all the same) or the OS's error text and file name (`OSError`).
    Any other type's message may quote a password, a token or a key: in its place, where
    the exception was raised."""
    name = type(exc).__name__
    if isinstance(exc, GatewayError):
        text = exc.message
    elif isinstance(exc, OSError) and exc.strerror:
        named = exc.filename
        text = exc.strerror + (f": {os.fsdecode(named)}" if isinstance(named, (str, bytes))
                               else "")
    else:
        frames = traceback.extract_tb(exc.__traceback__)
        return f"{name} at {frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name}" \
            if frames else name
    text = " ".join(_CREDENTIALS.sub(r"\1***@", text).split())[:MAX_LINE]
    return f"{name}: {text}" if text else name
