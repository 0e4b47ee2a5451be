"""`gateway.config.load`: defaults, paths relative to the file, env overrides, errors with lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import config
from gateway.config import Address
from gateway.core.errors import LoadError, LoadErrors

MINIMAL = """\
auth:
  issuer: https://idp.example.com
  audience: toolgate
  algorithms: [RS256]
  jwks_file: keys/jwks.json
upstreams:
  billing:
    url: http://127.0.0.1:9000/
"""


def write(directory: Path, text: str, name: str = "toolgate.yaml") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def load_errors(path: Path, environ: dict[str, str] | None = None) -> list[LoadError]:
    with pytest.raises(LoadErrors) as info:
        config.load(path, environ or {})
    assert info.value.errors
    return info.value.errors


# --------------------------------------------------------------------------------- defaults


def test_minimal_config_loads_with_defaults(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    conf_dir = tmp_path / "etc" / "toolgate"
    path = write(conf_dir, MINIMAL)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # relative paths follow the file, not the working directory
    base = conf_dir.resolve()

    s = config.load(path, {})

    assert s.base_dir == base
    assert s.listen == Address("127.0.0.1", 8080)
    assert s.admin_listen == Address("127.0.0.1", 8081)
    assert s.store == "sqlite:///state/toolgate.db"
    assert s.sqlite_path == base / "state" / "toolgate.db"
    assert s.audit.file == base / "audit" / "toolgate.jsonl"
    assert s.audit.stdout is False
    assert s.tool_specs == (base / "tool_specs",)
    assert s.policies == (base / "policies",)
    assert s.policy.engine == "embedded"
    assert s.policy.query == "data.toolgate.decision"
    assert s.policy.timeout_ms == 100
    assert s.auth.algorithms == ("RS256",)
    assert s.auth.jwks_file == base / "keys" / "jwks.json"
    assert s.auth.leeway_s == 30
    assert s.auth.approver_scope == "toolgate:approve"
    assert s.upstreams["billing"].url == "http://127.0.0.1:9000"
    assert s.upstreams["billing"].credential is None
    assert s.max_body_bytes == 1_048_576
    assert s.approval_ttl_seconds == 86_400
    assert s.fail_open is False


def test_explicit_values_and_relative_paths(tmp_path: Path) -> None:
    path = write(tmp_path / "conf", MINIMAL + """\
  hr:
    url: https://hr.internal
    credential: {header: X-Api-Key, file: secrets/hr.key}
listen: 0.0.0.0:9090
admin_listen: "[::1]:9091"
tool_specs: [specs/a.yaml, ../shared/specs/]
store: sqlite:///../var/tg.db
audit: {file: logs/audit.jsonl, stdout: true}
limits: {max_body_bytes: 2048}
approvals: {ttl_seconds: 60}
""")
    base = (tmp_path / "conf").resolve()
    s = config.load(path, {})
    assert s.listen == Address("0.0.0.0", 9090)  # noqa: S104 (a config value, not a bind)
    assert s.admin_listen == Address("::1", 9091)
    assert str(s.admin_listen) == "[::1]:9091"
    assert s.tool_specs == (base / "specs" / "a.yaml", tmp_path.resolve() / "shared" / "specs")
    assert s.sqlite_path is not None
    assert s.sqlite_path.resolve() == tmp_path.resolve() / "var" / "tg.db"
    assert s.audit.file == base / "logs" / "audit.jsonl"
    assert s.audit.stdout is True
    assert s.max_body_bytes == 2048
    assert s.approval_ttl_seconds == 60
    cred = s.upstreams["hr"].credential
    assert cred is not None
    assert (cred.header, cred.prefix, cred.env, cred.file) == (
        "X-Api-Key", "", None, base / "secrets" / "hr.key")


def test_audit_file_null_disables_the_file_sink(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "audit: {file: null, stdout: true}\n")
    s = config.load(path, {})
    assert s.audit.file is None
    assert s.audit.stdout is True


@pytest.mark.parametrize(("audit", "environ"), [
    ("{file: null, stdout: false}", {}), ("{file: null}", {}),
    ("{stdout: true}", {"TOOLGATE_AUDIT__FILE": "null", "TOOLGATE_AUDIT__STDOUT": "false"})])
def test_a_config_with_no_audit_sink_is_an_error(tmp_path: Path, audit: str,
                                                 environ: dict[str, str]) -> None:
    path = write(tmp_path, MINIMAL + f"audit: {audit}\n")
    with pytest.raises(LoadErrors) as info:
        config.load(path, environ)
    assert any("audit: no sink" in str(e) and "toolgate.yaml:" in str(e)
               for e in info.value.errors)


def test_audit_settings_have_safe_defaults_and_parse(tmp_path: Path) -> None:
    s = config.load(write(tmp_path, MINIMAL), {})
    assert (s.audit.fsync, s.audit.fsync_interval_s) == ("interval", 1.0)
    assert (s.audit.rotate_bytes, s.audit.rotate_s, s.audit.retain_s) == (
        100 * 1024 * 1024, 86_400.0, None)
    assert (s.audit.redaction, s.audit.hmac_key_file, s.audit.hmac_key_env) == (
        "mask", None, None)
    path = write(tmp_path, MINIMAL + "audit: {fsync: always, rotate_bytes: null, "
                 "rotate_hours: 1.5, retain_days: 180, hmac_key_file: keys/audit.key, "
                 "redaction: hash, redaction_key_env: PII_KEY}\n")
    s = config.load(path, {})
    assert (s.audit.fsync, s.audit.rotate_bytes, s.audit.rotate_s) == ("always", None, 5400.0)
    assert s.audit.retain_s == 180 * 86_400.0
    assert s.audit.hmac_key_file == tmp_path.resolve() / "keys" / "audit.key"
    assert (s.audit.redaction, s.audit.redaction_key_env) == ("hash", "PII_KEY")


@pytest.mark.parametrize(("audit", "message"), [
    ("{redaction: hash}", "needs a key"),
    ("{fsync: sometimes}", "fsync"),
    ("{hmac_key_file: a, hmac_key_env: B}", "audit"),
    ("{rotate_bytes: 10}", "rotate_bytes"),
])
def test_bad_audit_settings_are_named(tmp_path: Path, audit: str, message: str) -> None:
    with pytest.raises(LoadErrors) as info:
        config.load(write(tmp_path, MINIMAL + f"audit: {audit}\n"), {})
    assert any(message in str(e) for e in info.value.errors), info.value.errors


def test_postgres_store_has_no_sqlite_path(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "store: postgresql://tg@db/toolgate\n")
    s = config.load(path, {})
    assert s.store == "postgresql://tg@db/toolgate"
    assert s.sqlite_path is None


def test_the_shipped_config_loads(repo_root: Path) -> None:
    s = config.load(repo_root / "toolgate.yaml", {})
    assert set(s.upstreams) == {"crm", "billing", "hr"}
    cred = s.upstreams["billing"].credential
    assert cred is not None
    assert (cred.header, cred.prefix, cred.env) == ("Authorization", "Bearer ", "BILLING_TOKEN")
    assert s.tool_specs == (repo_root / "tool_specs",)


# ------------------------------------------------------------------------ environment overrides


def test_env_overrides_nested_scalars(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "audit: {file: audit/a.jsonl}\n")
    s = config.load(path, {
        "TOOLGATE_AUDIT__FILE": "other/b.jsonl",
        "TOOLGATE_POLICY__TIMEOUT_MS": "250",
        "TOOLGATE_UPSTREAMS__BILLING__URL": "https://billing.internal",
        "TOOLGATE_FAIL_OPEN": "true",
        "HOME": "/root",              # not ours: ignored
        "TOOLGATEX_NOPE": "1",        # no underscore after the prefix: not ours either
    })
    assert s.audit.file == tmp_path.resolve() / "other" / "b.jsonl"
    assert s.policy.timeout_ms == 250
    assert isinstance(s.policy.timeout_ms, int)
    assert s.upstreams["billing"].url == "https://billing.internal"
    assert s.fail_open is True


def test_env_override_creates_a_missing_section(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    s = config.load(path, {"TOOLGATE_LIMITS__MAX_BODY_BYTES": "4096"})
    assert s.max_body_bytes == 4096


def test_env_overrides_a_list(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    s = config.load(path, {
        "TOOLGATE_TOOL_SPECS": "[specs/a.yaml, more/]",
        "TOOLGATE_AUTH__ALGORITHMS": "[ES256, RS256]",
    })
    base = tmp_path.resolve()
    assert s.tool_specs == (base / "specs" / "a.yaml", base / "more")
    assert s.auth.algorithms == ("ES256", "RS256")


def test_env_override_keeps_surrounding_spaces_of_a_string(tmp_path: Path) -> None:
    # DESIGN §2.3 shows `prefix: "Bearer "`; the same value given through the environment
    # must keep its trailing space, or the upstream receives "Bearer<token>".
    path = write(tmp_path, MINIMAL + "    credential: {header: Authorization, env: TOK}\n")
    s = config.load(path, {"TOOLGATE_UPSTREAMS__BILLING__CREDENTIAL__PREFIX": "Bearer "})
    cred = s.upstreams["billing"].credential
    assert cred is not None
    assert cred.prefix == "Bearer "


def test_env_value_of_the_wrong_type_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    errors = load_errors(path, {"TOOLGATE_POLICY__TIMEOUT_MS": "soon"})
    assert any("policy.timeout_ms" in e.message for e in errors)


def test_unknown_env_key_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    errors = load_errors(path, {"TOOLGATE_NOPE": "1"})
    assert any("'nope'" in e.message for e in errors)


def test_unknown_nested_env_key_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    errors = load_errors(path, {"TOOLGATE_POLICY__NOPE": "1"})
    assert any("policy" in e.message and "'nope'" in e.message for e in errors)


def test_unknown_env_key_error_names_the_variable(tmp_path: Path) -> None:
    # The file is fine; an error that points at one of its lines and never names the
    # variable sends the operator to the wrong place.
    path = write(tmp_path, MINIMAL)
    errors = load_errors(path, {"TOOLGATE_NOPE": "1"})
    assert any("TOOLGATE_NOPE" in str(e) for e in errors)


def test_malformed_env_key_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    errors = load_errors(path, {"TOOLGATE_AUDIT____FILE": "x"})
    assert any("TOOLGATE_AUDIT____FILE" in e.message and "malformed" in e.message
               for e in errors)


def test_env_key_below_a_scalar_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "listen: 127.0.0.1:8080\n")
    errors = load_errors(path, {"TOOLGATE_LISTEN__PORT": "1"})
    assert any("TOOLGATE_LISTEN__PORT" in e.message and "not a section" in e.message
               for e in errors)


# ------------------------------------------------------------------------- errors with lines


def test_unknown_top_level_key_reports_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "listen: 127.0.0.1:8080\nbogus: 1\n")
    bogus_line = 10
    assert path.read_text().splitlines()[bogus_line - 1] == "bogus: 1"
    errors = load_errors(path)
    assert len(errors) == 1
    assert "unknown key 'bogus'" in str(errors[0])
    assert f"{path}:{bogus_line}:" in str(errors[0])


def test_unknown_nested_key_reports_its_line(tmp_path: Path) -> None:
    path = write(tmp_path,
                 MINIMAL + "policy:\n  engine: embedded\n  timeout_ms: 5\n  colour: red\n")
    colour_line = 12
    assert path.read_text().splitlines()[colour_line - 1] == "  colour: red"
    errors = load_errors(path)
    assert len(errors) == 1
    assert "policy" in str(errors[0])
    assert "unknown key 'colour'" in str(errors[0])
    assert f"{path}:{colour_line}:" in str(errors[0])


def test_bad_value_reports_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "policy:\n  engine: magic\n")
    errors = load_errors(path)
    assert len(errors) == 1
    assert f"{path}:10:" in str(errors[0])
    assert "policy.engine" in str(errors[0])


def test_algorithm_none_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace("algorithms: [RS256]", "algorithms: [none]"))
    errors = load_errors(path)
    assert any("auth.algorithms" in e.message and "'none'" in e.message for e in errors)
    assert all(e.line == 4 for e in errors)


def test_algorithm_none_through_the_environment_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    errors = load_errors(path, {"TOOLGATE_AUTH__ALGORITHMS": "[RS256, none]"})
    assert any("auth.algorithms" in e.message for e in errors)


def test_empty_algorithm_list_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace("algorithms: [RS256]", "algorithms: []"))
    errors = load_errors(path)
    assert any("auth.algorithms" in e.message for e in errors)


def test_auth_with_two_key_sources_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace(
        "  jwks_file: keys/jwks.json\n",
        "  jwks_file: keys/jwks.json\n  public_key_file: keys/pub.pem\n"))
    errors = load_errors(path)
    assert len(errors) == 1
    assert errors[0].message.startswith("auth:")
    assert errors[0].line == 1


def test_auth_without_a_key_source_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace("  jwks_file: keys/jwks.json\n", ""))
    errors = load_errors(path)
    assert len(errors) == 1
    assert errors[0].message.startswith("auth:")


def test_auth_with_an_hs256_secret_env_loads(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace("  jwks_file: keys/jwks.json\n",
                                           "  hs256_secret_env: TG_SECRET\n")
                 .replace("[RS256]", "[HS256]"))
    s = config.load(path, {})
    assert s.auth.hs256_secret_env == "TG_SECRET"
    assert s.auth.jwks_file is None


def test_credential_without_env_or_file_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + '    credential: {header: Authorization, prefix: "Bearer "}\n')
    errors = load_errors(path)
    assert len(errors) == 1
    assert "upstreams.billing.credential" in errors[0].message
    assert errors[0].line == 9


def test_credential_with_both_env_and_file_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "    credential: {header: A, env: TOK, file: tok.txt}\n")
    errors = load_errors(path)
    assert any("upstreams.billing.credential" in e.message for e in errors)


def test_missing_required_sections_are_reported(tmp_path: Path) -> None:
    path = write(tmp_path, "listen: 127.0.0.1:8080\n")
    errors = load_errors(path)
    text = "\n".join(map(str, errors))
    assert "'auth' is a required property" in text
    assert "'upstreams' is a required property" in text


def test_several_problems_are_reported_together(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace("algorithms: [RS256]", "algorithms: [none]")
                 + "fail_open: maybe\nstore: mysql://x\n")
    errors = load_errors(path)
    lines = sorted(e.line for e in errors if e.line is not None)
    assert 4 in lines   # algorithms
    assert 9 in lines   # fail_open
    assert 10 in lines  # store


def test_invalid_listen_address_is_a_load_error(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "listen: localhost\n")
    errors = load_errors(path)
    assert any("listen" in e.message for e in errors)
    assert any(e.line == 9 for e in errors)


def test_listen_port_out_of_range_is_a_load_error(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "listen: 127.0.0.1:99999\n")
    errors = load_errors(path)
    assert any("listen" in e.message for e in errors)


def test_yaml_syntax_error_reports_a_line(tmp_path: Path) -> None:
    path = write(tmp_path, "auth:\n  issuer: [unclosed\nupstreams: {}\n")
    with pytest.raises(LoadError) as info:
        config.load(path, {})
    assert info.value.file == str(path)
    assert info.value.line is not None
    assert f"{path}:{info.value.line}: invalid YAML" in str(info.value)


def test_duplicate_yaml_key_is_reported_with_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "  billing:\n    url: http://other\n")
    with pytest.raises(LoadError) as info:
        config.load(path, {})
    assert info.value.line == 9
    assert f"{path}:9: duplicate key 'billing'" in str(info.value)


def test_a_config_that_is_not_a_mapping_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, "- listen\n- auth\n")
    errors = load_errors(path)
    assert "mapping" in errors[0].message


def test_a_missing_config_file_is_a_load_error(tmp_path: Path) -> None:
    with pytest.raises(LoadError) as info:
        config.load(tmp_path / "absent.yaml", {})
    assert "cannot read" in str(info.value)


def test_kubernetes_service_link_variables_are_not_config(tmp_path: Path) -> None:
    """A Service named toolgate makes Kubernetes inject TOOLGATE_SERVICE_HOST and friends."""
    path = write(tmp_path, MINIMAL)
    settings = config.load(path, {
        "TOOLGATE_SERVICE_HOST": "10.0.0.1", "TOOLGATE_SERVICE_PORT": "80",
        "TOOLGATE_SERVICE_PORT_HTTP": "80", "TOOLGATE_PORT": "tcp://x:80",
        "TOOLGATE_PORT_80_TCP_ADDR": "10.0.0.1"})
    assert settings.listen.port == 8080


def test_the_opa_engine_needs_a_server_address(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    settings = config.load(path, {"TOOLGATE_POLICY__ENGINE": "opa",
                                  "TOOLGATE_POLICY__OPA_URL": "http://10.0.0.5:8181"})
    assert (settings.policy.engine, settings.policy.opa_url) == ("opa", "http://10.0.0.5:8181")
    [error] = load_errors(path, {"TOOLGATE_POLICY__ENGINE": "opa",
                                 "TOOLGATE_POLICY__OPA_URL": "10.0.0.5:8181"})
    assert "policy.opa_url must be http(s)://host:port" in error.message


def test_connection_limits_have_safe_defaults(tmp_path: Path) -> None:
    s = config.load(write(tmp_path, MINIMAL), {})
    assert (s.max_connections, s.admin_max_connections) == (1024, 128)
    assert s.admin_max_connections_per_client == 16   # eight clients to fill the admin port
    assert s.send_timeout_s == 30.0


def test_send_timeout_and_per_client_cap_are_set_in_limits(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "limits: {send_timeout_ms: 2500}\n")
    s = config.load(path, {"TOOLGATE_LIMITS__ADMIN_MAX_CONNECTIONS_PER_CLIENT": "4"})
    assert (s.send_timeout_s, s.admin_max_connections_per_client) == (2.5, 4)


@pytest.mark.parametrize("key", ["send_timeout_ms", "admin_max_connections_per_client"])
def test_send_timeout_and_per_client_cap_must_be_positive(tmp_path: Path, key: str) -> None:
    errors = load_errors(write(tmp_path, MINIMAL + f"limits: {{{key}: 0}}\n"))
    assert any(key in e.message for e in errors), errors
