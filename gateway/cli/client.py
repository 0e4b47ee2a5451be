"""The admin API as the CLI calls it: `toolgate approvals`, `kill` and `revive` are thin
clients of it (no direct store access, so the same rules and audit records apply as for any
other approver).

The token comes from `--token` or `$TOOLGATE_APPROVER_TOKEN` (preferred: a command line is
visible to other users in `ps`); the API from `--admin-url` or `$TOOLGATE_ADMIN_URL`
(default http://127.0.0.1:8081). Both variables are the CLI's alone: the gateway ignores
them.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

DEFAULT_ADMIN_URL = "http://127.0.0.1:8081"
TIMEOUT_S = 30


class ApiError(Exception):
    """The admin API answered with an error: `status` and the JSON `body`."""

    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body
        error = body.get("error", {}) if isinstance(body, dict) else {}
        self.code = str(error.get("code", status))
        super().__init__(f"{self.code}: {error.get('message', body)}")

    @property
    def refused(self) -> bool:
        """A 4xx, or a 503 `over_capacity` (the gateway is draining or full and turned the
        request away before reading it): the API refused the request, and changed nothing.
        (Another 5xx may come after a change: whether it happened is not known.)"""
        return 400 <= self.status < 500 or (self.status == 503 and self.code == "over_capacity")


@dataclass(frozen=True)
class Client:
    base: str
    token: str

    def call(self, method: str, path: str, payload: Mapping[str, Any] | None = None) -> Any:
        """The JSON answer; raises `ApiError` for an error status, `OSError` when the API
        cannot be reached or does not answer in `TIMEOUT_S`."""
        data = None if payload is None else json.dumps(payload).encode()
        if not self.base.startswith(("http://", "https://")):
            raise OSError(f"{self.base!r} is not an http(s) URL")
        req = urllib.request.Request(  # noqa: S310 (scheme checked above)
            self.base.rstrip("/") + path, data=data, method=method,
            headers={"Authorization": f"Bearer {self.token}",
                     "Content-Type": "application/json", "Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:  # noqa: S310
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode(errors="replace")
            raise ApiError(exc.code, body) from None
        except ValueError as exc:   # a 2xx that is not JSON: not the admin API
            raise OSError(f"the answer is not JSON ({exc})") from None


def client(args: argparse.Namespace, environ: Mapping[str, str]) -> Client | None:
    """The admin API and the token, from the options or the environment; None (said on
    stderr) when there is no token."""
    token = args.token or environ.get("TOOLGATE_APPROVER_TOKEN")
    if not token:
        print("error: a token with the approver scope is needed ($TOOLGATE_APPROVER_TOKEN, "
              "or --token)", file=sys.stderr)
        return None
    return Client(args.admin_url or environ.get("TOOLGATE_ADMIN_URL") or DEFAULT_ADMIN_URL,
                  token)


def unreachable(api: Client, exc: OSError) -> None:
    print(f"error: cannot reach the admin API at {api.base}: {exc}", file=sys.stderr)


def refused(exc: ApiError, as_json: bool) -> None:
    """Say what the API refused (its JSON error on stdout too, with `--json`)."""
    if as_json:
        print(json.dumps(exc.body, indent=2))
    print(f"error: {exc}", file=sys.stderr)
