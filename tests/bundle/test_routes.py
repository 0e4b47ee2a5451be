"""`gateway.bundle.routes`: matching on the raw path, parameter decoding, rendering one segment."""

from __future__ import annotations

import pytest

from gateway.bundle.routes import PathTemplate, RouteTable, decode_params
from gateway.core.errors import InvalidArguments, ReasonCode


def table(*routes: tuple[str, str, str]) -> RouteTable[str]:
    t: RouteTable[str] = RouteTable()
    for method, path, target in routes:
        assert t.add(method, PathTemplate.parse(path), target) is None
    return t


ROUTES = table(
    ("POST", "/billing/refunds", "refund"),
    ("GET", "/billing/orders/{order_id}", "order"),
    ("GET", "/billing/orders/latest", "latest"),
    ("PUT", "/payroll/employees/{employee_id}/bank-account", "bank"),
    ("GET", "/admin", "admin"),
    ("GET", "/", "root"),
)


# ------------------------------------------------------------------------------ PathTemplate


def test_parse_literals_and_parameters() -> None:
    t = PathTemplate.parse("/payroll/employees/{employee_id}/bank-account")
    assert t.segments == ("payroll", "employees", "", "bank-account")
    assert t.params == (None, None, "employee_id", None)
    assert t.names == ("employee_id",)
    assert t.shape == ("payroll", "employees", "{}", "bank-account")


def test_shape_ignores_parameter_names() -> None:
    assert PathTemplate.parse("/o/{a}/x").shape == PathTemplate.parse("/o/{b}/x").shape


@pytest.mark.parametrize("text", [
    "no-slash", "/a//b", "/a/", "/a/./b", "/a/../b", "/a/%2e%2e", "/a/b%2Fc",
    "/a/{x}/{x}", "/a/{X}", "/a/{x", "/a/pre{x}", "/a/b c", "/a/\\b",
])
def test_parse_rejects_paths_that_are_not_plain_segments(text: str) -> None:
    with pytest.raises(ValueError, match="path"):
        PathTemplate.parse(text)


def test_render_encodes_a_value_as_exactly_one_segment() -> None:
    t = PathTemplate.parse("/v1/items/{item_id}/notes")
    assert t.render({"item_id": "a b/c"}) == "/v1/items/a%20b%2Fc/notes"
    assert t.render({"item_id": "..?#%"}) == "/v1/items/..%3F%23%25/notes"
    assert t.render({"item_id": "café"}) == "/v1/items/caf%C3%A9/notes"
    assert t.render({"item_id": "back\\slash"}) == "/v1/items/back%5Cslash/notes"


def test_render_of_literals_only() -> None:
    assert PathTemplate.parse("/v1/refunds").render({}) == "/v1/refunds"
    assert PathTemplate.parse("/").render({}) == "/"


def test_decoded_parameter_renders_back_to_the_raw_segment() -> None:
    route = PathTemplate.parse("/orders/{order_id}")
    forward = PathTemplate.parse("/v1/orders/{order_id}")
    values = decode_params(route, ["ord%20%C3%A91"])
    assert values == {"order_id": "ord é1"}
    assert forward.render(values) == "/v1/orders/ord%20%C3%A91"


# -------------------------------------------------------------------------------- matching


def test_exact_literal_match() -> None:
    assert ROUTES.match("POST", "/billing/refunds") == ("refund", [])
    assert ROUTES.match("GET", "/admin") == ("admin", [])
    assert ROUTES.match("GET", "/") == ("root", [])


def test_method_must_match() -> None:
    assert ROUTES.match("GET", "/billing/refunds") is None
    assert ROUTES.match("post", "/billing/refunds") is None


def test_parameter_capture_keeps_the_raw_segment() -> None:
    assert ROUTES.match("GET", "/billing/orders/ord_1234") == ("order", ["ord_1234"])
    assert ROUTES.match("GET", "/billing/orders/a%20b") == ("order", ["a%20b"])
    assert ROUTES.match("PUT", "/payroll/employees/emp_9/bank-account") == ("bank", ["emp_9"])


def test_literal_beats_a_parameter_at_the_same_level() -> None:
    assert ROUTES.match("GET", "/billing/orders/latest") == ("latest", [])
    # ... whichever was added first.
    t = table(("GET", "/x/latest", "literal"), ("GET", "/x/{id}", "param"))
    u = table(("GET", "/x/{id}", "param"), ("GET", "/x/latest", "literal"))
    assert t.match("GET", "/x/latest") == ("literal", [])
    assert u.match("GET", "/x/latest") == ("literal", [])
    assert u.match("GET", "/x/other") == ("param", ["other"])


def test_a_dead_end_literal_falls_back_to_the_parameter() -> None:
    t = table(("GET", "/a/b/d", "literal"), ("GET", "/a/{x}/c", "param"))
    assert t.match("GET", "/a/b/c") == ("param", ["b"])
    assert t.match("GET", "/a/b/d") == ("literal", [])


def test_literal_of_the_same_text_with_another_method_does_not_hide_the_parameter() -> None:
    t = table(("POST", "/x/latest", "literal"), ("GET", "/x/{id}", "param"))
    assert t.match("GET", "/x/latest") == ("param", ["latest"])


@pytest.mark.parametrize("raw", [
    "//billing/refunds",         # empty first segment
    "/billing//refunds",         # double slash
    "/billing/refunds/",         # trailing slash
    "/billing/refunds/extra",    # trailing extra segment
    "/billing/refunds/extra/more",
    "/billing",                  # a prefix of a route
    "/billing/../admin",         # dot segments are never resolved
    "/billing/./refunds",
    "/billing/%2e%2e/admin",
    "/%2e%2e/admin",
    "/billing%2Frefunds",        # encoded slash in a literal position
    "/billing%2frefunds",
    "/billing/refund%73",        # an encoded unreserved character is not the literal
    "/Billing/refunds",          # case matters
    "billing/refunds",           # not absolute
    "",
])
def test_paths_that_match_no_route(raw: str) -> None:
    assert ROUTES.match("POST", raw) is None
    assert ROUTES.match("GET", raw) in (None, ("root", []))
    assert ROUTES.match("GET", raw) != ("admin", [])


def test_empty_segment_never_binds_a_parameter() -> None:
    assert ROUTES.match("GET", "/billing/orders/") is None
    assert ROUTES.match("GET", "/billing/orders//") is None
    assert ROUTES.match("PUT", "/payroll/employees//bank-account") is None


def test_dot_segments_in_a_parameter_position_reach_decode_params() -> None:
    # The table matches raw segments; `..` binds as a raw value that decode_params refuses.
    found = ROUTES.match("GET", "/billing/orders/..")
    assert found == ("order", [".."])
    with pytest.raises(InvalidArguments):
        decode_params(PathTemplate.parse("/billing/orders/{order_id}"), found[1])


def test_add_returns_the_existing_target_for_a_duplicate_shape() -> None:
    t: RouteTable[str] = RouteTable()
    assert t.add("GET", PathTemplate.parse("/orders/{order_id}"), "first") is None
    assert t.add("GET", PathTemplate.parse("/orders/{id}"), "second") == "first"
    assert t.add("POST", PathTemplate.parse("/orders/{id}"), "post") is None
    assert t.match("GET", "/orders/o1") == ("first", ["o1"])
    assert t.match("POST", "/orders/o1") == ("post", ["o1"])


# ---------------------------------------------------------------------------- decode_params

ONE = PathTemplate.parse("/items/{item_id}")


def test_decode_params_decodes_once() -> None:
    assert decode_params(ONE, ["a%20b"]) == {"item_id": "a b"}
    assert decode_params(ONE, ["caf%C3%A9"]) == {"item_id": "café"}
    assert decode_params(ONE, ["%252F"]) == {"item_id": "%2F"}   # once, not twice
    assert decode_params(ONE, ["..."]) == {"item_id": "..."}
    assert decode_params(ONE, ["a.b"]) == {"item_id": "a.b"}


def test_decode_params_maps_names_in_order() -> None:
    t = PathTemplate.parse("/t/{tenant}/o/{order_id}")
    assert decode_params(t, ["acme", "o1"]) == {"tenant": "acme", "order_id": "o1"}


@pytest.mark.parametrize("raw", [
    "%2F", "a%2Fb", "%2f", "%2e%2e", "%2E%2E", "%2e", ".", "..", ".%2e",
    "%5C", "a%5Cb", "\\", "%00", "a%00b", "%0a", "%0D%0A", "%09", "%7f",
])
def test_decode_params_refuses_values_that_are_not_one_segment(raw: str) -> None:
    with pytest.raises(InvalidArguments) as info:
        decode_params(ONE, [raw])
    assert info.value.status == 400
    assert info.value.code is ReasonCode.INVALID_ARGUMENTS
    assert "item_id" in info.value.message


@pytest.mark.parametrize("raw", ["%ff", "a%C3", "%C3%28", "%ED%A0%80"])
def test_decode_params_refuses_invalid_utf8(raw: str) -> None:
    with pytest.raises(InvalidArguments, match="UTF-8") as info:
        decode_params(ONE, [raw])
    assert info.value.code is ReasonCode.INVALID_ARGUMENTS


def test_decode_params_refuses_c1_control_characters() -> None:
    # U+0085 (NEXT LINE) is a control character (Unicode category Cc) like U+000A.
    with pytest.raises(InvalidArguments):
        decode_params(ONE, ["a%C2%85b"])


def test_refusal_has_machine_readable_details() -> None:
    with pytest.raises(InvalidArguments) as info:
        decode_params(ONE, ["%2e%2e"])
    body = info.value.body("req-1")
    assert body["error"]["code"] == "invalid_arguments"
    assert body["error"]["request_id"] == "req-1"
    assert body["error"]["details"][0]["path"] == "/item_id"
