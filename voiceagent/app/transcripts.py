"""Calls as people read them: the recent calls, and one call turn by turn, from either store.

Reads only what ``records.py`` writes: session items (listed newest first through the index,
``pk1 = "call"``) and a call's chat items. A transcript line is one message, timed from the
start of the call (the ``/twiml`` request), with who spoke; a barge-in shows what the caller
heard (the message as kept) and what the model had generated (``generated`` in the item);
tool calls show their inputs and results. Phone numbers are masked; the words are not: this
is what an operator asked to read.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any
from zoneinfo import ZoneInfo

import trio

import voiceagent.store.records as records
from voiceagent.logs import mask_phone
from voiceagent.store.base import Store

LIST_CONCURRENCY = 8                 # message counts fetched at once by ``recent_calls``
AFRESH_NOTE = ("a reconnect started the call afresh here: the conversation above could not "
               "be resumed")


@dataclass(frozen=True, slots=True)
class CallSummary:
    call_sid: str
    started_at: float                # epoch seconds
    use_case: str
    caller: str                      # as stored: mask before showing
    messages: int


@dataclass(frozen=True, slots=True)
class Transcript:
    call_sid: str
    session: records.CallSession | None      # None for a call whose session item is gone
    entries: tuple[records.ChatEntry, ...]      # set-aside marks included (shown as notes)
    unreadable: tuple[str, ...] = ()            # the sk of each chat item left out

    @property
    def started_at(self) -> float:
        if self.session is not None and self.session.created_at:
            return self.session.created_at
        return self.entries[0]["at_ms"] / 1000 if self.entries else 0.0


@dataclass(frozen=True, slots=True)
class Line:
    offset_s: float
    speaker: str                     # agent, caller, tool
    text: str
    notes: tuple[str, ...] = ()      # shown under the line: what was generated, ...


async def recent_calls(store: Store, *, limit: int = 20) -> list[CallSummary]:
    """The newest ``limit`` calls with their message counts."""
    sessions = [records.session_from_item(item)
                for item in await store.query_index(records.CALL_INDEX, descending=True,
                                                    limit=limit)]
    counts: dict[str, int] = {}
    gate = trio.Semaphore(LIST_CONCURRENCY)

    async def count(call_sid: str) -> None:
        async with gate:
            # counted, not parsed: one malformed item must not lose the whole listing
            counts[call_sid] = sum(not records.is_mark(item) for item in
                                   await store.query(call_sid, records.CHAT_PREFIX))

    async with trio.open_nursery() as nursery:
        for session in sessions:
            nursery.start_soon(count, session.call_sid)
    return [CallSummary(s.call_sid, s.created_at, s.use_case, s.caller, counts[s.call_sid])
            for s in sessions]


async def load_transcript(store: Store, call_sid: str) -> Transcript | None:
    """The call's session and messages in order; None when the store has neither."""
    item = await store.get(call_sid, records.SESSION_SK)
    session = records.session_from_item(item) if item is not None else None
    read, unreadable = records.readable_chat(await store.query(call_sid, records.CHAT_PREFIX))
    # the set-aside marks stay in, for ``transcript_lines`` to show; tombstones do not
    entries = tuple(entry for entry in read if not entry["meta"].get("dropped"))
    if session is None and not entries and not unreadable:
        return None
    return Transcript(call_sid, session, entries, tuple(unreadable))


# ------------------------------------------------------------------ formatting


def format_time(epoch_s: float, zone: str) -> str:
    moment = dt.datetime.fromtimestamp(epoch_s, dt.UTC).astimezone(ZoneInfo(zone))
    return moment.strftime("%Y-%m-%d %H:%M:%S %Z")


def format_calls(calls: Sequence[CallSummary], zone: str) -> list[str]:
    """One line per call under a header; columns line up."""
    rows = [("CALL SID", "STARTED", "USE CASE", "CALLER", "MESSAGES")]
    rows += [(c.call_sid, format_time(c.started_at, zone), c.use_case or "-",
              mask_phone(c.caller) or "-", str(c.messages)) for c in calls]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)
                      ).rstrip() for row in rows]


def transcript_lines(transcript: Transcript) -> list[Line]:
    """Each message as lines: text blocks as said, tool uses and results on their own."""
    start = transcript.started_at
    names: dict[str, str] = {}                   # toolUseId -> tool name, for the results
    lines: list[Line] = []
    set_aside = False
    for entry in transcript.entries:
        if entry["meta"].get(records.SET_ASIDE):
            set_aside = bool(lines)
            continue
        offset = entry["at_ms"] / 1000 - start
        role = entry["chat"].get("role")
        meta = entry["meta"]
        first = len(lines)
        for block in entry["chat"].get("content") or []:
            lines.extend(_block_lines(block, role, meta, offset, names))
        if set_aside and len(lines) > first:
            lines[first] = replace(lines[first], notes=(AFRESH_NOTE, *lines[first].notes))
            set_aside = False
    return lines


def _block_lines(block: Mapping[str, Any], role: Any, meta: Mapping[str, Any], offset: float,
                 names: dict[str, str]) -> list[Line]:
    if isinstance(block.get("text"), str):
        speaker = "agent" if role == "assistant" else "caller"
        notes: list[str] = []
        if meta.get("kind") == "greeting":
            notes.append("welcome greeting (spoken by Twilio)")
        if meta.get("interrupted"):
            notes.append("barge-in: the line above is what the caller heard")
            notes.append(f"generated: {_one_line(str(meta.get('generated', '')))}")
        if meta.get("words_dropped"):
            notes.append(f"{meta['words_dropped']} earlier unanswered prompts dropped (cap)")
        return [Line(offset, speaker, _one_line(block["text"]), tuple(notes))]
    use = block.get("toolUse")
    if isinstance(use, Mapping):
        names[str(use.get("toolUseId"))] = str(use.get("name"))
        return [Line(offset, "agent", f"-> {use.get('name')} {_json(use.get('input', {}))}")]
    result = block.get("toolResult")
    if isinstance(result, Mapping):
        name = names.get(str(result.get("toolUseId")), "tool")
        status = "failed" if result.get("status") == "error" else "result"
        parts = [_json(c["json"]) if "json" in c else _one_line(str(c.get("text", "")))
                 for c in _list(result.get("content")) if isinstance(c, Mapping)]
        said = " ".join(parts)
        if status == "failed":      # the executor's own words often start with it already
            said = said.removeprefix("failed: ")
        return [Line(offset, "tool", f"<- {name} {status}: {said}")]
    if "reasoningContent" in block:
        return []                   # the model's thinking: never said, kept for the model
    return [Line(offset, "agent" if role == "assistant" else "caller",
                 f"[{', '.join(block)} block]")]


def format_transcript(transcript: Transcript, zone: str) -> list[str]:
    session = transcript.session
    head = [f"call {transcript.call_sid}"]
    if session is not None:
        head.append(f"  use case {session.use_case or '-'}, from "
                    f"{mask_phone(session.caller) or '-'} to {mask_phone(session.called) or '-'}"
                    f", model {session.model_id or '-'}")
    else:
        head.append("  (no session item: it expired or was never written)")
    head.append(f"  started {format_time(transcript.started_at, zone)}, "
                f"{sum(not records.is_mark(e['meta']) for e in transcript.entries)} messages")
    head.extend(f"  item {sk} could not be read (another tool's, or a later version's): "
                "left out" for sk in transcript.unreadable)
    body: list[str] = []
    for line in transcript_lines(transcript):
        body.append(f"{_offset(line.offset_s):>9}  {line.speaker:<6}  {line.text}")
        body.extend(f"{'':>9}  {'':<6}    {note}" for note in line.notes)
    return [*head, "", *body]


def _offset(seconds: float) -> str:
    sign = "-" if seconds < 0 else "+"
    minutes, rest = divmod(abs(seconds), 60)
    return f"{sign}{int(minutes)}:{rest:05.2f}"


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(", ", ": "))
