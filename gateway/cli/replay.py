"""`toolgate replay` (DESIGN §13): what a candidate policy would have done to recorded calls.

The files are chosen as for `toolgate audit` (FILE…, or the config's `audit.file`); the
candidate is `--policies` (and `--specs`). Exit 0 done; 1 with `--fail-on-change` when a
decision would change; 2 for a candidate that does not load or no files to read.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway.audit.query import Window
from gateway.cli.audit import DEFAULT_CONFIG, Usage, audit_inputs, window_options
from gateway.core.errors import LoadErrors
from gateway.policy.replay import Candidate, Replay, replay


def add_parser(sub: Any) -> None:
    p = sub.add_parser("replay", help="re-decide recorded calls with a candidate policy")
    p.add_argument("files", nargs="*", type=Path, metavar="AUDIT_FILE",
                   help="audit files or directories (default: the config's audit.file)")
    p.add_argument("--config", "-c", type=Path, default=None,
                   help=f"gateway config (default {DEFAULT_CONFIG} when no file is given)")
    p.add_argument("--policies", type=Path, action="append", required=True, metavar="DIR",
                   help="the candidate's policies and data (repeatable)")
    p.add_argument("--specs", type=Path, action="append", default=[], metavar="DIR",
                   help="the candidate's tool specs (default: the tools as recorded)")
    p.add_argument("--query", default="data.toolgate.decision", help="the decision rule")
    window_options(p)
    p.add_argument("--tool", action="append", default=[], help="only this tool (repeatable)")
    p.add_argument("--tenant", action="append", default=[],
                   help="only this tenant (repeatable)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--fail-on-change", action="store_true",
                   help="exit 1 if any decision would change (a CI gate)")


def run(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    try:
        paths, _audit = audit_inputs(args, environ)
        candidate = Candidate(args.policies, args.specs, args.query)
    except Usage as usage:
        for line in usage.lines:
            print(f"error: {line}", file=sys.stderr)
        return 2
    except LoadErrors as exc:
        for error in exc.errors:
            print(f"error: {error}", file=sys.stderr)
        return 2
    bad: list[str] = []
    result = replay(paths, candidate, lambda path, line: bad.append(f"{path}:{line}"),
                    window=Window.of(args.since, args.until), tools=args.tool,
                    tenants=args.tenant)
    for where in bad:
        print(f"{where}: not a JSON record; skipped", file=sys.stderr)
    if args.json:
        print(json.dumps(result.as_json(), indent=2, ensure_ascii=False))
    else:
        _print(result)
    return 1 if args.fail_on_change and result.changes else 0


def _print(r: Replay) -> None:
    specs = f", specs {r.spec_revision}" if r.spec_revision else ", the tools as recorded"
    print(f"replayed {r.replayed} of {r.decisions} decision records against policies "
          f"{r.policy_revision}{specs}")
    print(f"  not replayable: {r.not_replayable} (refused before the policy, or fail_open)")
    print(f"  with redacted values: {r.with_redactions} (replayed as recorded: a rule "
          "reading one sees the mask or the token)")
    if r.tools_removed:
        print(f"  of tools the candidate does not have: {r.tools_removed}")
    same = ", ".join(f"{action} {n}" for action, n in sorted(r.unchanged.items())) or "-"
    print(f"unchanged: {same}")
    print(f"changed: {r.changes}")
    for key, t in sorted(r.changed.items(), key=lambda item: -item[1].calls):
        reasons = ", ".join(f"{reason} {n}" for reason, n in t.reasons.most_common(5)) or "-"
        print(f"  {key:<28} {t.calls:>6}  {reasons}")
        print(f"  {'':<28} {'':>6}  e.g. {', '.join(t.examples)}")
