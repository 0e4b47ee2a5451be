"""The state store's tables, written once for both dialects.

Each migration is SQL both SQLite and PostgreSQL accept, with the few words they spell
differently as `{BLOB}`, `{REAL}` and `{NOW}`. A store applies the migrations it has not
applied yet, in order, each in one transaction (SQLite records the count in
`PRAGMA user_version`, PostgreSQL in the `toolgate_schema` table).
"""

from __future__ import annotations

from enum import StrEnum


class Dialect(StrEnum):
    SQLITE = "sqlite"
    POSTGRES = "postgresql"


_WORDS = {
    Dialect.SQLITE: {"BLOB": "BLOB", "REAL": "REAL",
                     "NOW": "CAST(strftime('%s', 'now') AS REAL)"},
    Dialect.POSTGRES: {"BLOB": "BYTEA", "REAL": "DOUBLE PRECISION",
                       "NOW": "extract(epoch from now())"},
}

_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: the approval queue.
    ("""CREATE TABLE approvals (
        id TEXT PRIMARY KEY,
        status TEXT NOT NULL,
        decision_id TEXT NOT NULL,
        tool TEXT NOT NULL,
        args {BLOB} NOT NULL,
        call_hash TEXT NOT NULL,
        principal {BLOB} NOT NULL,
        sub TEXT NOT NULL,
        tenant TEXT,
        reasons {BLOB} NOT NULL,
        approvals_required INTEGER NOT NULL,
        approver_roles {BLOB} NOT NULL,
        created_at {REAL} NOT NULL,
        expires_at {REAL} NOT NULL,
        updated_at {REAL} NOT NULL,
        call {BLOB} NOT NULL,
        body {BLOB} NOT NULL,
        call_digest TEXT NOT NULL,
        idempotency_key TEXT,
        resend_safe INTEGER NOT NULL,
        reason TEXT,
        result_status INTEGER,
        result_content_type TEXT,
        result_body {BLOB},
        attempts INTEGER NOT NULL DEFAULT 0,
        owner TEXT,
        error TEXT
    )""",
     "CREATE INDEX approvals_status ON approvals (status, expires_at)",
     """CREATE UNIQUE INDEX approvals_key ON approvals (COALESCE(tenant, ''), tool,
        idempotency_key) WHERE idempotency_key IS NOT NULL""",
     """CREATE TABLE approval_votes (
        approval_id TEXT NOT NULL REFERENCES approvals (id),
        approver_sub TEXT NOT NULL,
        approver {BLOB} NOT NULL,
        comment TEXT,
        created_at {REAL} NOT NULL,
        PRIMARY KEY (approval_id, approver_sub)
    )"""),
    # 2: idempotency keys, run budgets, kill switches, the replicas' heartbeats.
    ("""CREATE TABLE idempotency (
        tenant TEXT NOT NULL,
        tool TEXT NOT NULL,
        key TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        request_id TEXT NOT NULL,
        state TEXT NOT NULL,
        lease_until {REAL} NOT NULL,
        status INTEGER,
        content_type TEXT,
        body {BLOB},
        created_at {REAL} NOT NULL,
        updated_at {REAL} NOT NULL,
        PRIMARY KEY (tenant, tool, key)
    )""",
     "CREATE INDEX idempotency_age ON idempotency (updated_at)",
     """CREATE TABLE runs (
        tenant TEXT NOT NULL,
        run_id TEXT NOT NULL,
        usage TEXT NOT NULL,
        updated_at {REAL} NOT NULL,
        PRIMARY KEY (tenant, run_id)
    )""",
     """CREATE TABLE kill_switches (
        scope TEXT PRIMARY KEY,
        reason TEXT NOT NULL,
        actor TEXT NOT NULL,
        created_at {REAL} NOT NULL
    )""",
     "CREATE TABLE replicas (id TEXT PRIMARY KEY, seen_at {REAL} NOT NULL)"),
    # 3: a key belongs to one call. A held call claims its key in the same table a
    # forwarded call does (state 'held'), so no key can be both executed and held. Keys of
    # calls held by an earlier version keep the call hash they were bound to, marked
    # (`state.idempotency.LEGACY`), so their agents' retries still find them. Those calls
    # were stored with headers nobody was shown and without the gateway's own headers: they
    # are never sent again (fail closed): pending ones expire (the agent asks again),
    # approved ones fail unsent, and one left mid-send becomes outcome_unknown for a person
    # to check, since it would go out without the Idempotency-Key an upstream dedups on.
    ("ALTER TABLE idempotency ADD COLUMN approval_id TEXT",
     "DROP INDEX approvals_key",
     "CREATE INDEX approvals_key ON approvals (idempotency_key)",
     "CREATE INDEX idempotency_approval ON idempotency (approval_id)",
     """INSERT INTO idempotency (tenant, tool, key, fingerprint, request_id, state,
        lease_until, created_at, updated_at, approval_id)
        SELECT COALESCE(tenant, ''), tool, idempotency_key, 'call_hash:' || call_hash,
               decision_id, 'held', 0,
               created_at, updated_at, id
        FROM approvals WHERE idempotency_key IS NOT NULL
        ON CONFLICT DO NOTHING""",
     """UPDATE approvals SET status = 'expired', updated_at = {NOW},
        reason = 'held by an earlier gateway version, which did not show every header; ask again'
        WHERE status = 'pending'""",
     """UPDATE approvals SET status = 'failed', updated_at = {NOW}, error = 'not_sent',
        reason = 'not sent: held by an earlier gateway version, which did not show every header'
        WHERE status = 'approved'""",
     """UPDATE approvals SET status = 'outcome_unknown', updated_at = {NOW},
        reason = 'the gateway was upgraded while this call was being sent; it is not sent again: '
                 || 'check the upstream and resolve it by hand'
        WHERE status = 'executing'"""),
    # 4: runs are forgotten after a retention, like keys (run ids are agent-chosen, so the
    # table would otherwise grow without bound).
    ("CREATE INDEX runs_age ON runs (updated_at)",),
    # 5: a held call names its run in a column, so retention never forgets a run while one
    # of its calls waits for a person (it would run against a fresh budget). Calls held
    # before this keep it only in their `call` document: their runs are forgotten as before.
    ("ALTER TABLE approvals ADD COLUMN run_id TEXT",
     "CREATE INDEX approvals_run ON approvals (run_id)"),
    # 6: `not_sent` — an approved call the gateway did not send — is its own final state;
    # `failed` keeps "sent, and no answer came". Earlier versions ended both `failed`; the
    # ones that were not sent said so in their reason (every such reason starts "not sent",
    # but for the integrity check's). `error` becomes the code the agent is answered with.
    # SECURITY: only a call claimed at most once (`attempts`: each claim, the first and
    # every takeover, counts one): those versions also wrote "not sent" when a takeover's
    # resend was stopped (a kill switch, the budget, an unreachable upstream), though the
    # instance that stopped may have sent it the first time. `not_sent` tells its agent
    # `sent: false`, so those stay `failed` ("it may have run"), as does a call handed
    # back and claimed again, which the rows cannot tell from a takeover: fail closed.
    ("""UPDATE approvals SET status = 'not_sent' WHERE status = 'failed' AND attempts <= 1
        AND (reason LIKE 'not sent%' OR reason LIKE '%integrity check; not sent')""",
     """UPDATE approvals SET error = 'tool_not_allowed'
        WHERE status = 'not_sent' AND error IS NULL AND reason LIKE 'not sent: the tool%'""",
     """UPDATE approvals SET error = 'internal_error'
        WHERE status = 'not_sent' AND (error IS NULL OR error = 'not_sent')"""),
)


def migrations(dialect: Dialect) -> tuple[tuple[str, ...], ...]:
    """Every migration's statements, in this dialect."""
    words = _WORDS[dialect]
    return tuple(tuple(sql.format(**words) for sql in step) for step in _MIGRATIONS)
