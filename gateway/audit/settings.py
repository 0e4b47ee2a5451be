"""The `audit:` section of the config (DESIGN §7): sinks, durability, rotation, retention,
the chain's key and how redacted values are written.

`AUDIT_SCHEMA` is the section's JSON Schema (part of `gateway.config_schema`); `audit_settings`
builds the typed `AuditSettings` from a checked document; `load_keys` reads the two keys when
the gateway (or `toolgate audit verify`) starts, never at config load.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

DEFAULT_FILE = "audit/toolgate.jsonl"
MIN_KEY_BYTES = 32   # an HMAC key shorter than its hash's block of entropy is guessable


class Fsync(StrEnum):
    ALWAYS = "always"      # fdatasync before the action: nothing is lost, even on power loss
    INTERVAL = "interval"  # fdatasync every `fsync_interval_ms`: at most that is lost
    NEVER = "never"        # the kernel's writeback decides (about 30 s on Linux)


class Redaction(StrEnum):
    MASK = "mask"   # every redacted value is "[REDACTED]"
    HASH = "hash"   # "hmac:<32 hex>" of the value under `redaction_key_*`: same value, same token


@dataclass(frozen=True)
class AuditSettings:
    file: Path | None = None
    stdout: bool = False
    fsync: Fsync = Fsync.INTERVAL
    fsync_interval_s: float = 1.0
    rotate_bytes: int | None = 100 * 1024 * 1024
    rotate_s: float | None = 86_400.0
    retain_s: float | None = None          # keep every rotated file unless set
    hmac_key_file: Path | None = None
    hmac_key_env: str | None = None
    redaction: Redaction = Redaction.MASK
    redaction_key_file: Path | None = None
    redaction_key_env: str | None = None


_STR = {"type": "string", "minLength": 1}
_POS_NUM = {"type": "number", "exclusiveMinimum": 0}

AUDIT_SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "file": {"type": ["string", "null"], "minLength": 1},
        "stdout": {"type": "boolean"},
        "fsync": {"enum": [str(f) for f in Fsync]},
        "fsync_interval_ms": {"type": "integer", "minimum": 1, "maximum": 60_000},
        "rotate_bytes": {"type": ["integer", "null"], "minimum": 4096},
        "rotate_hours": {"oneOf": [_POS_NUM, {"type": "null"}]},
        "retain_days": {"oneOf": [_POS_NUM, {"type": "null"}]},
        "hmac_key_file": _STR,
        "hmac_key_env": _STR,
        "redaction": {"enum": [str(r) for r in Redaction]},
        "redaction_key_file": _STR,
        "redaction_key_env": _STR,
    },
    "not": {"anyOf": [{"required": ["hmac_key_file", "hmac_key_env"]},
                      {"required": ["redaction_key_file", "redaction_key_env"]}]},
}


def problems(audit: Mapping[str, Any]) -> list[tuple[tuple[str, ...], str]]:
    """What the schema cannot say: each as (key path, message)."""
    found: list[tuple[tuple[str, ...], str]] = []
    if audit.get("file", DEFAULT_FILE) is None and not audit.get("stdout", False):
        # SECURITY: a gateway that audits nothing must not start.
        found.append((("audit",), "audit: no sink; set audit.file, audit.stdout, or both"))
    if audit.get("redaction") == Redaction.HASH and not (
            "redaction_key_file" in audit or "redaction_key_env" in audit):
        # An unkeyed hash of an e-mail address or a card number is reversed by a dictionary.
        found.append((("audit", "redaction"), "audit.redaction: 'hash' needs a key: set "
                      "audit.redaction_key_file or audit.redaction_key_env"))
    return found


def audit_settings(audit: Mapping[str, Any], rel: Callable[[str], Path]) -> AuditSettings:
    file = audit.get("file", DEFAULT_FILE)
    rotate_hours = audit.get("rotate_hours", 24)
    retain_days = audit.get("retain_days")
    return AuditSettings(
        file=rel(file) if file else None,
        stdout=audit.get("stdout", False),
        fsync=Fsync(audit.get("fsync", Fsync.INTERVAL)),
        fsync_interval_s=audit.get("fsync_interval_ms", 1000) / 1000,
        rotate_bytes=audit.get("rotate_bytes", 100 * 1024 * 1024),
        rotate_s=None if rotate_hours is None else rotate_hours * 3600.0,
        retain_s=None if retain_days is None else retain_days * 86_400.0,
        hmac_key_file=rel(audit["hmac_key_file"]) if "hmac_key_file" in audit else None,
        hmac_key_env=audit.get("hmac_key_env"),
        redaction=Redaction(audit.get("redaction", Redaction.MASK)),
        redaction_key_file=(rel(audit["redaction_key_file"])
                            if "redaction_key_file" in audit else None),
        redaction_key_env=audit.get("redaction_key_env"),
    )


class AuditKeyError(ValueError):
    """A configured key that cannot be used (missing, unreadable, too short)."""


def _key(file: Path | None, env: str | None, environ: Mapping[str, str],
         what: str) -> bytes | None:
    if file is not None:
        try:
            data = file.read_bytes().strip()
        except OSError as exc:
            raise AuditKeyError(f"{what}: cannot read {file}: {exc.strerror}") from None
        where = str(file)
    elif env is not None:
        if env not in environ:
            raise AuditKeyError(f"{what}: environment variable {env} is not set")
        data = environ[env].strip().encode()
        where = f"environment variable {env}"
    else:
        return None
    if len(data) < MIN_KEY_BYTES:
        raise AuditKeyError(f"{what}: {where} holds {len(data)} bytes; at least "
                        f"{MIN_KEY_BYTES} are needed")
    return data


def chain_key(settings: AuditSettings, environ: Mapping[str, str]) -> bytes | None:
    """The chain's HMAC key, or None for plain SHA-256. Raises `AuditKeyError`."""
    return _key(settings.hmac_key_file, settings.hmac_key_env, environ, "audit.hmac_key")


def redaction_key(settings: AuditSettings, environ: Mapping[str, str]) -> bytes | None:
    """The key of `redaction: hash`, or None for the mask. Raises `AuditKeyError`."""
    if settings.redaction is not Redaction.HASH:
        return None
    return _key(settings.redaction_key_file, settings.redaction_key_env, environ,
                "audit.redaction_key")
