"""`toolgate audit verify|query|report`: the audit log read back from its files.

The files are the positional `FILE…` (a live file stands for its whole family of rotated
files, a directory for its `*.jsonl`: `gateway.audit.files.expand`), or else the config's
`audit.file` (`--config`, default `toolgate.yaml`, as for `toolgate serve`) with the chains
of its `--workers` beside it (`gateway.audit.files.worker_chains`). Exit codes:
0 done; 1 a broken chain (verify) or a line that is not a JSON record (query and report
skip it and name it on stderr as FILE:LINE); 2 a usage error (no files, a config or a key
that cannot be used).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.audit import chain
from gateway.audit.files import chains, expand, family, worker_chains
from gateway.audit.query import CALL_FIELDS, Filters, Window, query, when
from gateway.audit.report import PERIODS
from gateway.audit.settings import AuditKeyError, AuditSettings, chain_key
from gateway.cli.audit_report import print_report
from gateway.config import load as load_config
from gateway.core.errors import LoadError, LoadErrors

DEFAULT_CONFIG = Path("toolgate.yaml")
_WIDTHS = (27, 9, 36, 24, 20, 16)   # ts, kind, decision_id, tool, principal, action/event


class Usage(Exception):
    """Exit 2 with these lines on stderr."""

    def __init__(self, *lines: str) -> None:
        self.lines = lines


def add_parser(sub: Any) -> None:
    p = sub.add_parser("audit", help="verify, query and report on the audit log")
    asub = p.add_subparsers(dest="audit_command", required=True, metavar="COMMAND")

    verify = _command(asub, "verify", "check every link of the hash chain")
    key = verify.add_mutually_exclusive_group()
    key.add_argument("--hmac-key-file", type=Path, metavar="FILE",
                     help="the chain's HMAC key (default: the config's, when it is read)")
    key.add_argument("--hmac-key-env", metavar="NAME", help="... or an environment variable")
    verify.add_argument("--partial", action="store_true",
                        help="the files may start after the first record of the chain")
    verify.add_argument("--json", action="store_true")

    q = _command(asub, "query", "print the records that match, oldest first")
    window_options(q)
    for name, helptext in (("tool", "tool name"), ("principal", "the caller's sub"),
                           ("tenant", "the caller's tenant"),
                           ("action", "allow, require_approval or deny"),
                           ("code", "reason code, e.g. policy_denied"),
                           ("decision-id", "every record of one call"),
                           ("kind", "decision, outcome, approval, killswitch, audit, …")):
        q.add_argument(f"--{name}", action="append", default=[], metavar="VALUE",
                       help=f"{helptext} (repeat for any of several)")
    q.add_argument("--json", action="store_true", help="the records as JSON lines, as written")

    r = _command(asub, "report", "calls, validity, success, approvals, fallbacks, denials "
                                 "and spend per tool and period")
    r.add_argument("--period", choices=PERIODS, default="day", help="UTC buckets (default day)")
    window_options(r)
    r.add_argument("--tool", action="append", default=[], help="only this tool (repeatable)")
    form = r.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true")
    form.add_argument("--csv", action="store_true")


def _command(asub: Any, name: str, helptext: str) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = asub.add_parser(name, help=helptext)
    p.add_argument("files", nargs="*", type=Path, metavar="FILE",
                   help="audit files or directories (default: the config's audit.file)")
    p.add_argument("--config", "-c", type=Path, default=None,
                   help=f"gateway config (default {DEFAULT_CONFIG} when no FILE is given)")
    return p


def _time(text: str) -> datetime:
    try:
        return when(text, datetime.now(UTC))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def window_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--since", type=_time, metavar="TIME",
                   help="from this time on: RFC 3339, or a duration ago like 30m, 24h, 7d")
    p.add_argument("--until", type=_time, metavar="TIME", help="before this time")


def run(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    try:
        paths, audit = audit_inputs(args, environ)
        if args.audit_command == "verify":
            return _verify(paths, _key(args, audit, environ), args)
        bad = _BadLines()
        if args.audit_command == "query":
            _query(paths, args, bad)
        else:
            print_report(paths, args, bad)
        return 1 if bad.count else 0
    except Usage as usage:
        for line in usage.lines:
            print(f"error: {line}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader stopped (`| head`): not an error. Keep the exit's flush quiet.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:   # a file unreadable or gone: not a broken chain
        print(f"error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 2


def audit_inputs(args: argparse.Namespace,
            environ: Mapping[str, str]) -> tuple[list[Path], AuditSettings | None]:
    """The files to read, and the config's audit settings when a config was read."""
    audit = None
    if args.config is not None or not args.files:
        config = args.config or DEFAULT_CONFIG
        try:
            audit = load_config(config, environ).audit
        except LoadError as exc:
            raise Usage(str(exc)) from None
        except LoadErrors as exc:
            raise Usage(*(str(e) for e in exc.errors)) from None
    given = args.files
    if given:
        paths = expand(given)
    else:
        if audit is None or audit.file is None:
            raise Usage(f"{args.config or DEFAULT_CONFIG}: no audit.file to read; "
                         "name the files")
        given = [audit.file]
        # Every chain written from audit.file: the one process's, or each worker's of
        # `toolgate serve --workers N`, those of workers no longer started included.
        paths = [f for live in worker_chains(audit.file) for f in family(live)] or given
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise Usage(*(f"{p}: no such file" for p in missing))
    if not paths:
        raise Usage(f"no audit files in {', '.join(map(str, given))}")
    return paths, audit


def _key(args: argparse.Namespace, audit: AuditSettings | None,
         environ: Mapping[str, str]) -> bytes | None:
    if args.hmac_key_file is not None or args.hmac_key_env is not None:
        audit = AuditSettings(hmac_key_file=args.hmac_key_file, hmac_key_env=args.hmac_key_env)
    try:
        return None if audit is None else chain_key(audit, environ)
    except AuditKeyError as exc:
        raise Usage(str(exc)) from None


def _verify(paths: list[Path], key: bytes | None, args: argparse.Namespace) -> int:
    """Each chain the files hold (one per writing process: `files.chains`) on its own."""
    results = {live: verify_settled(live, files, key, args.partial)
               for live, files in chains(paths).items()}
    ok = all(r.ok for r in results.values())
    if args.json:
        print(json.dumps({"ok": ok, "chains": [{"chain": str(live), **dataclasses.asdict(r)}
                                              for live, r in results.items()]},
                         indent=2, default=str))
        return 0 if ok else 1
    for live, result in results.items():
        name = f"{live.name}: " if len(results) > 1 else ""
        if result.ok:
            seq = "-" if result.first_seq is None else f"{result.first_seq}..{result.last_seq}"
            print(f"{name}ok: {result.records} records in {len(result.files)} files, "
                  f"seq {seq}, head {result.head or '-'}")
        else:
            print(result.problem)
        for warning in result.warnings:
            print(f"warning: {warning}")
    return 0 if ok else 1


SETTLE_TRIES = 3


def verify_settled(live: Path, files: list[Path], key: bytes | None,
             partial: bool) -> chain.Verification:
    """A chain verified while its gateway may still be writing it: a rotation between
    listing the files and reading them, or a record being appended as the last line is
    read, is not tampering. On a failure a whole family is listed again and, if it changed
    or the failure is at the very end of the live file, verified again."""
    whole = live in files   # the live file stands for its family: list it again
    result = chain.verify(files, key, partial=partial)
    for _ in range(SETTLE_TRIES):
        if result.ok:
            return result
        again = family(live) if whole else files
        at_end = (result.problem is not None and result.problem.file == live
                  and "cut short" in result.problem.message)
        if again == files and not at_end:
            return result
        time.sleep(0.2)
        files = again
        result = chain.verify(files, key, partial=partial)
    return result


class _BadLines:
    """Lines that are not JSON records: named on stderr, counted for the exit code."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, path: Path, line: int) -> None:
        self.count += 1
        print(f"{path}:{line}: not a JSON record; skipped", file=sys.stderr)


def _query(paths: list[Path], args: argparse.Namespace, bad: _BadLines) -> None:
    filters = Filters(window=Window.of(args.since, args.until), kinds=frozenset(args.kind),
                      decision_ids=frozenset(args.decision_id),
                      call={name: frozenset(getattr(args, name)) for name in CALL_FIELDS})
    found = query(paths, filters, bad)
    if args.json:
        out = sys.stdout.buffer
        for raw, _record in found:
            out.write(raw if raw.endswith(b"\n") else raw + b"\n")
        out.flush()
        return
    print(_line(("TS", "KIND", "DECISION_ID", "TOOL", "PRINCIPAL", "ACTION/EVENT", "CODE")))
    for _raw, record in found:
        print(_line(_row(record)))


def _row(r: Mapping[str, Any]) -> tuple[str, ...]:
    kind = r.get("kind")
    what: Any
    code: Any
    principal = r.get("principal")
    sub = principal.get("sub") if isinstance(principal, dict) else None
    if kind == "decision":
        what = f"{r.get('action')}{' (shadow)' if r.get('shadow') else ''}"
        code = r.get("code")
    elif kind == "outcome":
        what, code = r.get("upstream_status") or r.get("status"), r.get("error")
    else:
        what, code = r.get("event"), r.get("code")
    return tuple(_cell(v) for v in (r.get("ts"), kind, r.get("decision_id"), r.get("tool"),
                                    sub, what, code))


def _cell(value: Any) -> str:
    text = "-" if value is None or value == "" else str(value)
    # SECURITY: a token's sub or a caller's text may hold terminal escapes or line breaks;
    # printed escaped, a row cannot pass for another or rewrite the screen.
    return text if text.isprintable() else json.dumps(text)[1:-1]


def _line(cells: tuple[str, ...]) -> str:
    return "  ".join(c.ljust(w) for c, w in zip(cells, _WIDTHS, strict=False)) + \
        "  " + cells[-1]
