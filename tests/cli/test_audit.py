"""`toolgate audit verify|query|report` as the command: which files, which key, what is
printed, and the exit codes (0 done, 1 broken chain or a line that is not a record, 2 usage).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from gateway.audit import chain
from gateway.audit.chain import GENESIS, seal
from gateway.audit.files import family, rotated_name
from gateway.audit.log import AuditLog
from gateway.audit.settings import AuditSettings
from gateway.cli.audit import verify_settled
from gateway.cli.main import main
from tests.audit.test_query import T0, approval, decision, outcome, write

KEY = "k" * 40
CONFIG = """\
auth: {issuer: https://idp.example.com, audience: toolgate, algorithms: [RS256],
       jwks_file: keys/jwks.json}
upstreams: {billing: {url: "http://127.0.0.1:9000"}}
audit: {file: logs/toolgate.jsonl%s}
"""


def run(capsys: pytest.CaptureFixture[str], *argv: str,
        environ: Mapping[str, str] | None = None) -> tuple[int, str, str]:
    code = main(["audit", *argv], dict(environ or {}))
    out, err = capsys.readouterr()
    return code, out, err


def sealed(records: Sequence[Mapping[str, Any]], key: bytes | None = None,
           first: int = 1, prev: str = GENESIS) -> tuple[list[bytes], str]:
    """The lines the chained log writes, and the last hash."""
    out = []
    for seq, record in enumerate(records, start=first):
        line, prev = seal(record, seq=seq, prev_hash=prev, key=key)
        out.append(line)
    return out, prev


@pytest.fixture
def chain_files(tmp_path: Path) -> tuple[Path, Path, str]:
    """A chain of five records across a rotated file and the live one; the config names
    the live file and a key in $AUDIT_KEY."""
    live = tmp_path / "logs" / "toolgate.jsonl"
    rotated = rotated_name(live, T0.timestamp() + 3600)
    older, prev = sealed([decision("req_1", 0), outcome("req_1", 1)], KEY.encode())
    newer, head = sealed([decision("req_2", 2), decision("req_3", 3),
                          outcome("req_3", 4)], KEY.encode(), first=3, prev=prev)
    write(rotated, older)
    write(live, newer)
    config = tmp_path / "toolgate.yaml"
    config.write_text(CONFIG % ", hmac_key_env: AUDIT_KEY", encoding="utf-8")
    return live, config, head


def test_verify_from_the_config(capsys: pytest.CaptureFixture[str],
                                chain_files: tuple[Path, Path, str]) -> None:
    _live, config, head = chain_files
    code, out, _ = run(capsys, "verify", "--config", str(config), environ={"AUDIT_KEY": KEY})
    assert code == 0
    assert out == f"ok: 5 records in 2 files, seq 1..5, head {head}\n"


def test_verify_files_with_a_key_flag(capsys: pytest.CaptureFixture[str],
                                      chain_files: tuple[Path, Path, str],
                                      tmp_path: Path) -> None:
    live, _config, head = chain_files
    key_file = tmp_path / "chain.key"
    key_file.write_text(KEY + "\n")
    assert run(capsys, "verify", str(live), "--hmac-key-file", str(key_file))[0] == 0
    code, out, _ = run(capsys, "verify", str(live), "--hmac-key-env", "K", "--json",
                       environ={"K": KEY})
    assert code == 0
    body = json.loads(out)
    (result,) = body["chains"]
    assert (body["ok"], result["chain"], result["records"], result["first_seq"],
            result["last_seq"], result["head"], result["problem"]) == (
        True, str(live), 5, 1, 5, head, None)
    # Without the key, the first record's seal does not hold.
    code, out, _ = run(capsys, "verify", str(live))
    assert code == 1
    assert out.startswith(f"{rotated_name(live, T0.timestamp() + 3600)}:1: "
                          "decision_id=req_1: the hash does not match")


def test_a_directory_of_several_chains_is_verified_chain_by_chain(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    directory = tmp_path / "audit"
    for name in ("worker-1.jsonl", "worker-2.jsonl"):
        log = AuditLog(AuditSettings(file=directory / name))
        log.write("decision", {"decision_id": f"req-{name}"})
        log.close()
    code, out, _ = run(capsys, "verify", str(directory))
    assert code == 0
    assert out.splitlines() == [
        f"worker-{n}.jsonl: ok: 3 records in 1 files, seq 1..3, head "
        f"{json.loads((directory / f'worker-{n}.jsonl').read_bytes().splitlines()[-1])['hash']}"
        for n in (1, 2)]
    second = directory / "worker-2.jsonl"
    second.write_bytes(second.read_bytes().replace(b"req-worker", b"req-w0rker"))
    code, out, _ = run(capsys, "verify", str(directory))
    assert code == 1
    assert out.splitlines()[0].startswith("worker-1.jsonl: ok:")
    assert out.splitlines()[1].startswith(f"{second}:2: decision_id=req-w0rker-2.jsonl: ")


def test_verify_names_the_first_bad_record(capsys: pytest.CaptureFixture[str],
                                           chain_files: tuple[Path, Path, str]) -> None:
    live, config, _head = chain_files
    lines = live.read_bytes().splitlines(keepends=True)
    live.write_bytes(lines[0] + lines[2])           # req_3's decision (seq 4) is gone
    code, out, _ = run(capsys, "verify", "--config", str(config), environ={"AUDIT_KEY": KEY})
    assert code == 1
    assert out.startswith(f"{live}:2: decision_id=req_3: seq 5 where 4 was due")
    code, out, _ = run(capsys, "verify", "--config", str(config), "--json",
                       environ={"AUDIT_KEY": KEY})
    assert code == 1
    assert json.loads(out)["chains"][0]["problem"] | {"message": ""} == {
        "file": str(live), "line": 2, "decision_id": "req_3", "message": ""}


def test_verify_partial_accepts_a_chain_that_starts_late(
        capsys: pytest.CaptureFixture[str], chain_files: tuple[Path, Path, str]) -> None:
    live, _config, _head = chain_files
    assert run(capsys, "verify", str(live), "--hmac-key-env", "K", environ={"K": KEY})[0] == 0
    rotated = rotated_name(live, T0.timestamp() + 3600)
    rotated.unlink()
    assert run(capsys, "verify", str(live), "--hmac-key-env", "K", environ={"K": KEY})[0] == 1
    assert run(capsys, "verify", str(live), "--hmac-key-env", "K", "--partial",
               environ={"K": KEY})[0] == 0


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                             chain_files: tuple[Path, Path, str],
                             monkeypatch: pytest.MonkeyPatch) -> None:
    live, config, _ = chain_files
    code, _, err = run(capsys, "verify", "--config", str(config))
    assert (code, err) == (2, "error: audit.hmac_key: environment variable AUDIT_KEY is "
                              "not set\n")
    code, _, err = run(capsys, "verify", str(live), "--hmac-key-env", "K",
                       environ={"K": "short"})
    assert code == 2 and "at least 32 are needed" in err
    code, _, err = run(capsys, "query", str(tmp_path / "nothing.jsonl"))
    assert (code, err) == (2, f"error: {tmp_path / 'nothing.jsonl'}: no such file\n")
    (tmp_path / "empty").mkdir()
    code, _, err = run(capsys, "report", str(tmp_path / "empty"))
    assert code == 2 and "no audit files in" in err
    monkeypatch.chdir(tmp_path / "empty")
    code, _, err = run(capsys, "query")
    assert code == 2 and "toolgate.yaml" in err
    # A usage error is exit status 2, printed by `main` (with any token redacted).
    assert main(["audit", "query", str(live), "--since", "last tuesday"]) == 2
    assert "neither an RFC 3339 time nor a duration" in capsys.readouterr().err


@pytest.fixture
def calls(tmp_path: Path) -> Path:
    live = tmp_path / "logs" / "toolgate.jsonl"
    return write(live, [
        decision("req_1", 0, "create_refund_request", spend={"amount": 40}, run_id="run-1",
                 args_valid=True),
        outcome("req_1", 1, 201, output_valid=True),
        decision("req_2", 2, "create_refund_request", action="deny", code="schema_invalid",
                 args=None, args_valid=False, sub="evil\x1b[2J\nsvc"),
        decision("req_3", 3, "create_refund_request", action="require_approval",
                 approval_id="apr_1", args_valid=True),
        approval("req_3", "apr_1", "queued", 3),
        decision("req_4", 86_400, "get_order", args_valid=True),
        outcome("req_4", 86_401, 503),
    ])


def test_query_prints_a_table_with_the_caller_s_text_escaped(
        capsys: pytest.CaptureFixture[str], calls: Path) -> None:
    code, out, _ = run(capsys, "query", str(calls), "--tool", "create_refund_request")
    assert code == 0
    rows = out.splitlines()
    assert rows[0].split() == ["TS", "KIND", "DECISION_ID", "TOOL", "PRINCIPAL",
                               "ACTION/EVENT", "CODE"]
    assert [r.split()[1:3] for r in rows[1:]] == [
        ["decision", "req_1"], ["outcome", "req_1"], ["decision", "req_2"],
        ["decision", "req_3"], ["approval", "req_3"]]
    assert rows[3].split()[4:] == ["evil\\u001b[2J\\nsvc", "deny", "schema_invalid"]
    assert "\x1b" not in out


def test_query_json_is_the_lines_as_written(capsys: pytest.CaptureFixture[str],
                                            calls: Path) -> None:
    code, out, _ = run(capsys, "query", str(calls), "--decision-id", "req_3", "--json")
    assert code == 0
    lines = calls.read_text().splitlines(keepends=True)
    assert out == lines[3] + lines[4]
    code, out, _ = run(capsys, "query", str(calls), "--kind", "outcome", "--since",
                       "2026-12-03T00:00:00Z", "--json")
    assert out == lines[6]


def test_query_and_report_name_a_line_that_is_not_a_record(
        capsys: pytest.CaptureFixture[str], calls: Path) -> None:
    with calls.open("ab") as f:
        f.write(b"{not json\n")
    for command in ("query", "report"):
        code, out, err = run(capsys, command, str(calls))
        assert code == 1
        assert err == f"{calls}:8: not a JSON record; skipped\n"
        assert "req_4" in out or "get_order" in out


def test_report_json_csv_and_table(capsys: pytest.CaptureFixture[str], calls: Path,
                                   tmp_path: Path) -> None:
    config = tmp_path / "toolgate.yaml"
    config.write_text(CONFIG % "", encoding="utf-8")
    code, out, _ = run(capsys, "report", "--config", str(config), "--json")
    assert code == 0
    body = json.loads(out)
    assert body["period"] == "day" and body["files"] == [str(calls)]
    refunds = body["groups"][0]
    assert (refunds["period"], refunds["tool"], refunds["calls"]) == (
        "2026-12-02", "create_refund_request", 3)
    assert refunds["validity"]["rate"] == 2 / 3
    assert refunds["spend_per_run"]["currencies"] == {
        "amount": {"total": 40.0, "mean": 40.0, "max": 40.0}}
    assert [t["period"] for t in body["totals"]] == ["2026-12-02", "2026-12-03"]

    code, out, _ = run(capsys, "report", str(calls), "--csv", "--period", "all")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["tool"], r["calls"], r["success_rate"]) for r in rows] == [
        ("create_refund_request", "3", "1.0"), ("get_order", "1", "0.0"), ("*", "4", "0.5")]
    assert rows[0]["denials_schema_invalid"] == "1" and rows[1]["denials_schema_invalid"] == ""

    code, out, _ = run(capsys, "report", str(calls), "--tool", "create_refund_request")
    assert code == 0
    header, row = out.splitlines()
    assert header.split()[:4] == ["PERIOD", "TOOL", "CALLS", "VALID"]
    assert "66.7% (2/3)" in row and "100.0% (1/1)" in row and "schema_invalid=1" in row
    assert "1 run: amount mean 40 max 40" in row


def test_a_rotation_between_listing_and_reading_is_not_tampering(tmp_path: Path) -> None:
    live = tmp_path / "toolgate.jsonl"
    log = AuditLog(AuditSettings(file=live, rotate_bytes=4096))
    for n in range(30):
        log.write("decision", {"decision_id": f"req-{n}", "pad": "x" * 100})
    listed = family(live)                 # what `verify` listed...
    for n in range(30):                   # ...before the gateway rotated again
        log.write("decision", {"decision_id": f"more-{n}", "pad": "x" * 100})
    log.close()
    assert not chain.verify(listed, None).ok, "read as listed, it looks like a gap"
    result = verify_settled(live, listed, None, False)
    assert result.ok and result.files == family(live)


def test_a_file_gone_while_reading_is_a_usage_error_not_tampering(
        capsys: pytest.CaptureFixture[str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    live = tmp_path / "toolgate.jsonl"
    AuditLog(AuditSettings(file=live)).close()

    def gone(*_: Any, **__: Any) -> None:
        raise FileNotFoundError(2, "No such file or directory", str(live))

    monkeypatch.setattr(chain, "verify", gone)
    code, out, err = run(capsys, "verify", str(live))
    assert (code, out) == (2, "")
    assert err == f"error: {live}: No such file or directory\n"
