"""Development keys and tokens: `toolgate keys init` and `toolgate token`.

For trying the gateway without an identity provider (the demo and the tests use the same
code). Production tokens come from your IdP; point `auth.jwks_file` at its key set.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

DEV_ISSUER = "https://idp.example.com"
DEV_AUDIENCE = "toolgate"


@dataclass(frozen=True)
class DevKey:
    kid: str
    private_pem: bytes
    jwks: Mapping[str, Any]

    @classmethod
    def generate(cls, kid: str | None = None) -> DevKey:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        kid = kid or f"dev-{uuid.uuid4().hex[:8]}"
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
        public.update({"kid": kid, "use": "sig", "alg": "RS256"})
        return cls(kid, pem, {"keys": [public]})

    @classmethod
    def load(cls, directory: Path) -> DevKey:
        jwks = json.loads((directory / "jwks.json").read_text(encoding="utf-8"))
        return cls(jwks["keys"][0]["kid"], (directory / "private.pem").read_bytes(), jwks)

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        private = directory / "private.pem"
        private.touch(mode=0o600, exist_ok=True)
        private.write_bytes(self.private_pem)
        (directory / "jwks.json").write_text(json.dumps(self.jwks, indent=2) + "\n",
                                             encoding="utf-8")

    def token(self, sub: str, *, scopes: Iterable[str] = (), tenant: str | None = None,
              agent: str | None = None, roles: Iterable[str] = (), ttl_s: int = 3600,
              issuer: str = DEV_ISSUER, audience: str = DEV_AUDIENCE,
              **claims: Any) -> str:
        now = int(time.time())
        payload: dict[str, Any] = {"iss": issuer, "aud": audience, "sub": sub, "iat": now,
                                   "nbf": now, "exp": now + ttl_s,
                                   "scope": " ".join(scopes), **claims}
        if tenant is not None:
            payload["tenant"] = tenant
        if agent is not None:
            payload["agent"] = agent
        roles = list(roles)
        if roles:
            payload["roles"] = roles
        return jwt.encode(payload, self.private_pem, algorithm="RS256",
                          headers={"kid": self.kid})
