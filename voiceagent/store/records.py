"""What the items in the table mean: the one mapping between domain values and store items.

Every backend stores exactly these items, so one contract suite covers them all. Attribute
names and encodings follow the original Node sample, so voiceagent runs against a table that
sample filled: a session's ``systemPrompt`` is a list of ``{"text"}`` blocks, its
``userContext`` the caller's profile item. Use-case and profile items, the configuration an
operator loads, are mapped in ``config_records``; this module maps what the calls write.

Keys (pk / sk, GSI pk1 / sk1):

    use case       name        configuration                     use-case / name
    profile        +E.164      profile                           profile / +E.164
    call session   CallSid     connection                        call / <ISO UTC>#<CallSid>
    socket end     CallSid     socketClosed:: / socketWritten::<generation:6>
    socket refused CallSid     socketRefused::<generation:6>::<claim nonce>
    relay answered CallSid     relayAnswered::<SessionId>, relayEnded (agentEnd: `end` taken)
    call seen      CallSid     connectionSeen
    chat message   CallSid     chat::<epoch ms:13>::<seq:6>  (a tombstone: chat {}, dropped)
    order          owner       restaurantOrder::<sid[-4:]>::<s>  restaurantOrder / to-number
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

from voiceagent.errors import ConfigError
from voiceagent.store.base import Item, Version, describe_key, expect_sk
from voiceagent.store.config_records import PROFILE_SK, profile_from_item, profile_item
from voiceagent.usecases import Profile

log = logging.getLogger(__name__)

SESSION_SK = "connection"
CHAT_PREFIX = "chat::"
SOCKET_CLOSED_PREFIX = "socketClosed::"      # a socket's end, written at once
SOCKET_WRITTEN_PREFIX = "socketWritten::"    # and behind its last messages
SOCKET_REFUSED_PREFIX = "socketRefused::"    # a socket refused, its claim given up undecided
CLAIM_ATTRIBUTE = "claim"                    # a claimed session's nonce (``session_claims``)
RELAY_PREFIX = "relay"                       # both items below
RELAY_ANSWERED_PREFIX = "relayAnswered::"    # a failed relay session /action answered
RELAY_ENDED_SK = "relayEnded"                # the call's last relay session is over
AGENT_END_ATTRIBUTE = "agentEnd"             # on it: the agent sent `end` (its handoffData)
CALL_SEEN_SK = "connectionSeen"              # /twiml prepared this call once (kept long)
ORDER_PREFIX = "restaurantOrder::"

CALL_INDEX = "call"                  # pk1 values: list one kind of item through the GSI
ORDER_INDEX = "restaurantOrder"

KEY_ATTRIBUTES = frozenset({"pk", "sk", "pk1", "sk1", "expireAt"})
_CHAT_SK = re.compile(r"^chat::(\d+)(?:::(\d+))?")


# ------------------------------------------------------------------ call sessions


@dataclass(frozen=True, slots=True)
class CallSession:
    """What ``/twiml`` decided for one call, so its socket (maybe on another process) can
    pick the call up: the rendered prompt, the model, who called whom."""

    call_sid: str
    token: str                       # minted per call, checked against the socket's setup
    use_case: str
    system_prompt: str
    model_id: str
    caller: str
    called: str
    profile: Profile | None
    greeting: str | None
    created_at: float                # epoch seconds
    generation: int = 0              # relay sessions before this one (each reconnect adds 1)
    claim: str = ""                  # the stored claim's nonce; "" unclaimed (or not known)
    minted_at: float = 0.0           # epoch seconds its token was minted; 0.0 not known (an
    #                                  item of the release before: ``spent_tokens.too_late``)


def _iso_utc(epoch_s: float) -> str:
    """Fixed width, so sk1 values sort by time: 2025-05-01T17:03:09.120Z."""
    moment = dt.datetime.fromtimestamp(epoch_s, dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# orders a session's writes across processes (``Store.put_unless_newer``): a claim queued
# behind a throttled store must not land over the renewal another process wrote since, nor
# a mint that a timed-out write re-queued (applied all the same) over its own claim, which
# made the spent token good again: each generation's mint, then its claim, then the next's
SESSION_VERSION = Version("version", legacy="generation")   # the release before: generation


def session_item(s: CallSession, ttl_s: int) -> Item:
    return {
        "pk": s.call_sid, "sk": SESSION_SK,
        "pk1": CALL_INDEX, "sk1": f"{_iso_utc(s.created_at)}#{s.call_sid}",
        "llmModel": s.model_id, "useCase": s.use_case,
        "userContext": profile_item(s.profile) if s.profile is not None else {},
        "systemPrompt": [{"text": s.system_prompt}],
        "token": s.token, "greeting": s.greeting, "From": s.caller, "To": s.called,
        "createdAt": s.created_at, "expireAt": int(s.created_at) + ttl_s,
        "generation": s.generation,
        SESSION_VERSION.attribute: s.generation * 2 + (0 if s.token else 1),
        **({CLAIM_ATTRIBUTE: s.claim} if s.claim else {}),
        **({"mintedAt": s.minted_at} if s.minted_at else {}),
    }


def session_from_item(item: Item) -> CallSession:
    """Also reads the sample's session items (no token, createdAt or generation: empty and 0)."""
    expect_sk(item, SESSION_SK, "call session")
    blocks = item.get("systemPrompt") or []
    prompt = "\n".join(b["text"] for b in blocks
                       if isinstance(b, Mapping) and isinstance(b.get("text"), str))
    greeting = item.get("greeting")
    return CallSession(
        call_sid=item["pk"], token=str(item.get("token") or ""),
        use_case=str(item.get("useCase") or ""), system_prompt=prompt,
        model_id=str(item.get("llmModel") or ""), caller=str(item.get("From") or ""),
        called=str(item.get("To") or ""), profile=_session_profile(item.get("userContext")),
        greeting=greeting if isinstance(greeting, str) else None,
        created_at=float(item.get("createdAt") or 0.0),
        generation=int(item.get("generation") or 0),
        claim=str(item.get(CLAIM_ATTRIBUTE) or ""),
        minted_at=float(item.get("mintedAt") or 0.0))


def socket_mark_sk(prefix: str, generation: int) -> str:
    return f"{prefix}{generation:06d}"


def socket_mark_item(prefix: str, call_sid: str, generation: int, at: float,
                     ttl_s: int) -> Item:
    """The end of a call's relay socket (of its ``generation``), as a process that served
    it saw it. ``SOCKET_CLOSED_PREFIX``: written at once, so a reconnect on another process
    knows that this socket's writes are on their way. ``SOCKET_WRITTEN_PREFIX``: written
    behind the socket's last messages in the same write-behind queue, which keeps order per
    call, so once it is in the store everything the socket wrote is too."""
    return {"pk": call_sid, "sk": socket_mark_sk(prefix, generation), "at": at,
            "expireAt": int(at) + ttl_s}


def socket_refused_sk(generation: int, claim: str) -> str:
    return f"{SOCKET_REFUSED_PREFIX}{generation:06d}::{claim}"


def socket_refused_item(call_sid: str, generation: int, claim: str, at: float,
                        ttl_s: int) -> Item:
    """That the socket whose claim (of ``generation``) carried the nonce ``claim`` was refused,
    the store not having decided that claim in time: the claim may still land, but that
    socket wrote nothing. Keyed by the nonce, so it vouches for that claim alone, never for
    another claim of the generation that won (whose socket was served and wrote)."""
    return {"pk": call_sid, "sk": socket_refused_sk(generation, claim), "at": at,
            "expireAt": int(at) + ttl_s}


def relay_mark_item(call_sid: str, sk: str, at: float, ttl_s: int, *,
                    handoff_data: str | None = None) -> Item:
    """That ``/action`` has answered a relay session's end (``RELAY_ANSWERED_PREFIX`` and its
    SessionId), or that the call's relay is over (``RELAY_ENDED_SK``): a replay of a signed
    ``/action`` must not mint a reconnect token again. ``handoff_data``: the agent ended the
    call with ``end`` (its handoff data, "" for none), the answer a failed session gets."""
    item: Item = {"pk": call_sid, "sk": sk, "at": at, "expireAt": int(at) + ttl_s}
    if handoff_data is not None:
        item[AGENT_END_ATTRIBUTE] = handoff_data
    return item


def call_seen_item(call_sid: str, at: float, ttl_s: int) -> Item:
    """That ``/twiml`` prepared this call: no prompt, no profile, nothing of the caller, so
    it can outlive the session item by far (a replayed ``/twiml`` stays refused)."""
    return {"pk": call_sid, "sk": CALL_SEEN_SK, "at": at, "expireAt": int(at) + ttl_s}


def _session_profile(context: Any) -> Profile | None:
    if not isinstance(context, Mapping) or not context.get("pk"):
        return None
    try:
        return profile_from_item({**context, "sk": PROFILE_SK})
    except (ConfigError, ValueError) as err:
        log.warning("session profile unusable, continuing without it",
                    extra={"error": type(err).__name__})
        return None


# ------------------------------------------------------------------ chat messages


class ChatEntry(TypedDict):
    call_sid: str
    at_ms: int
    seq: int
    chat: dict[str, Any]             # one Converse message: {"role", "content"}
    meta: dict[str, Any]             # transcript facts: turn, kind, heard, generated, ...


def chat_key(at_ms: int, seq: int) -> str:
    """Zero padded, so keys sort by time and then by position in the history."""
    return f"{CHAT_PREFIX}{at_ms:013d}::{seq:06d}"


def chat_item(call_sid: str, at_ms: int, seq: int, message: Mapping[str, Any],
              meta: Mapping[str, Any], ttl_s: int) -> Item:
    """``meta`` becomes top-level attributes (``None`` values left out); it may not use the
    names of keys or of ``chat``."""
    clash = sorted(KEY_ATTRIBUTES.intersection(meta) | ({"chat"} & set(meta)))
    if clash:
        raise ValueError(f"chat meta may not set {clash}: those are the item's own attributes")
    item: Item = {"pk": call_sid, "sk": chat_key(at_ms, seq), "chat": dict(message)}
    item.update((key, value) for key, value in meta.items() if value is not None)
    item["expireAt"] = at_ms // 1000 + ttl_s
    return item


def chat_from_item(item: Item) -> ChatEntry:
    """Also reads the sample's ``chat::<ms>`` keys (seq 0). ``ValueError`` (naming types,
    never content) for an item that holds no message a history or a transcript can take."""
    sk = item.get("sk")
    match = _CHAT_SK.match(sk) if isinstance(sk, str) else None
    if match is None:
        raise ValueError("not a chat item: expected sk 'chat::<epoch ms>...'")
    meta = {k: v for k, v in item.items() if k not in KEY_ATTRIBUTES and k != "chat"}
    if problem := _message_problem(item.get("chat"), meta):
        raise ValueError(f"not a chat item: {problem}")
    return ChatEntry(call_sid=item["pk"], at_ms=int(match.group(1)),
                     seq=int(match.group(2) or 0), chat=dict(item["chat"]), meta=meta)


def _message_problem(chat: Any, meta: Mapping[str, Any]) -> str | None:
    """What the readers index without looking: a role, content a list of maps (a mark's
    chat: empty)."""
    if not isinstance(chat, Mapping):
        return f"its chat is a {type(chat).__name__}, not a map"
    if not chat and is_mark(meta):
        return None
    if not isinstance(chat.get("role"), str):
        return "its chat has no role"
    content = chat.get("content")
    if not isinstance(content, list) or not all(isinstance(b, Mapping) for b in content):
        return "its chat's content is not a list of maps"
    return None


def readable_chat(items: Iterable[Item]) -> tuple[list[ChatEntry], list[str]]:
    """Chat items as entries (marks included) and the sk of each that could not be read
    (another tool's, or a later version's): left out with a warning naming its key, never
    its content, so it costs the call that message, not its reconnect or transcript."""
    entries: list[ChatEntry] = []
    unreadable: list[str] = []
    for item in items:
        try:
            entries.append(chat_from_item(item))
        except ValueError as err:
            log.warning("chat item unreadable, skipped", extra={
                "key": describe_key(item.get("pk"), item.get("sk")), "problem": str(err)})
            unreadable.append(str(item.get("sk")))
    return entries, unreadable


def chat_entries(items: Iterable[Item]) -> tuple[ChatEntry, ...]:
    """A call's chat items (as ``query`` returns them, in key order) as its conversation:
    tombstones, set-aside marks and unreadable items left out. A tombstone (``chat`` empty,
    ``dropped`` true) is written over the item of a message a barge-in later cut away or
    moved: the write-behind path has no delete, and a put keeps the queue's per-key order."""
    entries, _ = readable_chat(items)
    return tuple(entry for entry in entries if not is_mark(entry["meta"]))


def is_mark(item_or_meta: Mapping[str, Any]) -> bool:
    """A tombstone or a set-aside mark: a chat item that holds no message."""
    return bool(item_or_meta.get("dropped") or item_or_meta.get(SET_ASIDE))


# A saved conversation that a reconnect could not resume is set aside, not deleted (the
# transcript keeps it): a mark keyed after its last message, before the fresh conversation's
# first (``History.keep_after`` stamps those later), written in the call's queue ahead of
# them. Its own item, not a session field: a session write can lose a race with a renewal.
SET_ASIDE = "setAside"
SET_ASIDE_SEQ = 999_999


def set_aside_item(call_sid: str, at_ms: int, ttl_s: int) -> Item:
    return {"pk": call_sid, "sk": chat_key(at_ms, SET_ASIDE_SEQ), "chat": {}, SET_ASIDE: True,
            "expireAt": at_ms // 1000 + ttl_s}


def since_set_aside(entries: Sequence[ChatEntry]) -> tuple[ChatEntry, ...]:
    """The entries after the last set-aside mark (all of them when there is none): the
    conversation a reconnect resumes. Takes entries with the marks still in them
    (``chat_from_item`` of each item)."""
    last = max((n for n, entry in enumerate(entries) if entry["meta"].get(SET_ASIDE)),
               default=-1)
    return tuple(e for e in entries[last + 1:] if not is_mark(e["meta"]))


# ------------------------------------------------------------------ orders


def order_item(owner: str, call_sid: str, called: str, order: Mapping[str, Any], at_s: int,
               ttl_s: int) -> Item:
    """``owner`` is the caller's phone (their profile's pk) or the CallSid. Without a called
    number the order is left out of the index: a GSI key may not be empty."""
    item: Item = {"pk": owner, "sk": f"{ORDER_PREFIX}{call_sid[-4:]}::{at_s}",
                  "order": dict(order), "expireAt": at_s + ttl_s}
    if called:
        item.update(pk1=ORDER_INDEX, sk1=called)
    return item
