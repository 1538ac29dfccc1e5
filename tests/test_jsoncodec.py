"""smartgen.jsoncodec: orjson behind json's interface, the standard library where orjson
refuses."""

from __future__ import annotations

import json

import pytest

from smartgen.kit import jsoncodec


@pytest.mark.parametrize(
    "value",
    [
        {"jobId": "a", "status": "completed", "usage": {"total_tokens": 46, "cost": 0.0012}},
        ["job_completed", {"generatedContent": "# Título\n\n- “quoted” ✓ \u2028 end"}],
        {"nested": [[], {}, None, True, False, -1, 1.5, "x" * 10_000]},
        "plain",
        0,
    ],
)
def test_round_trip_matches_the_standard_library(value: object) -> None:
    text = jsoncodec.dumps(value, separators=(",", ":"))
    assert text == json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    assert jsoncodec.loads(text) == jsoncodec.loads(text.encode()) == value


def test_what_orjson_refuses_goes_to_the_standard_library() -> None:
    assert jsoncodec.dumps({1: "a"}) == '{"1":"a"}'  # non-string keys
    assert jsoncodec.dumps(2**70) == str(2**70)  # beyond 64 bits
    assert jsoncodec.loads('"\\ud800"') == "\ud800"  # a lone surrogate
    assert jsoncodec.loads(memoryview(b'{"a": 1}')) == {"a": 1}


@pytest.mark.parametrize("bad", ["", "nope", b"\xff", '{"a": 1', "[1, 2,]"])
def test_bad_input_is_a_value_error(bad: str | bytes) -> None:
    with pytest.raises(ValueError):
        jsoncodec.loads(bad)


def test_what_nothing_can_encode_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        jsoncodec.dumps({"x": object()})
