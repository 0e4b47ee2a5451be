"""The runtime: everything long-lived a gateway process uses, built once and closed once.

`open_runtime` is the composition root: it builds the token verifier and its key source
(for `auth.jwks_url`, with its background refresh), the store, the upstream pools, the audit
log and its redactor, the kill switches, the approval queue (service, executor, sweeper,
notifications) and the background tasks around a loaded bundle, and closes them in reverse
order. No module keeps mutable state of its own: all of it hangs off the `Runtime`.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from gateway.admin.refusals import RefusalLedger
from gateway.approvals.executor import Executor
from gateway.approvals.notify import Notifier
from gateway.approvals.service import ApprovalService
from gateway.approvals.sweeper import Sweeper
from gateway.audit.log import AuditLog, AuditStartError
from gateway.audit.redact import Redactor
from gateway.audit.settings import AuditKeyError
from gateway.auth import TokenVerifier
from gateway.bundle import Bundle, BundleRef
from gateway.bundle.reload import Reloader
from gateway.config import Settings
from gateway.core.clock import Clock
from gateway.jwks import RemoteKeys
from gateway.keys import KeySource, StaticKeys, load_keys, source_name
from gateway.metrics import Metrics
from gateway.state.killswitch import KillSwitches
from gateway.state.retention import Retention
from gateway.store import StateStore, open_store
from gateway.tasks import Background
from gateway.tracing import Tracing
from gateway.upstreams.client import Upstreams

log = logging.getLogger("toolgate")


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    bundles: BundleRef
    verifier: TokenVerifier
    store: StateStore
    upstreams: Upstreams
    audit: AuditLog
    metrics: Metrics
    kills: KillSwitches
    approvals: ApprovalService
    background: Background
    clock: Clock
    refusals: RefusalLedger
    redactor: Redactor     # how every copy of the arguments that leaves the store is redacted
    tracing: Tracing       # OpenTelemetry export of calls; off unless tracing.otlp_endpoint
    reloader: Reloader     # builds, checks, records and swaps in a new bundle
    sweeper: Sweeper       # told when the process starts draining (`gateway.serve`)


def instance_id() -> str:
    """This process among the gateway's replicas (the owner of the calls it sends)."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


@asynccontextmanager
async def open_runtime(settings: Settings, environ: Mapping[str, str], bundle: Bundle,
                       clock: Clock) -> AsyncIterator[Runtime]:
    async with AsyncExitStack() as stack:
        tracing = Tracing.open(settings.tracing)
        stack.push_async_callback(tracing.close)  # opened first, closed last: the last spans
        bundles = BundleRef(bundle)
        stack.push_async_callback(bundles.close)
        metrics = Metrics()
        if settings.auth.jwks_url is None:
            # Read now: a key that cannot be used stops the start.
            keys: KeySource = StaticKeys(load_keys(settings.auth, environ),
                                         source_name(settings.auth))
        else:
            # Fetched now and kept current in the background; a failed first fetch does not
            # stop the start: calls are refused and /readyz is unready until one succeeds.
            remote = RemoteKeys(settings.auth, clock, registry=metrics.registry)
            stack.push_async_callback(remote.close)
            await remote.start()
            keys = remote
        verifier = TokenVerifier(settings.auth, keys)
        upstreams = Upstreams(settings.upstreams, environ, settings.max_response_bytes)
        try:
            redactor = Redactor.from_settings(settings.audit, environ)
        except AuditKeyError as exc:
            raise AuditStartError(str(exc)) from None
        audit = AuditLog(settings.audit, environ)
        stack.callback(audit.close)
        store = await open_store(settings)
        stack.push_async_callback(store.close)
        await upstreams.start()
        stack.push_async_callback(upstreams.close)
        notifier = Notifier(settings.webhook, metrics.webhook_failures, redactor)
        await notifier.start()
        stack.push_async_callback(notifier.close)
        kills = KillSwitches(store.kill_list, settings.killswitch_poll_s)
        executor = Executor(store=store, upstreams=upstreams, audit=audit, bundles=bundles,
                            kills=kills, budgets=settings.budgets, notifier=notifier,
                            instance=instance_id(), clock=clock,
                            outcomes=metrics.approved_calls)
        stack.push_async_callback(executor.close)
        approvals = ApprovalService(store=store, audit=audit, executor=executor,
                                    notifier=notifier, wait_time=metrics.approval_wait,
                                    wait_s=settings.approval_wait_s, clock=clock)
        if settings.fail_open:
            log.warning("fail_open is set: calls are ALLOWED when the policy engine is "
                        "unavailable")
        await kills.start()
        stack.push_async_callback(kills.close)
        background = Background()
        stack.push_async_callback(background.close)
        sweeper = Sweeper(store=store, service=approvals, executor=executor,
                          interval_s=settings.approval_sweep_interval_s,
                          takeover_after_s=settings.approval_takeover_after_s, clock=clock)
        await sweeper.start()
        stack.push_async_callback(sweeper.close)
        retention = Retention(store, settings.idempotency_retention_s,
                              settings.run_retention_s, clock)
        await retention.start()
        stack.push_async_callback(retention.close)
        refusals = RefusalLedger(audit, clock)
        await refusals.start()
        stack.push_async_callback(refusals.close)
        yield Runtime(settings, bundles, verifier, store, upstreams, audit, metrics, kills,
                      approvals, background, clock, refusals, redactor, tracing,
                      Reloader(settings, bundles, audit, clock), sweeper)
