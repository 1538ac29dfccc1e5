"""The per-user event log: every event a user can see, numbered and kept for replay.

Each event gets the next number of its user's counter (`seq`, strictly increasing, never
reused) and goes into the user's Redis stream as entry `0-<seq>`, so "everything after
`seq` N" is one `XRANGE` from `(0-N`. The log is bounded by count (`XADD MAXLEN ~`) and by
age (entries older than the limit are trimmed as new ones arrive, and an idle user's log
expires). The counter never expires: numbering goes on after a log is trimmed or expires,
so a client holding an old number learns that it missed events (`complete: false`).

Socket.IO, `GET /events` and `sync` all read from here; delivery itself stays at most once
(pub/sub), and the log is how a client catches up. A job's final events are logged once per
run (their "once" key): a worker that takes over a crashed one's job announces the final
state again, and only what the crashed one did not log goes out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from smartgen.kit import jsoncodec

# KEYS: stream, counter, once-hash per user (in threes). ARGV: max length, max age in ms,
# now in ms, a pub/sub channel and the head of a message ('' and '' for none), then per
# event: the user's number (1-based), event name, payload JSON, and a "once" key ('' for
# none). An event whose once key was logged already is not logged again: its number is 0
# (a final event announced again after a worker's crash). With a channel, the message is
# published once some event got a number: the head, then the numbers (`"seqs":[…]}`).
_APPEND = """
local maxlen, maxage, now = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local out, touched, numbered = {}, {}, false
for i = 6, #ARGV, 4 do
  local u = tonumber(ARGV[i])
  local once = ARGV[i + 3]
  if once ~= '' and redis.call('HEXISTS', KEYS[3 * u], once) == 1 then
    out[#out + 1] = 0
  else
    local seq = redis.call('INCR', KEYS[3 * u - 1])
    redis.call('XADD', KEYS[3 * u - 2], 'MAXLEN', '~', maxlen, '0-' .. seq,
               'e', ARGV[i + 1], 'd', ARGV[i + 2], 't', now)
    if once ~= '' then
      redis.call('HSET', KEYS[3 * u], once, seq)
      redis.call('PEXPIRE', KEYS[3 * u], maxage)
    end
    out[#out + 1] = seq
    touched[u] = true
    numbered = true
  end
end
if ARGV[4] ~= '' and numbered then
  redis.call('PUBLISH', ARGV[4], ARGV[5] .. ',"seqs":[' .. table.concat(out, ',') .. ']}')
end
for u, _ in pairs(touched) do
  local stream = KEYS[3 * u - 2]
  local oldest = redis.call('XRANGE', stream, '-', '+', 'COUNT', 16)
  local cut = nil
  for _, entry in ipairs(oldest) do
    if now - tonumber(entry[2][6]) <= maxage then break end
    cut = entry[1]
  end
  if cut then
    redis.call('XTRIM', stream, 'MINID', '0-' .. (tonumber(string.match(cut, '%d+$')) + 1))
  end
  redis.call('PEXPIRE', stream, maxage)
end
return out
"""


LogEntry = tuple[str, str, Any, str | None]  # (user id, event name, payload, once key)


@dataclass(frozen=True, slots=True)
class LoggedEvent:
    seq: int
    event: str
    data: Any

    def as_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "event": self.event, "data": self.data}


@dataclass(frozen=True, slots=True)
class Replay:
    events: list[LoggedEvent]
    complete: bool  # False: events after `after` were trimmed, or more than `limit` remain
    last_seq: int  # the newest number given to this user so far


class EventLog:
    def __init__(
        self, client: aioredis.Redis, prefix: str, *, max_events: int, max_age_seconds: float
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._max_events = max_events
        self._max_age_ms = max(1, int(max_age_seconds * 1000))
        self._append = client.register_script(_APPEND)

    def _keys(self, user_id: str) -> tuple[str, str, str]:
        base = f"{self._prefix}:events:{user_id}"
        return base, base + ":seq", base + ":once"

    async def forget(self, user_id: str) -> None:
        """Drop the user's log, counter included (the account is deleted)."""
        await self._client.delete(*self._keys(user_id))

    async def append(
        self, events: list[LogEntry], now_ms: int, *, publish: tuple[str, str] | None = None
    ) -> list[int]:
        """Log (user id, event name, payload, once key or None) in order; each one's
        number, in order, or 0 for an event whose once key was logged before.
        `publish` (channel, head): in the same call, publish the head followed by the
        numbers, `head + ',"seqs":[n, …]}'`, if any event got one (`batched_relay`)."""
        users: dict[str, int] = {}
        keys: list[str] = []
        channel, head = publish or ("", "")
        args: list[Any] = [self._max_events, self._max_age_ms, now_ms, channel, head]
        for user_id, event, payload, once in events:
            if user_id not in users:
                users[user_id] = len(users) + 1
                keys.extend(self._keys(user_id))
            args.extend((users[user_id], event, jsoncodec.dumps(payload), once or ""))
        return [int(seq) for seq in await self._append(keys=keys, args=args)]

    async def read(self, user_id: str, after: int, *, limit: int) -> Replay:
        """The user's events numbered above `after`, oldest first, at most `limit`."""
        stream, counter, _ = self._keys(user_id)
        async with self._client.pipeline(transaction=True) as pipe:  # one view of both
            pipe.get(counter)
            pipe.xrange(stream, f"(0-{max(0, after)}", "+", count=limit)
            last, entries = await pipe.execute()
        last_seq = int(last or 0)
        events = []
        for entry_id, fields in entries:
            seq = int(_text(entry_id).rsplit("-", 1)[1])
            values = {_text(k): v for k, v in fields.items()}
            events.append(LoggedEvent(seq, _text(values["e"]), jsoncodec.loads(values["d"])))
        # Complete: nothing between `after` and the first event returned was trimmed, and
        # nothing is left after the last one. A number beyond the counter comes from a
        # Redis that lost its data since.
        if after > last_seq:
            complete = False
        elif not events:
            complete = after == last_seq
        else:
            complete = events[0].seq == after + 1 and events[-1].seq == last_seq
        return Replay(events, complete, last_seq)

    async def last_seq(self, user_id: str) -> int:
        return int(await self._client.get(self._keys(user_id)[1]) or 0)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
