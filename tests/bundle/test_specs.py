"""`gateway.bundle.specs`: the shipped specs, load errors with `file:line`, compiled schemas."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from gateway.bundle.schemas import compile_schema, pii_pointers
from gateway.bundle.specs import Idempotency, Mode, Tier, load_specs
from gateway.core.errors import LoadError, LoadErrors

UPSTREAMS = ("crm", "billing", "hr")

SPEC = """\
name: {name}
upstream: crm
route: {{method: {method}, path: "{path}"}}
input_schema:
  type: object
"""


def spec(name: str = "tool_a", path: str = "/a", method: str = "GET") -> str:
    return SPEC.format(name=name, path=path, method=method)


def write(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def load_errors(paths: list[Path], upstreams: Any = UPSTREAMS) -> list[LoadError]:
    with pytest.raises(LoadErrors) as info:
        load_specs(paths, upstreams)
    assert info.value.errors
    return info.value.errors


def only_error(paths: list[Path], upstreams: Any = UPSTREAMS) -> LoadError:
    errors = load_errors(paths, upstreams)
    assert len(errors) == 1, errors
    return errors[0]


# ------------------------------------------------------------------------------ shipped specs


def test_shipped_specs_load(repo_root: Path) -> None:
    specs = load_specs([repo_root / "tool_specs"], UPSTREAMS)
    assert set(specs.tools) == {"lookup_customer", "get_order", "add_ticket_note",
                                "create_refund_request", "change_payroll_bank"}
    for tool in specs.tools.values():
        found = specs.routes.match(tool.method, tool.route.render(
            dict.fromkeys(tool.route.names, "x1")))
        assert found is not None
        assert found[0] is tool


def test_shipped_refund_spec(repo_root: Path) -> None:
    specs = load_specs([repo_root / "tool_specs"], UPSTREAMS)
    refund = specs.tools["create_refund_request"]
    assert refund.tier is Tier.YELLOW
    assert refund.idempotency is Idempotency.REQUIRED
    assert refund.mode is Mode.ENFORCE
    assert refund.upstream == "billing"
    assert refund.method == "POST"
    assert refund.route.text == "/billing/refunds"
    assert refund.forward.text == "/v1/refunds"
    assert refund.scopes == ("billing:refund",)
    assert refund.timeout_ms == 5000
    assert refund.output_validator is not None
    assert "/customer_email" in refund.pii_pointers
    assert refund.source.startswith(str(repo_root / "tool_specs" / "create_refund_request.yaml"))


def test_shipped_specs_pii_pointers_and_tiers(repo_root: Path) -> None:
    tools = load_specs([repo_root / "tool_specs"], UPSTREAMS).tools
    assert tools["change_payroll_bank"].pii_pointers == ("/iban",)
    assert tools["change_payroll_bank"].tier is Tier.RED
    assert tools["add_ticket_note"].pii_pointers == ("/notify_email",)
    assert tools["get_order"].pii_pointers == ()
    assert tools["get_order"].idempotency is Idempotency.NONE
    assert tools["lookup_customer"].output_validator is not None
    assert tools["get_order"].output_validator is None


def test_shipped_refund_schema_checks_formats(repo_root: Path) -> None:
    refund = load_specs([repo_root / "tool_specs"], UPSTREAMS).tools["create_refund_request"]
    good: dict[str, Any] = {"tenant_id": "acme", "order_id": "ord_1234", "amount": 10,
                            "currency": "USD", "customer_email": "a@example.com"}
    assert refund.input_validator.is_valid(good)
    assert not refund.input_validator.is_valid({**good, "customer_email": "not-an-email"})
    assert not refund.input_validator.is_valid({**good, "amount": 0})
    assert not refund.input_validator.is_valid({**good, "extra": 1})


def test_shipped_specs_with_an_unknown_upstream_fail(repo_root: Path) -> None:
    errors = load_errors([repo_root / "tool_specs"], ["crm", "billing"])
    assert len(errors) == 1
    assert "change_payroll_bank.yaml:3:" in str(errors[0])
    assert "'hr'" in errors[0].message


# --------------------------------------------------------------------------------- loading


def test_defaults_of_a_minimal_spec(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", spec(path="/things/{thing_id}"))
    tool = load_specs([tmp_path], UPSTREAMS).tools["tool_a"]
    assert tool.tier is Tier.RED            # fail closed: no tier is the strictest tier
    assert tool.idempotency is Idempotency.OPTIONAL
    assert tool.mode is Mode.ENFORCE
    assert tool.forward.text == "/things/{thing_id}"
    assert tool.scopes == ()
    assert tool.description == ""
    assert tool.output_validator is None
    assert tool.source == f"{tmp_path / 'a.yaml'}:1"


def test_a_file_with_a_list_of_two_specs_loads_both(tmp_path: Path) -> None:
    write(tmp_path, "many.yaml", """\
- name: first
  upstream: crm
  route: {method: GET, path: /first}
  input_schema: {type: object}
- name: second
  upstream: billing
  route: {method: POST, path: "/second/{id}"}
  forward: {path: "/v2/{id}"}
  tier: green
  input_schema: {type: object}
""")
    specs = load_specs([tmp_path], UPSTREAMS)
    assert set(specs.tools) == {"first", "second"}
    assert specs.tools["second"].source == f"{tmp_path / 'many.yaml'}:5"
    found = specs.routes.match("POST", "/second/abc")
    assert found is not None
    assert found[0].name == "second"
    assert found[1] == ["abc"]


def test_single_files_and_directories_both_load(tmp_path: Path) -> None:
    one = write(tmp_path / "one", "x.yml", spec("x", "/x"))
    write(tmp_path / "dir" / "nested", "y.yaml", spec("y", "/y"))
    write(tmp_path / "dir", "ignored.txt", "not a spec")
    specs = load_specs([one, tmp_path / "dir"], UPSTREAMS)
    assert set(specs.tools) == {"x", "y"}


def test_without_upstream_names_any_upstream_is_accepted(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", spec().replace("upstream: crm", "upstream: anything"))
    assert set(load_specs([tmp_path]).tools) == {"tool_a"}


def test_no_specs_found_is_an_error(tmp_path: Path) -> None:
    err = only_error([tmp_path])
    assert "no tool specs found" in err.message


# ----------------------------------------------------------------------- load errors with lines


def test_unknown_key_is_reported_at_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "a.yaml", spec() + "colour: red\n")
    err = only_error([tmp_path])
    assert "unknown key 'colour'" in err.message
    assert str(err).startswith(f"{path}:6:")


def test_unknown_nested_key_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "a.yaml", spec().replace("path: \"/a\"}", "path: \"/a\", verb: x}"))
    err = only_error([tmp_path])
    assert err.file == str(path)
    assert err.line == 3
    assert "route" in err.message
    assert "unknown key 'verb'" in err.message


def test_bad_enum_value_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path, "a.yaml", spec() + "tier: purple\n")
    err = only_error([tmp_path])
    assert str(err).startswith(f"{path}:6: tier:")


def test_bad_json_schema_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path, "a.yaml", spec() + "  properties:\n    n: {type: integr}\n")
    err = only_error([tmp_path])
    assert err.file == str(path)
    assert err.line == 4
    assert "tool 'tool_a'" in err.message
    assert "invalid JSON Schema" in err.message
    assert "properties/n/type" in err.message


def test_bad_output_schema_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path, "a.yaml", spec() + "output_schema: {required: 5}\n")
    err = only_error([tmp_path])
    assert str(err).startswith(f"{path}:6: tool 'tool_a': invalid JSON Schema")


def test_input_schema_must_describe_an_object(tmp_path: Path) -> None:
    path = write(tmp_path, "a.yaml", spec().replace("type: object", "type: array"))
    err = only_error([tmp_path])
    assert str(err).startswith(f"{path}:4:")
    assert "object" in err.message


def test_duplicate_tool_names_are_reported(tmp_path: Path) -> None:
    first = write(tmp_path, "a.yaml", spec("same", "/a"))
    second = write(tmp_path, "b.yaml", spec("same", "/b"))
    err = only_error([tmp_path])
    assert str(err).startswith(f"{second}:1:")
    assert "duplicate tool name 'same'" in err.message
    assert f"{first}:1" in err.message


def test_duplicate_route_with_the_same_shape_is_reported(tmp_path: Path) -> None:
    first = write(tmp_path, "a.yaml", spec("one", "/orders/{order_id}"))
    second = write(tmp_path, "b.yaml", "# the same route, another parameter name\n"
                   + spec("two", "/orders/{id}"))
    err = only_error([tmp_path])
    assert str(err).startswith(f"{second}:4:")
    assert "GET /orders/{id}" in err.message
    assert "'one'" in err.message
    assert str(first) in err.message


def test_same_path_with_another_method_is_not_a_duplicate(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", spec("read", "/orders/{order_id}", "GET"))
    write(tmp_path, "b.yaml", spec("write", "/orders/{id}", "PUT"))
    specs = load_specs([tmp_path], UPSTREAMS)
    assert set(specs.tools) == {"read", "write"}


def test_unknown_upstream_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path, "a.yaml", spec().replace("upstream: crm", "upstream: payroll"))
    err = only_error([tmp_path])
    assert str(err).startswith(f"{path}:2:")
    assert "'payroll'" in err.message
    assert "billing, crm, hr" in err.message


def test_remote_ref_is_a_load_error_and_never_fetched(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    touched: list[object] = []

    def no_network(*args: object, **kwargs: object) -> None:
        touched.append(args)
        raise AssertionError("the network was touched")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    path = write(tmp_path, "a.yaml", spec()
                 + "  properties:\n    x: {$ref: 'https://example.com/x.json'}\n")
    err = only_error([tmp_path])
    assert touched == []
    assert str(err).startswith(f"{path}:4:")
    assert "https://example.com/x.json" in err.message
    assert "never fetched" in err.message


def test_unresolvable_local_ref_is_a_load_error(tmp_path: Path) -> None:
    path = write(tmp_path, "a.yaml", spec() + "  properties:\n    x: {$ref: '#/$defs/nope'}\n")
    err = only_error([tmp_path])
    assert err.file == str(path)
    assert "$defs/nope" in err.message


def test_unknown_format_is_a_load_error(tmp_path: Path) -> None:
    path = write(tmp_path, "a.yaml",
                 spec() + "  properties:\n    x: {type: string, format: shoe-size}\n")
    err = only_error([tmp_path])
    assert str(err).startswith(f"{path}:4:")
    assert "shoe-size" in err.message


@pytest.mark.parametrize("route", ["/v1/approvals", "/v1/approvals/{approval_id}"])
def test_reserved_approvals_prefix_is_rejected(tmp_path: Path, route: str) -> None:
    path = write(tmp_path, "a.yaml", spec(path=route, method="POST"))
    err = only_error([tmp_path])
    assert str(err).startswith(f"{path}:3:")
    assert "/v1/approvals" in err.message


def test_forward_path_param_the_route_does_not_define(tmp_path: Path) -> None:
    path = write(tmp_path, "a.yaml",
                 spec(path="/orders/{order_id}") + 'forward: {path: "/v1/{tenant}/{order_id}"}\n')
    err = only_error([tmp_path])
    assert str(err).startswith(f"{path}:6:")
    assert "'tenant'" in err.message


@pytest.mark.parametrize("route", ["orders", "/orders//x", "/orders/../x", "/orders/{id",
                                   "/orders/%2e%2e", "/a/{id}/{id}", "/orders/{Id}"])
def test_bad_route_path_is_rejected(tmp_path: Path, route: str) -> None:
    path = write(tmp_path, "a.yaml", spec(path=route))
    err = only_error([tmp_path])
    assert str(err).startswith(f"{path}:3:")
    assert "tool 'tool_a'" in err.message


def test_yaml_errors_in_a_spec_file_are_reported(tmp_path: Path) -> None:
    path = write(tmp_path, "a.yaml", spec() + "name: again\n")
    err = only_error([tmp_path])
    assert str(err).startswith(f"{path}:6: duplicate key 'name'")


def test_errors_in_a_list_point_at_the_item(tmp_path: Path) -> None:
    path = write(tmp_path, "many.yaml", """\
- name: fine
  upstream: crm
  route: {method: GET, path: /fine}
  input_schema: {type: object}
- name: broken
  upstream: nowhere
  route: {method: GET, path: /broken}
  input_schema: {type: object}
""")
    err = only_error([tmp_path])
    assert str(err).startswith(f"{path}:6:")
    assert "'nowhere'" in err.message


def test_errors_in_several_files_are_reported_together(tmp_path: Path) -> None:
    a = write(tmp_path, "a.yaml", spec("a", "/a").replace("upstream: crm", "upstream: nope"))
    b = write(tmp_path, "b.yaml", spec("b", "/b") + "tier: purple\n")
    c = write(tmp_path, "c.yaml", spec("c", "/c") + "  properties:\n    x: {format: nope}\n")
    d = write(tmp_path, "d.yaml", "name: d\n  bad: [\n")
    write(tmp_path, "e.yaml", spec("e", "/e"))
    errors = load_errors([tmp_path])
    where = {(e.file, e.line) for e in errors}
    assert (str(a), 2) in where
    assert (str(b), 6) in where
    assert (str(c), 4) in where
    assert any(e.file == str(d) and e.line is not None for e in errors)
    assert len(errors) == 4


# ---------------------------------------------------------------------------- compile_schema


def test_format_checked_schema_rejects_a_bad_email_and_date_time() -> None:
    v = compile_schema({
        "type": "object",
        "properties": {"email": {"type": "string", "format": "email"},
                       "at": {"type": "string", "format": "date-time"}},
    })
    assert v.is_valid({"email": "a@example.com", "at": "2024-05-01T12:00:00Z"})
    assert not v.is_valid({"email": "no-at-sign"})
    assert not v.is_valid({"at": "yesterday"})
    assert not v.is_valid({"at": "2024-13-01T12:00:00Z"})


def test_local_ref_into_defs_works() -> None:
    v = compile_schema({
        "type": "object",
        "$defs": {"money": {"type": "number", "exclusiveMinimum": 0}},
        "properties": {"amount": {"$ref": "#/$defs/money"}},
    })
    assert v.is_valid({"amount": 5})
    assert not v.is_valid({"amount": -1})
    assert not v.is_valid({"amount": "5"})


def test_local_ref_in_a_spec_file_works(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", spec() + """\
  $defs:
    email: {type: string, format: email}
  properties:
    to: {$ref: "#/$defs/email"}
""")
    tool = load_specs([tmp_path], UPSTREAMS).tools["tool_a"]
    assert tool.input_validator.is_valid({"to": "a@example.com"})
    assert not tool.input_validator.is_valid({"to": "nobody"})


def test_compile_schema_rejects_remote_ref_without_network(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("the network was touched")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(ValueError, match="never fetched"):
        compile_schema({"$ref": "https://example.com/x.json"})


def test_compile_schema_rejects_an_unknown_format() -> None:
    with pytest.raises(ValueError, match="shoe-size"):
        compile_schema({"type": "string", "format": "shoe-size"})


def test_compile_schema_rejects_an_invalid_schema() -> None:
    with pytest.raises(ValueError, match="invalid JSON Schema"):
        compile_schema({"type": "object", "minProperties": -1})


# ------------------------------------------------------------------------------- pii_pointers


def test_pii_pointers_top_level_and_nested() -> None:
    schema = {
        "type": "object",
        "properties": {
            "email": {"type": "string", "x-pii": True},
            "note": {"type": "string"},
            "flagged_false": {"type": "string", "x-pii": False},
            "contact": {"type": "object",
                        "properties": {"phone": {"type": "string", "x-pii": True}}},
            "a/b~c": {"type": "string", "x-pii": True},
        },
    }
    assert sorted(pii_pointers(schema)) == ["/a~1b~0c", "/contact/phone", "/email"]


@pytest.mark.parametrize("nested", [
    {"properties": {"phone": {"type": "string", "x-pii": True}}},
    {"type": ["object", "null"], "properties": {"phone": {"type": "string", "x-pii": True}}},
], ids=["object-without-type", "nullable-object"])
def test_pii_pointers_follow_every_nested_object(nested: dict[str, Any]) -> None:
    # A nested object schema need not say `type: object`; its x-pii fields must still be
    # redacted from the audit record.
    schema = {"type": "object", "properties": {"contact": nested}}
    assert pii_pointers(schema) == ["/contact/phone"]


SPEND_SPEC = """\
name: pay
upstream: billing
route: {{method: POST, path: /pay}}
spend: amount
input_schema:
  type: object
  required: {required}
  properties:
    amount: {amount}
"""


@pytest.mark.parametrize(("required", "amount", "why"), [
    ("[]", "{type: number, minimum: 0}", "must be required"),
    ("[amount]", "{minimum: 0}", "must have type number"),
    ("[amount]", "{type: string}", "must have type number"),
    ("[amount]", "{type: [number, string], minimum: 0}", "must have type number"),
    ("[amount]", "{type: number}", "must not be negative"),
    ("[amount]", "{type: number, minimum: -5}", "must not be negative"),
    ("[amount]", "{type: number, exclusiveMinimum: -1}", "must not be negative"),
    ("[other]", "{type: number, minimum: 0}", "must be required"),
])
def test_a_spend_argument_must_be_a_required_non_negative_number(
        tmp_path: Path, required: str, amount: str, why: str) -> None:
    """A missing or non-numeric amount would count as nothing; a negative one would lower
    the run's spend."""
    path = write(tmp_path, "pay.yaml", SPEND_SPEC.format(required=required, amount=amount))
    error = only_error([path])
    assert why in error.message
    assert error.line == 4  # the spend key


@pytest.mark.parametrize("amount", ["{type: number, minimum: 0}",
                                    "{type: integer, exclusiveMinimum: 0}",
                                    "{type: number, minimum: 0.01, maximum: 500}"])
def test_a_well_declared_spend_argument_loads(tmp_path: Path, amount: str) -> None:
    path = write(tmp_path, "pay.yaml", SPEND_SPEC.format(required="[amount]", amount=amount))
    assert load_specs([path], UPSTREAMS).tools["pay"].spend == "amount"


# ------------------------------------------------------------------------------ revisions

TOOL = """\
# a comment
name: tool_a
upstream: crm
route: {method: GET, path: /a}
input_schema:
  type: object
  properties: {q: {type: string, maxLength: 10}, n: {type: integer, maximum: 5}}
"""
# The same spec, laid out otherwise: flow style, other key order, no comment.
TOOL_REFORMATTED = """\
input_schema: {properties: {n: {maximum: 5, type: integer}, q: {maxLength: 10, type: string}},
               type: object}
route: {path: /a, method: GET}
upstream: crm
name: tool_a
"""


def test_each_tool_has_a_revision_of_its_own_spec(tmp_path: Path) -> None:
    """16 hex of SHA-256 over the spec as loaded, in canonical JSON: stable across loads and
    layouts, changed by any change of the tool's own spec and by nothing else."""
    write(tmp_path / "one", "a.yaml", TOOL)
    write(tmp_path / "one", "b.yaml", spec("tool_b", "/b"))
    first = load_specs([tmp_path / "one"], UPSTREAMS).tools
    revision = first["tool_a"].revision
    assert len(revision) == 16 and int(revision, 16) >= 0
    assert load_specs([tmp_path / "one"], UPSTREAMS).tools["tool_a"].revision == revision
    write(tmp_path / "two", "a.yaml", TOOL_REFORMATTED)
    write(tmp_path / "two", "b.yaml", spec("tool_b", "/b2"))
    second = load_specs([tmp_path / "two"], UPSTREAMS).tools
    assert second["tool_a"].revision == revision, "layout and comments do not count"
    assert second["tool_b"].revision != first["tool_b"].revision
    write(tmp_path / "three", "a.yaml", TOOL.replace("maxLength: 10", "maxLength: 11"))
    changed = load_specs([tmp_path / "three"], UPSTREAMS).tools["tool_a"]
    assert changed.revision != revision
    assert first["tool_b"].revision != revision


def test_a_spec_with_an_integer_json_cannot_hold_has_a_revision(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", TOOL.replace("maximum: 5", "maximum: 100000000000000000000000"))
    write(tmp_path / "b", "a.yaml", TOOL.replace("maximum: 5",
                                                 "maximum: 100000000000000000000001"))
    one = load_specs([tmp_path / "a.yaml"], UPSTREAMS).tools["tool_a"].revision
    assert one == load_specs([tmp_path / "a.yaml"], UPSTREAMS).tools["tool_a"].revision
    assert one != load_specs([tmp_path / "b"], UPSTREAMS).tools["tool_a"].revision


@pytest.mark.parametrize(("where", "schema"), [
    ("/additionalProperties", "additionalProperties: {type: string, x-pii: true}"),
    ("/patternProperties/^e", "patternProperties: {'^e': {type: string, x-pii: true}}"),
    ("/properties/cards/prefixItems/0",
     "properties: {cards: {type: array, prefixItems: [{type: string, x-pii: true}]}}"),
    ("/then/properties/email", "if: {required: [kind]}\n  then: {properties: "
                               "{email: {type: string, x-pii: true}}}"),
])
def test_an_x_pii_mark_redaction_cannot_follow_is_refused(tmp_path: Path, where: str,
                                                          schema: str) -> None:
    error = only_error([write(tmp_path, "a.yaml", spec() + f"  {schema}\n")])
    assert f"x-pii at {where} cannot be redacted" in error.message
    assert error.line is not None


def test_marks_redaction_follows_load(tmp_path: Path) -> None:
    text = spec() + ("  properties:\n    email: {$ref: '#/$defs/email'}\n"
                     "    items: {type: array, items: {properties: {card: {x-pii: true}}}}\n"
                     "  $defs: {email: {type: string, x-pii: true}}\n")
    (tool,) = load_specs([write(tmp_path, "a.yaml", text)], UPSTREAMS).tools.values()
    assert tool.pii_pointers == ("/email", "/items/*/card")
