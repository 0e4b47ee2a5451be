"""`gateway.startup`: each start-up failure as one line saying what failed and how to fix
it — and never a DSN's password. The failures themselves, raised by the real store, port
and audit log of a `toolgate serve`, are in tests/e2e/test_startup_errors.py."""

from __future__ import annotations

import errno
import os
import re
import socket
import subprocess
from pathlib import Path

import asyncpg
import pytest

from gateway.audit.log import AuditStartError
from gateway.config import Address
from gateway.core.errors import BundleInvalid, LoadErrors, StoreUnavailable
from gateway.devtokens import DevKey
from gateway.startup import StartupError, bind_error, describe, starting
from gateway.store.postgres import PostgresStore
from tests.support import config

ADDRESS = Address("127.0.0.1", 8080)


@pytest.mark.parametrize(("code", "says"), [
    (errno.EADDRINUSE, "the port is already in use by another process"),
    (errno.EADDRNOTAVAIL, "no network interface of this host has the address 127.0.0.1"),
    (errno.EACCES, "cannot listen: Permission denied"),
    (errno.EINVAL, "cannot listen: Invalid argument"),
])
def test_a_port_that_cannot_be_bound(code: int, says: str) -> None:
    line = str(bind_error("listen", ADDRESS, OSError(code, os.strerror(code))))
    assert line.startswith(f"listen: 127.0.0.1:8080: {says}")
    low = str(bind_error("admin_listen", Address("0.0.0.0", 81),  # noqa: S104
                         OSError(errno.EACCES, "Permission denied")))
    assert low == ("admin_listen: 0.0.0.0:81: permission denied: a port below 1024 needs "
                   "privileges; use a port from 1024 up")


def _unavailable(cause: BaseException) -> StoreUnavailable:
    exc = StoreUnavailable(f"cannot open the state store ({type(cause).__name__})")
    exc.__cause__ = cause
    return exc


@pytest.mark.parametrize(("cause", "says"), [
    (asyncpg.InvalidCatalogNameError("no such database"),
     'database "orders" does not exist on PostgreSQL at db.internal:6543: create it '
     "(`createdb -h db.internal -p 6543 -U toolgate orders`)"),
    (asyncpg.InvalidPasswordError("password authentication failed"),
     'PostgreSQL at db.internal:6543 refused the user "toolgate"'),
    (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"),
     "cannot connect to PostgreSQL at db.internal:6543: connection refused"),
    (socket.gaierror(-2, "Name or service not known"),
     "the host name db.internal does not resolve"),
    (TimeoutError(), "no answer in time"),
])
def test_a_postgresql_store_names_server_database_and_user_never_the_password(
        tmp_path: Path, dev_key: DevKey, cause: BaseException, says: str) -> None:
    settings = config(tmp_path, dev_key, "http://127.0.0.1:9",
                      store="postgresql://toolgate:hunter2-secret@db.internal:6543/orders")
    line = str(describe(settings, _unavailable(cause)))
    assert line.startswith("store: ") and says in line, line
    assert "hunter2" not in line


def test_a_sqlite_directory_that_is_a_file_or_not_writable(tmp_path: Path,
                                                           dev_key: DevKey) -> None:
    (tmp_path / "state").write_text("not a directory")
    settings = config(tmp_path, dev_key, "http://127.0.0.1:9")
    line = str(describe(settings, FileExistsError(errno.EEXIST, "File exists",
                                                  str(tmp_path / "state"))))
    assert line.startswith(f"store: cannot open the SQLite file {tmp_path}/state/toolgate.db: "
                           f"{tmp_path}/state is not a directory: its directory must be one "
                           "this user")
    (tmp_path / "state").unlink()
    (tmp_path / "state").mkdir()
    subprocess.run(["chattr", "+i", str(tmp_path / "state")], check=True)
    try:   # immutable: not writable, even for root
        line = str(describe(settings, PermissionError(errno.EPERM, "Operation not permitted",
                                                      str(tmp_path / "state/toolgate.db"))))
    finally:
        subprocess.run(["chattr", "-i", str(tmp_path / "state")], check=True)
    assert f"{tmp_path}/state is not writable" in line


def test_an_audit_directory_that_cannot_be_made(tmp_path: Path, dev_key: DevKey) -> None:
    (tmp_path / "audit").write_text("not a directory")
    settings = config(tmp_path, dev_key, "http://127.0.0.1:9")
    line = str(describe(settings, AuditStartError("audit: [Errno 17] File exists")))
    assert line == (f"audit: cannot write {tmp_path}/audit/toolgate.jsonl: {tmp_path}/audit "
                    "is not a directory: audit.file must be in a directory this user (uid "
                    f"{os.getuid()}) can create and write")


def test_anything_else_is_its_type_and_where_it_was_raised_never_its_message(
        tmp_path: Path, dev_key: DevKey) -> None:
    """Any exception's message may quote a secret: an unknown type is named with the
    frame that raised it; only the gateway's own messages (URL credentials masked all the
    same) and the OS's error text are shown."""
    settings = config(tmp_path, dev_key, "http://127.0.0.1:9")
    made = str(describe(settings, RuntimeError("token hunter2-secret")))
    assert made == "the gateway could not start: RuntimeError"

    def parse(dsn: str) -> None:
        raise ValueError(f"invalid literal for int() with base 10: {dsn!r}")

    try:
        parse("q8Zk")
    except ValueError as exc:
        raised = str(describe(settings, exc))
    assert re.fullmatch(r"the gateway could not start: ValueError at .*/tests/test_startup\.py"
                        r":\d+ in parse", raised), raised
    own = str(describe(settings, BundleInvalid(
        "cannot reach https://svc:s3cr3t@idp.example.com/keys\n  second line")))
    assert own == ("the gateway could not start: BundleInvalid: cannot reach "
                   "https://svc:***@idp.example.com/keys second line")
    denied = str(describe(settings, PermissionError(errno.EACCES, "Permission denied",
                                                    "/etc/toolgate/key.pem")))
    assert denied == ("the gateway could not start: PermissionError: Permission denied: "
                      "/etc/toolgate/key.pem")


def test_starting_passes_one_line_errors_through_and_describes_the_rest(
        tmp_path: Path, dev_key: DevKey) -> None:
    settings = config(tmp_path, dev_key, "http://127.0.0.1:9")
    with pytest.raises(LoadErrors), starting(settings):
        raise LoadErrors([])
    with pytest.raises(StartupError, match=r"^the gateway could not start: ValueError at "
                                           r"\S+test_startup\.py:\d+ in test_starting"), \
            starting(settings):
        raise ValueError("hunter2")


@pytest.mark.parametrize("password", ["q8Zk/3v+Lm==", "q8Zk?3v+Lm==", "q8Zk#3v+Lm=="])
async def test_a_dsn_that_cannot_be_parsed_is_said_so_never_quoted(
        tmp_path: Path, dev_key: DevKey, password: str) -> None:
    """asyncpg reads a piece of a password with an unencoded `/`, `?` or `#` as the port or
    a query parameter, and its error quotes it: from the real store's `open`, the line says
    the DSN cannot be parsed and how to fix it — and nothing the driver said."""
    dsn = f"postgresql://toolgate:{password}@db/tg"
    settings = config(tmp_path, dev_key, "http://127.0.0.1:9", store=dsn)
    with pytest.raises(StartupError) as caught, starting(settings):
        await PostgresStore.open(dsn)
    assert str(caught.value) == ("store: the PostgreSQL DSN cannot be parsed; "
                                 "percent-encode special characters in the password")
    for exc in (caught.value, caught.value.__cause__, caught.value.__context__):
        chained = exc
        while chained is not None:   # not even a chained exception keeps the text
            assert "q8Zk" not in str(chained) and "3v+Lm" not in str(chained)
            chained = chained.__cause__ or chained.__context__
    raw = str(describe(settings, ValueError("invalid literal for int() with base 10: "
                                            "'q8Zk'")))
    assert "q8Zk" not in raw, "a raw parse error is never quoted either"


def test_a_driver_parse_error_behind_the_store_error_is_never_quoted(
        tmp_path: Path, dev_key: DevKey) -> None:
    settings = config(tmp_path, dev_key, "http://127.0.0.1:9",
                      store="postgresql://toolgate:q8Zk/3v+Lm==@db/tg")
    for cause in (ValueError("invalid literal for int() with base 10: 'q8Zk'"),
                  asyncpg.ClientConfigurationError("bad query field: 'q8Zk'")):
        line = str(describe(settings, _unavailable(cause)))
        assert line == ("store: the PostgreSQL DSN cannot be parsed; percent-encode special "
                        "characters in the password")
