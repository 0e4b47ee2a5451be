"""Approval notifications: a webhook with a Slack-compatible payload, off the request path.

`notify()` only puts the event on a bounded queue; one worker task delivers, retrying with
exponential backoff. A full queue, a refused delivery or an exhausted retry is logged and
counted (`toolgate_webhook_failures_total`), never raised: a notification can never block
or fail a call. The payload leaves the arguments out unless `include_args` is set, since
chat channels are read by more people than the approval queue; when it is set, they are
redacted as the audit log redacts them (the spec's `x-pii` fields and the decision's
`redact` pointers, kept with the held call; the mask or the same keyed-hash tokens).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import aiohttp
from prometheus_client import Counter

from gateway import tasks
from gateway.approvals.model import Approval
from gateway.audit.redact import Redactor
from gateway.config import WebhookSettings
from gateway.core.canonical import rfc3339

log = logging.getLogger("toolgate")
QUEUE_SIZE = 1000


def payload(event: str, approval: Approval, include_args: bool, redactor: Redactor,
            actor: Mapping[str, Any] | None = None) -> dict[str, Any]:
    principal = approval.principal
    who = f"{principal.get('sub')} ({principal.get('agent') or 'agent'}, tenant " \
          f"{principal.get('tenant') or '-'})"
    lines = [f"*{event.replace('_', ' ')}*: `{approval.tool}` requested by {who}",
             *(f"• {r}" for r in approval.reasons)]
    if event == "pending":
        lines.append(f"Approve with `toolgate approvals approve {approval.id}` before "
                     f"{rfc3339(approval.expires_at)}")
    if actor is not None:
        lines.append(f"by {actor.get('sub')}")
    if approval.reason:
        lines.append(f"reason: {approval.reason}")
    details: dict[str, Any] = {
        "event": event, "approval_id": approval.id, "decision_id": approval.decision_id,
        "status": str(approval.status), "tool": approval.tool,
        "principal": dict(principal), "reasons": list(approval.reasons),
        "expires_at": rfc3339(approval.expires_at),
        "actor": dict(actor) if actor is not None else None,
    }
    if include_args:
        # SECURITY: a chat channel is not the approval queue: never the values it hides.
        details["args"] = redactor.redact(dict(approval.args), approval.redact)
    return {"text": "\n".join(lines), "toolgate": details}


class Notifier:
    """Create with the app's runtime; `start()` the worker, `close()` on shutdown."""

    def __init__(self, settings: WebhookSettings | None, failures: Counter,
                 redactor: Redactor) -> None:
        self._settings = settings
        self._failures = failures
        self._redactor = redactor
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_SIZE)
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    def notify(self, event: str, approval: Approval,
               actor: Mapping[str, Any] | None = None) -> None:
        if self._settings is None:
            return
        if self._queue.full():
            self._failures.labels("queue_full").inc()
            log.error("notification for %s dropped: queue full", approval.id)
            return
        self._queue.put_nowait(payload(event, approval, self._settings.include_args,
                                       self._redactor, actor))

    async def start(self) -> None:
        if self._settings is not None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._settings.timeout_ms / 1000))
            self._task = asyncio.create_task(self._run(), name="webhook")

    async def close(self) -> None:
        await tasks.stop(self._task)
        if self._session is not None:
            await self._session.close()

    async def _run(self) -> None:
        while True:
            body = await self._queue.get()
            await self._deliver(body)

    async def _deliver(self, body: dict[str, Any]) -> None:
        settings, session = self._settings, self._session
        assert settings is not None and session is not None
        delay = settings.backoff_ms / 1000
        for attempt in range(1, settings.max_attempts + 1):
            try:
                async with session.post(settings.url, json=body) as resp:
                    if resp.status < 300:
                        return
                    problem = f"HTTP {resp.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                problem = type(exc).__name__
            log.warning("webhook delivery %d/%d for %s failed: %s", attempt,
                        settings.max_attempts, body["toolgate"]["approval_id"], problem)
            if attempt < settings.max_attempts:
                await asyncio.sleep(delay)
                delay *= 2
        self._failures.labels("gave_up").inc()
        log.error("webhook for %s given up after %d attempts",
                  body["toolgate"]["approval_id"], settings.max_attempts)
