"""JSON through orjson, behind the standard library's `dumps`/`loads` interface.

python-socketio (its packets and the Redis manager's messages) and the LLM client encode
and decode JSON for every event and every call; orjson does it several times faster than
`json`. Output is compact UTF-8 text, as `json.dumps(..., separators=(",", ":"),
ensure_ascii=False)` writes it. What orjson refuses and the standard library takes
(non-string keys, integers beyond 64 bits to encode, lone surrogates to decode) goes to
the standard library, and errors are the same kinds: TypeError to encode, ValueError to
decode. Two differences remain, neither reachable by our payloads: NaN and infinities
encode as `null` (the standard library writes `NaN`, which is not JSON), and an integer
beyond 64 bits decodes as a float (as JavaScript reads it).
"""

from __future__ import annotations

import json
from typing import Any

import orjson


def dumps(obj: Any, **_options: Any) -> str:
    """Compact JSON text (`separators` and similar options are what orjson writes anyway)."""
    try:
        return orjson.dumps(obj).decode()
    except TypeError:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def loads(data: str | bytes | bytearray | memoryview, **_options: Any) -> Any:
    try:
        return orjson.loads(data)
    except ValueError:
        return json.loads(bytes(data) if isinstance(data, memoryview) else data)
