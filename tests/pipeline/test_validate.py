"""Stage `validate`: JSON Schema 2020-12, one detail per failing argument."""

from __future__ import annotations

import pytest

from gateway.core.errors import SchemaInvalid
from gateway.pipeline.validate import validate
from gateway.runtime import Runtime
from tests.support import context


def counted(rt: Runtime, result: str) -> float | None:
    return rt.metrics.registry.get_sample_value(
        "toolgate_schema_checks_total", {"tool": "echo_post", "result": result})


async def test_valid_arguments_pass_and_are_counted(rt: Runtime) -> None:
    await validate(context(rt, "POST", "/echo/items", body={"name": "a", "count": 1}), rt)
    assert counted(rt, "valid") == 1


async def test_each_failing_argument_is_a_detail(rt: Runtime) -> None:
    ctx = context(rt, "POST", "/echo/items", body={"count": -1, "colour": "red"})
    with pytest.raises(SchemaInvalid) as info:
        await validate(ctx, rt)
    details = {(d["path"], d["keyword"]) for d in info.value.extra["details"]}
    assert details == {("/name", "required"), ("/count", "minimum"),
                       ("/colour", "additionalProperties")}
    assert counted(rt, "invalid") == 1
