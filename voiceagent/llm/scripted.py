"""An offline model: regex rules from each use case's ``scripted`` section, streamed with
fixed delays so demos run without AWS and tests can assert exact virtual timings.

It keeps the parts of Bedrock's contract the runtime depends on: text arrives as word tokens
(leading space kept, as Converse streams them), a tool call ends the stream with ``tool_use``,
the turn after a tool result speaks from that result, and in ``strict`` mode a history that
ConverseStream would refuse raises ``ModelRejected`` just as the real service would. That last
part is how the tests prove the runtime never sends an invalid history.
"""

from __future__ import annotations

import copy
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio

from voiceagent.errors import ModelRejected
from voiceagent.llm.base import (
    LLMEvent,
    LLMRequest,
    Message,
    StreamEnd,
    TextDelta,
    ToolUseRequest,
    Usage,
)
from voiceagent.llm.converse import converse_problems
from voiceagent.llm.scripted_then import choose, fill, missing_fields
from voiceagent.usecases import ScriptedConfig, ScriptedRule, UseCase

log = logging.getLogger(__name__)

MODEL_ID = "scripted (offline)"     # what a call's session records as its model (LLM=scripted)
DEFAULT_FIRST_TOKEN_DELAY_S = 0.25
DEFAULT_TOKEN_DELAY_S = 0.025
APOLOGY = "Sorry, I couldn't get that done just now. Could we try that again?"
DONE = "Okay, that's taken care of."
_TOKEN = re.compile(r"\s*\S+")


@dataclass(frozen=True, slots=True)
class ScriptedStatistics:
    streams_opened: int
    streams_open: int                    # generators still running: 0 once every turn is left


@dataclass(frozen=True, slots=True)
class ScriptedReply:
    events: tuple[TextDelta | ToolUseRequest, ...]
    end: StreamEnd
    first_token_delay_s: float
    token_delay_s: float


@dataclass(frozen=True, slots=True)
class _Script:
    source: ScriptedConfig | UseCase
    config: ScriptedConfig
    patterns: tuple[re.Pattern[str], ...]
    first_token_delay_s: float
    token_delay_s: float

    def fallback(self, language: str | None) -> str:
        """In ``language`` (Twilio's now): its entry's ``scripted_fallback``, else the own."""
        entry = isinstance(self.source, UseCase) and self.source.language_for(language or "")
        return (entry and entry.scripted_fallback) or self.config.fallback


@dataclass(frozen=True, slots=True)
class _Plan:
    text: str
    tool: ToolUseRequest | None = None


class ScriptedLLM:
    """Deterministic backend; one instance serves every call (it holds no per-call state)."""

    name = "scripted"

    def __init__(self, scripts: Mapping[str, ScriptedConfig | UseCase], *,
                 first_token_delay_s: float = DEFAULT_FIRST_TOKEN_DELAY_S,
                 token_delay_s: float = DEFAULT_TOKEN_DELAY_S, strict: bool = True,
                 current: Callable[[str], Awaitable[ScriptedConfig | UseCase]] | None = None
                 ) -> None:
        """``scripts``: each use case, or its ``scripted`` section (no ``languages``).
        ``current``: the same as they stand now (the server's catalog, which a ``config
        load`` updates within its cache's minute); a failure keeps the ones held. Without it
        the rules are the ones given here, for the process's life."""
        self._first_token_delay_s = first_token_delay_s
        self._token_delay_s = token_delay_s
        self._strict = strict
        self._current = current
        self._scripts = {name: self._prepare(config) for name, config in scripts.items()}
        self._default = self._prepare(ScriptedConfig())
        self._opened = 0
        self._open = 0

    @classmethod
    def from_use_cases(cls, use_cases: Iterable[UseCase], *,
                       first_token_delay_s: float = DEFAULT_FIRST_TOKEN_DELAY_S,
                       token_delay_s: float = DEFAULT_TOKEN_DELAY_S,
                       strict: bool = True) -> ScriptedLLM:
        return cls({uc.name: uc for uc in use_cases},
                   first_token_delay_s=first_token_delay_s, token_delay_s=token_delay_s,
                   strict=strict)

    def _prepare(self, source: ScriptedConfig | UseCase) -> _Script:
        config = source.scripted if isinstance(source, UseCase) else source
        first, gap = config.first_token_delay_ms, config.token_delay_ms
        return _Script(
            source, config, tuple(re.compile(rule.match, re.IGNORECASE) for rule in config.rules),
            self._first_token_delay_s if first is None else first / 1000,
            self._token_delay_s if gap is None else gap / 1000)

    async def _refresh(self, current: Callable[[str], Awaitable[ScriptedConfig | UseCase]],
                       name: str) -> None:
        try:
            source = await current(name)
        except Exception as err:        # unknown, unusable or unreadable: keep what is held
            log.debug("scripted rules not refreshed", extra={"use_case": name,
                                                             "error": type(err).__name__})
            return
        held = self._scripts.get(name)
        if held is None or (held.source is not source and held.source != source):
            self._scripts[name] = self._prepare(source)

    def statistics(self) -> ScriptedStatistics:
        return ScriptedStatistics(self._opened, self._open)

    @asynccontextmanager
    async def stream(self, request: LLMRequest) -> AsyncIterator[trio.abc.ReceiveChannel[
            LLMEvent]]:
        """Leaving the context ends the stream between tokens, like closing Bedrock's stream.
        Raises ``ModelRejected`` (strict) where ConverseStream would."""
        if self._current is not None:
            await self._refresh(self._current, request.use_case)
        reply = self.reply(request)
        self._opened += 1
        self._open += 1
        try:
            yield _Paced(list(reply.events), reply.end, reply.first_token_delay_s,
                         reply.token_delay_s)
        finally:
            self._open -= 1

    def reply(self, request: LLMRequest) -> ScriptedReply:
        """What the model will say to ``request``, unpaced: the stream above plays it, and the
        local Bedrock endpoint of the benchmarks streams it as ConverseStream events.
        Raises ``ModelRejected`` (strict) where ConverseStream would."""
        if self._strict and (problems := converse_problems(
                request.messages, tools_configured=bool(request.tools))):
            raise ModelRejected("ValidationException", "; ".join(problems))
        script = self._scripts.get(request.use_case, self._default)
        plan = _plan(script, request)
        tokens = _TOKEN.findall(plan.text)
        if not tokens and plan.tool is None:     # say something: an empty turn helps no one
            tokens = _TOKEN.findall(ScriptedConfig().fallback)
        events: list[TextDelta | ToolUseRequest] = [TextDelta(token) for token in tokens]
        output = len(tokens)
        if plan.tool is not None:
            output += len(json.dumps(plan.tool.input)) // 4 + 1
            events.append(plan.tool)
        end = StreamEnd("tool_use" if plan.tool is not None else "end_turn",
                        usage=Usage(input_tokens=_rough_input_tokens(request),
                                    output_tokens=output))
        return ScriptedReply(tuple(events), end, script.first_token_delay_s,
                             script.token_delay_s)

    async def aclose(self) -> None:
        return None


class _Paced(trio.abc.ReceiveChannel[LLMEvent]):
    """The planned events, each due a fixed delay after the one before, then ``end``.
    Receiving sleeps until the next is due: no helper task and no channel per stream, so the
    fake costs what a model event must (one timer wakeup per token), not a task switch more."""

    def __init__(self, events: list[TextDelta | ToolUseRequest], end: StreamEnd,
                 first_s: float, gap_s: float) -> None:
        self._events = events
        self._end: StreamEnd | None = end
        self._next = 0
        self._gap_s = gap_s
        self._started = trio.current_time()
        self._due = self._started + first_s
        self._first_token_s: float | None = None

    async def receive(self) -> LLMEvent:
        if self._next == len(self._events):
            if self._end is None:
                raise trio.EndOfChannel
            await trio.lowlevel.checkpoint()        # before taking it: a cancel loses nothing
            return self._take_end()
        await trio.sleep_until(self._due)           # a cancel here loses nothing
        now = trio.current_time()
        event = self._take_next(now)
        self._due = max(self._due, now) + self._gap_s
        return event

    async def take_ready(self) -> list[LLMEvent]:
        """The events due by now, without waiting: a model streams on while nobody reads,
        so each keeps the time it was due at. No checkpoint, as Bedrock's has none when
        nothing is waiting: its callers have just waited (a hold window's sleep, a token's
        read), and a first clause read token by token would yield twice a token."""
        now = trio.current_time()
        out: list[LLMEvent] = []
        while self._next < len(self._events) and self._due <= now:
            out.append(self._take_next(self._due))
            self._due += self._gap_s
        if self._next == len(self._events) and self._end is not None:
            out.append(self._take_end())
        return out

    def _take_next(self, at: float) -> LLMEvent:
        """The next planned event, produced at ``at``."""
        event = self._events[self._next]
        self._next += 1
        if self._first_token_s is None and isinstance(event, TextDelta):
            self._first_token_s = at - self._started
        return event

    def _take_end(self) -> StreamEnd:
        end, self._end = self._end, None
        assert end is not None
        return StreamEnd(end.stop_reason, usage=end.usage, first_token_s=self._first_token_s)

    async def aclose(self) -> None:
        self._next, self._end = len(self._events), None


def _plan(script: _Script, request: LLMRequest) -> _Plan:
    messages = request.messages
    fallback = _Plan(script.fallback(request.language))
    last = messages[-1] if messages else None
    if last is None or last.get("role") != "user" or not last.get("content"):
        return fallback
    blocks: list[dict[str, Any]] = last["content"]
    if "text" in blocks[-1]:
        words = " ".join(b["text"] for b in blocks if isinstance(b.get("text"), str))
        return _answer(script, words, request)
    results = [b["toolResult"] for b in blocks if isinstance(b.get("toolResult"), dict)]
    if results:
        return _Plan(_after_tool(script, messages, results, request.language))
    return fallback


def _answer(script: _Script, words: str, request: LLMRequest) -> _Plan:
    offered = _tool_names(request.tools)
    for index, (rule, pattern) in enumerate(zip(script.config.rules, script.patterns,
                                                strict=True)):
        if not pattern.search(words):
            continue
        if rule.tool is None:
            log.debug("scripted rule matched", extra={"rule": index, "kind": "reply"})
            return _Plan(rule.reply or script.fallback(request.language))
        if rule.tool.name not in offered:       # a model cannot call a tool it was not given
            continue
        log.debug("scripted rule matched", extra={"rule": index, "kind": "tool"})
        use_id = f"tooluse_{_count_tool_uses(request.messages) + 1}"
        return _Plan((rule.reply or "").strip(),
                     ToolUseRequest(use_id, rule.tool.name, copy.deepcopy(rule.tool.input)))
    return _Plan(script.fallback(request.language))


def _after_tool(script: _Script, messages: Sequence[Message],
                results: list[dict[str, Any]], language: str | None) -> str:
    config = script.config
    previous = messages[-2] if len(messages) >= 2 else {}
    uses = [b["toolUse"] for b in previous.get("content", ())
            if previous.get("role") == "assistant" and isinstance(b.get("toolUse"), dict)]
    if not uses:
        return script.fallback(language)
    use = uses[-1]
    result = next((r for r in results if r.get("toolUseId") == use.get("toolUseId")),
                  results[-1])
    failed = result.get("status") == "error"
    rule = _rule_for(config.rules, use)
    if rule is None or rule.then is None:
        return APOLOGY if failed else DONE
    data = {} if failed else _result_data(result)
    chosen = choose(rule.then, data, failed=failed)
    names = {"tool": use.get("name"), "result_fields": sorted(data)}
    if chosen.absent:
        # a `when` naming a field the tool never returns (misspelt, or from another tool)
        # never fits, and the caller hears another sentence: names only, no values
        log.warning("scripted then-case named fields its tool's result lacks",
                    extra={**names, "missing": list(chosen.absent)})
    if chosen.say is None:
        if not failed:
            log.warning("no scripted then-case fits its tool's result", extra=names)
        return APOLOGY if failed else DONE
    if missing := missing_fields(chosen.say, data):
        # said without them, as documented, but a field name misspelt in `then`, or one the
        # tool never returns, is otherwise a silent gap in the sentence: names only, no values
        log.warning("scripted reply left out fields its tool's result lacks",
                    extra={**names, "missing": missing})
    return fill(chosen.say, data) or (APOLOGY if failed else DONE)


def _rule_for(rules: Sequence[ScriptedRule], use: Mapping[str, Any]) -> ScriptedRule | None:
    """The rule that asked for ``use``: same tool and input, else the first with that tool."""
    named = [r for r in rules if r.tool is not None and r.tool.name == use.get("name")]
    for rule in named:
        if rule.tool is not None and rule.tool.input == use.get("input"):
            return rule
    return named[0] if named else None


def _result_data(result: Mapping[str, Any]) -> dict[str, Any]:
    for item in result.get("content") or ():
        if isinstance(item.get("json"), dict):
            return dict(item["json"])
        if isinstance(item.get("text"), str):
            return {"text": item["text"]}
    return {}


def _tool_names(tools: Sequence[Mapping[str, Any]]) -> set[str]:
    names: set[str] = set()
    for spec in tools:
        inner = spec.get("toolSpec", spec)
        if isinstance(inner, Mapping) and isinstance(inner.get("name"), str):
            names.add(inner["name"])
    return names


def _count_tool_uses(messages: Sequence[Message]) -> int:
    return sum(1 for m in messages if m.get("role") == "assistant"
               for b in m.get("content", ()) if isinstance(b, dict) and "toolUse" in b)


def _rough_input_tokens(request: LLMRequest) -> int:
    size = sum(len(text) for text in request.system)
    size += len(json.dumps(request.messages, default=str))
    size += len(json.dumps([dict(t) for t in request.tools], default=str))
    return max(1, size // 4)
