"""The `toolgate` command: a thin layer over the library. `main(argv, environ) -> int`."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from gateway import __version__
from gateway.audit.log import AuditStartError
from gateway.audit.settings import AuditKeyError, chain_key, redaction_key
from gateway.cli import approvals as cli_approvals
from gateway.cli import audit as cli_audit
from gateway.cli import example as cli_example
from gateway.cli import kill as cli_kill
from gateway.cli import replay as cli_replay
from gateway.cli.options import (
    Parser,
    UsageError,
    config_option,
    global_options,
    merge_globals,
    redact,
    secrets_in,
)
from gateway.config import Settings
from gateway.config import load as load_config
from gateway.core.errors import LoadError, LoadErrors
from gateway.keys import KeyConfigError, load_keys
from gateway.tracing import unavailable as tracing_unavailable
from gateway.upstreams.client import CredentialError, read_credential
from gateway.workers import MAX_WORKERS, Worker, WorkersError, preflight, supervise, workers_count

if TYPE_CHECKING:
    from gateway.bundle import Bundle


def _parser() -> argparse.ArgumentParser:
    # SECURITY: `Parser` raises its usage errors for `main` to print redacted (no token).
    p = Parser(prog="toolgate", description="Tool gateway for AI agents. --config, "
                                            "--admin-url, --token and --json may also come "
                                            "after the command.")
    p.add_argument("--version", action="version", version=f"toolgate {__version__}")
    global_options(p)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the gateway")
    config_option(serve)
    serve.add_argument("--workers", "-w", default="1", metavar="N",
                       help=f"processes serving the agent port, 1 to {MAX_WORKERS} (default 1)")
    # Set by the supervisor of `--workers N` on each worker it starts (`gateway.workers`).
    serve.add_argument("--worker", help=argparse.SUPPRESS)
    serve.add_argument("--worker-parent", type=int, help=argparse.SUPPRESS)
    serve.add_argument("--worker-control-fd", type=int, help=argparse.SUPPRESS)

    check = sub.add_parser("check", help="validate config, tool specs and policies")
    config_option(check)
    check.add_argument("--format", choices=("text", "json"), default="text",
                       help="json: one document, for CI")
    check.add_argument("--offline", action="store_true",
                       help="skip what lives outside the repository: verification keys, "
                            "upstream credentials, audit keys (a policy repo's CI)")

    policy = sub.add_parser("policy", help="policy tools")
    psub = policy.add_subparsers(dest="policy_command", required=True, metavar="COMMAND")
    ptest = psub.add_parser("test", help="run every test_* rule, like `opa test`")
    ptest.add_argument("paths", nargs="*", type=Path,
                       help="policy files or directories (default: policies/)")
    ptest.add_argument("--verbose", "-v", action="store_true", help="list passing tests too")
    ptest.add_argument("--run", "-r", metavar="TEXT", help="only tests whose name contains TEXT")

    cli_approvals.add_parser(sub)
    cli_kill.add_parsers(sub)
    cli_audit.add_parser(sub)
    cli_replay.add_parser(sub)
    cli_example.add_parser(sub)

    keys = sub.add_parser("keys", help="development signing keys")
    ksub = keys.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")
    kinit = ksub.add_parser("init", help="write private.pem and jwks.json into DIR")
    kinit.add_argument("directory", type=Path)

    token = sub.add_parser("token", help="mint a development token signed by `keys init` keys")
    token.add_argument("--keys", type=Path, default=Path("keys"), help="directory of the keys")
    token.add_argument("--sub", required=True)
    token.add_argument("--scope", default="", help="space-separated scopes")
    token.add_argument("--tenant")
    token.add_argument("--agent")
    token.add_argument("--role", action="append", default=[], dest="roles")
    token.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds")
    token.add_argument("--issuer", default="https://idp.example.com")
    token.add_argument("--audience", default="toolgate")

    demo = sub.add_parser("demo", help="run the gateway on its defaults with scripted calls")
    demo.add_argument("--dir", type=Path, default=None,
                      help="empty directory for the demo's config, keys, state and audit log "
                           "(default: a new temporary directory)")
    return p


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    try:
        return _run(words, dict(os.environ if environ is None else environ))
    except UsageError as exc:
        # SECURITY: the command line's tokens are never repeated (`gateway.cli.options`).
        secrets = secrets_in(words)
        sys.stderr.write(redact(exc.usage, secrets))
        print(f"{exc.prog}: error: {redact(exc.message, secrets)}", file=sys.stderr)
        return 2


def _run(argv: list[str], env: dict[str, str]) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    merge_globals(parser, args)
    if args.command == "serve":
        return _serve(args, env)
    if args.command == "check":
        return _check(args.config, env, offline=args.offline, as_json=args.format == "json")
    if args.command == "policy":
        return _policy_test(args.paths or [Path("policies")], args.verbose, args.run)
    if args.command == "approvals":
        return cli_approvals.run(args, env)
    if args.command in ("kill", "revive"):
        return cli_kill.run(args, env)
    if args.command == "audit":
        return cli_audit.run(args, env)
    if args.command == "replay":
        return cli_replay.run(args, env)
    if args.command == "keys":
        return _keys_init(args.directory)
    if args.command == "token":
        return _token(args)
    if args.command == "example-upstream":
        return cli_example.run(args, env)
    if args.command == "demo":
        from gateway.demo import run_demo  # noqa: PLC0415 (demo pulls in extra modules)
        return run_demo(args.dir)
    raise AssertionError(args.command)  # argparse enforces the choices


def _errors(errors: Sequence[LoadError | str]) -> int:
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    return 1


def _load(config: Path, env: Mapping[str, str]) -> Settings | int:
    try:
        return load_config(config, env)
    except LoadError as exc:
        return _errors([exc])
    except LoadErrors as exc:
        return _errors(exc.errors)


def _serve(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """One gateway process; or, with `--workers N` (N > 1), the supervisor of N of them
    (`gateway.workers`), which checks the config first as one gateway would at start."""
    # structlog, uvloop and aiohttp only when serving:
    from gateway.logs import configure_logging  # noqa: PLC0415
    from gateway.serve import StartupError, serve  # noqa: PLC0415
    try:
        count = workers_count(args.workers)
        worker = None if args.worker is None else Worker.parse(
            args.worker, args.worker_parent, args.worker_control_fd)
    except WorkersError as exc:
        return _errors([str(exc)])
    settings = _load(args.config, env)
    if isinstance(settings, int):
        return settings
    try:
        if worker is None and count > 1:
            configure_logging(settings.log, supervisor=True)   # what preflight logs, too
            preflight(settings, env, count)
            return supervise(args.config, settings, env, count)
        return serve(settings, env, worker)
    except LoadErrors as exc:
        return _errors(exc.errors)
    except (KeyConfigError, CredentialError, AuditStartError, StartupError) as exc:
        return _errors([str(exc)])


def check_all(settings: Settings, env: Mapping[str, str], *, offline: bool = False,
              config: Path | None = None) -> tuple[list[LoadError], str]:
    """Every problem `serve` would hit at start, and a one-line summary when there are none.
    The bundle is built by the same function `serve` uses. `offline` leaves out what a
    policy repository does not have: keys, credentials and secrets."""
    from gateway.bundle import load_bundle  # noqa: PLC0415 (compiles the policies)

    problems: list[LoadError] = []
    summary = ""
    try:
        bundle = load_bundle(settings)
    except LoadErrors as exc:
        problems += exc.errors
    else:
        if bundle.policies is not None:
            summary = (f"{len(bundle.tools)} tools, {len(bundle.policies.modules)} policy "
                       f"modules (revision {bundle.revision})")
        elif offline:
            summary = (f"{len(bundle.tools)} tools; policies at OPA {settings.policy.opa_url}"
                       " (not asked offline)")
        else:
            problems += asyncio.run(_ask_opa(bundle, settings))
            summary = (f"{len(bundle.tools)} tools; policies at OPA {settings.policy.opa_url}"
                       f" (revision {bundle.revision})")
    problem = tracing_unavailable(settings.tracing)
    if problem is not None:
        problems.append(problem)
    if offline:
        return problems, summary
    secrets: list[Callable[[], object]] = [
        lambda: load_keys(settings.auth, env),
        lambda: chain_key(settings.audit, env), lambda: redaction_key(settings.audit, env),
        *(lambda u=u: read_credential(u, env) for u in settings.upstreams.values())]
    for read in secrets:
        try:
            read()
        except (KeyConfigError, AuditKeyError, CredentialError) as exc:
            problems.append(LoadError(str(config or settings.base_dir), None, str(exc)))
    return problems, summary


async def _ask_opa(bundle: Bundle, settings: Settings) -> list[LoadError]:
    """OPA's answer to a probe call of every tool: the policies it serves can decide."""
    try:
        return await bundle.probe(settings.policy.query, settings.policy.opa_url)
    finally:
        await bundle.close()


def _check(config: Path, env: Mapping[str, str], *, offline: bool, as_json: bool) -> int:
    summary = ""
    try:
        settings = load_config(config, env)
    except LoadError as exc:
        problems = [exc]
    except LoadErrors as exc:
        problems = exc.errors
    else:
        problems, summary = check_all(settings, env, offline=offline, config=config)
    if as_json:
        print(json.dumps({"ok": not problems, "config": str(config), "offline": offline,
                          "summary": summary or None,
                          "problems": [{"file": p.file, "line": p.line, "message": p.message}
                                       for p in problems]}, indent=2))
        return 1 if problems else 0
    if problems:
        return _errors(problems)
    print(f"ok: {config}: {summary}" + (" (offline: keys and credentials not read)"
                                        if offline else ""))
    return 0


def _policy_test(paths: list[Path], verbose: bool, name_filter: str | None) -> int:
    from gateway.policy import load_sources  # noqa: PLC0415
    from gateway.policy.testing import Outcome, report, run_tests  # noqa: PLC0415

    try:
        results = run_tests(load_sources(paths, tests=True), name_filter)
    except LoadErrors as exc:
        return _errors(exc.errors)
    for line in report(results, verbose):
        print(line)
    ok = results and all(r.outcome is Outcome.PASS for r in results)
    return 0 if ok else 2


def _keys_init(directory: Path) -> int:
    from gateway.devtokens import DevKey  # noqa: PLC0415

    if (directory / "private.pem").exists():
        return _errors([f"{directory / 'private.pem'} exists; not overwriting it"])
    key = DevKey.generate()
    key.save(directory)
    print(f"wrote {directory / 'private.pem'} (keep it secret) and {directory / 'jwks.json'} "
          f"(kid {key.kid}); set auth.jwks_file to the latter")
    return 0


def _token(args: argparse.Namespace) -> int:
    from gateway.devtokens import DevKey  # noqa: PLC0415

    try:
        key = DevKey.load(args.keys)
    except (OSError, ValueError, KeyError) as exc:
        return _errors([f"cannot load keys from {args.keys}: {exc}"])
    print(key.token(args.sub, scopes=args.scope.split(), tenant=args.tenant, agent=args.agent,
                    roles=args.roles, ttl_s=args.ttl, issuer=args.issuer,
                    audience=args.audience))
    return 0
