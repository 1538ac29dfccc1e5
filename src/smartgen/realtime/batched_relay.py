"""Batched relay of events between processes (`REALTIME_BATCHED_RELAY`, on by default).

Replaces python-socketio's per-event relay (one pub/sub message per `emit`, each decoded
and encoded by every API process, whether or not the room has a client there) with:
- one published message per batch of events (`BATCH_METHOD`): every process decodes it
  once, not once per event;
- a process skipping its own batches undecoded (its clients had them before publishing);
- events for a room with no client in this process skipped before python-socketio encodes
  them (with N API processes, most events).
It reaches into the manager's internals (`_handle_emit`, `rooms`), which is why it lives
here alone; with the setting off, `bus.RedisManager` uses the stock `emit`. Either way every
process understands batches, so processes with the setting on and off can share a channel.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Final

from smartgen.realtime.events import Event, numbered, seq_room, with_seq

if TYPE_CHECKING:
    from smartgen.realtime.bus import RedisManager

log = logging.getLogger("smartgen.socketio")

# A published message carrying several manager messages; processes that do not know it
# ignore it, as python-socketio ignores any unknown method.
BATCH_METHOD: Final = "smartgen_batch"


def manager_messages(codec: Any, data: bytes | str) -> list[dict[str, Any]]:
    """The manager messages in one published message, decoded once."""
    try:
        decoded = codec.loads(data)
    except ValueError:
        log.warning("ignoring a pub/sub message that is not JSON")
        return []
    if not isinstance(decoded, dict):
        return []
    if decoded.get("method") == BATCH_METHOD:
        messages = decoded.get("messages")
        if not isinstance(messages, list):
            return []
        seqs = decoded.get("seqs")
        if isinstance(seqs, list):  # published by the event log's call (`publish_plan`)
            return _numbered(messages, seqs)
        return [m for m in messages if isinstance(m, dict)]
    return [decoded]


def _numbered(messages: list[Any], seqs: list[Any]) -> list[dict[str, Any]]:
    """The batch's messages with the numbers the log gave them, as `EventPublisher` numbers
    its own: `seq` on each message, and in each payload but the seed's; an event numbered 0
    (logged before) is not delivered again."""
    if len(seqs) != len(messages):
        log.warning("ignoring a batch whose numbers do not match its events")
        return []
    out: list[dict[str, Any]] = []
    for message, seq in zip(messages, seqs, strict=True):
        if not isinstance(message, dict) or isinstance(seq, bool) or not isinstance(seq, int):
            continue
        if seq <= 0:
            continue
        data = message.get("data")
        if isinstance(data, list) and data and isinstance(data[0], dict):
            message["data"] = [numbered(str(message.get("event")), data[0], seq), *data[1:]]
        message["seq"] = seq
        out.append(message)
    return out


def own_batch_prefix(codec: Any, host_id: str) -> bytes:
    """How this process's batches begin (`emit_batch` writes host_id right after method)."""
    head: str = codec.dumps({"method": BATCH_METHOD, "host_id": host_id})
    return head[:-1].encode() + b","


def _has_clients(manager: RedisManager, namespace: str, room: str) -> bool:
    return bool(manager.rooms.get(namespace, {}).get(room))


def reaches_a_client(manager: RedisManager, message: dict[str, Any]) -> bool:
    """Whether a manager message can reach a client connected to this process (in the
    user's room or its seq room). Anything but an emit to one room passes."""
    room = message.get("room")
    if message.get("method") != "emit" or not isinstance(room, str):
        return True
    namespace = message.get("namespace") or "/"
    return _has_clients(manager, namespace, room) or _has_clients(
        manager, namespace, seq_room(room)
    )


def is_event(message: dict[str, Any]) -> bool:
    """An emit to one room, with no callback (all our events)."""
    return (
        message.get("method") == "emit"
        and isinstance(message.get("room"), str)
        and not message.get("callback")
        and isinstance(message.get("data"), list)
        and bool(message["data"])
    )


async def deliver_if_here(manager: RedisManager, message: dict[str, Any]) -> None:
    """Another process's event: to this process's clients, if it has any in its rooms;
    skipped before python-socketio encodes anything otherwise."""
    if reaches_a_client(manager, message):
        await deliver(manager, message)


async def deliver(manager: RedisManager, message: dict[str, Any]) -> None:
    """An event message to this process's clients: the user's room as sent, and the seq
    room with `seq` in the seed's payload too (the message carries its `seq`)."""
    namespace = message.get("namespace") or "/"
    room = message["room"]
    if _has_clients(manager, namespace, room):
        await manager._handle_emit(message)
    numbered = seq_room(room)
    if _has_clients(manager, namespace, numbered):
        data = message["data"]
        payload = with_seq(message["event"], data[0], message.get("seq"))
        await manager._handle_emit({**message, "room": numbered, "data": [payload]})


def _message(manager: RedisManager, event: Event) -> dict[str, Any]:
    name, payload, room, seq = event
    return {
        "method": "emit",
        "event": name,
        "data": [payload],
        "binary": False,
        "namespace": "/",
        "room": room,
        "skip_sid": None,
        "callback": None,
        "host_id": manager.host_id,
        "seq": seq,
    }


async def deliver_here(manager: RedisManager, events: list[Event]) -> None:
    """Events to this process's own clients (and `GET /events` listeners), in order (a
    worker's manager, write-only, has none)."""
    if not manager.write_only:
        await _deliver_messages_here(manager, [_message(manager, e) for e in events])


async def _deliver_messages_here(manager: RedisManager, messages: list[dict[str, Any]]) -> None:
    if manager.write_only:
        return
    for message in messages:
        manager.local.offer(message)
        await deliver_if_here(manager, message)


def _batch_text(manager: RedisManager, messages: list[dict[str, Any]]) -> str:
    # host_id first: this process recognises its own batches by their first bytes and
    # skips them undecoded (its clients had them before they were published).
    text: str = manager.json.dumps(
        {"method": BATCH_METHOD, "host_id": manager.host_id, "messages": messages}
    )
    return text


async def emit_batch(manager: RedisManager, events: list[Event]) -> None:
    """Emit to rooms like `emit` (no callbacks, JSON payloads), in order: this process's
    own clients first, then every other process through one published message."""
    if not events:
        return
    messages = [_message(manager, e) for e in events]
    await _deliver_messages_here(manager, messages)
    await manager.publish_text(_batch_text(manager, messages))


def publish_plan(manager: RedisManager, events: list[Event]) -> tuple[str, str]:
    """(channel, head) for the event log to publish `events` in the call that numbers
    them: the batch message without its closing brace, to which the log adds
    `,"seqs":[…]}` (each event's number, 0 for one logged before: not delivered)."""
    return manager.channel, _batch_text(manager, [_message(manager, e) for e in events])[:-1]
