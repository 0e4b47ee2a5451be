"""Hot reload: a new bundle built from the same files, checked, recorded, swapped in.

`POST /v1/policy/reload` (approver scope) and SIGHUP both come here. The tool specs,
policies and data are read again and compiled by `load_bundle`, exactly as at start; a
bundle that does not load is refused and the old one keeps serving. Every reload —
accepted, unchanged or refused — is a `policy_reload` audit record naming the old and the
new revision, written before the swap: if it cannot be written, nothing changes. Calls in
flight finish on the bundle they pinned (`BundleRef.swap`). The config itself is not read
again (listeners, upstreams, keys and the store need a restart).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from gateway.audit import records
from gateway.bundle import BundleRef, load_bundle
from gateway.core.errors import BundleInvalid, LoadErrors
from gateway.policy.opa import OpaEngine

if TYPE_CHECKING:
    from gateway.audit.log import AuditLog
    from gateway.auth import Principal
    from gateway.config import Settings
    from gateway.core.clock import Clock

log = logging.getLogger("toolgate")
MAX_ERRORS = 50    # load errors kept in the record and the answer


class Reloader:
    def __init__(self, settings: Settings, bundles: BundleRef, audit: AuditLog,
                 clock: Clock) -> None:
        self._settings, self._bundles, self._audit, self._clock = (settings, bundles,
                                                                   audit, clock)
        self._lock = asyncio.Lock()   # one reload at a time

    async def reload(self, trigger: str, who: Principal | None = None) -> dict[str, Any]:
        """Reload; the answer for the caller. Raises `BundleInvalid` (the old bundle keeps
        serving) or `AuditUnavailable` (nothing changed)."""
        async with self._lock:
            old = self._bundles.current
            try:
                # On the event loop's thread: the embedded engine is bound to it. Compiling
                # blocks the loop for as long as it takes (tens of milliseconds).
                # An OPA server's policies are its own to reload; the engine stays.
                new = load_bundle(self._settings, self._clock,
                                  opa=old.engine if isinstance(old.engine, OpaEngine) else None)
            except LoadErrors as exc:
                errors = [str(e) for e in exc.errors][:MAX_ERRORS]
            else:
                errors = [str(e) for e in await new.probe(
                    self._settings.policy.query, self._settings.policy.opa_url)][:MAX_ERRORS]
            if errors:
                self._audit.write("policy_reload", records.policy_reload(
                    "refused", trigger=trigger, previous=old, errors=errors, who=who))
                log.error("reload refused (%s): %d problems; revision %s keeps serving",
                          trigger, len(errors), old.revision)
                raise BundleInvalid("the new bundle does not load; the old one keeps "
                                    "serving", errors=errors, policy_revision=old.revision)
            event = "unchanged" if new.same_as(old) else "accepted"
            try:
                self._audit.write("policy_reload", records.policy_reload(
                    event, trigger=trigger, previous=old, new=new, who=who))
            except Exception:
                if new.engine is not old.engine:   # an OPA engine is shared: it serves on
                    await new.close()
                raise
            if event == "unchanged":
                if new.engine is not old.engine:
                    await new.close()
            else:
                self._bundles.swap(new)
                log.info("reloaded (%s): revision %s replaces %s", trigger, new.revision,
                         old.revision)
            return {"status": "reloaded" if event == "accepted" else "unchanged",
                    "policy_revision": new.revision, "previous_revision": old.revision,
                    "revisions": {"specs": new.spec_revision,
                                  "policies": new.policy_revision}}
