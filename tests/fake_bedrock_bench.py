"""The fake Bedrock endpoint as a process for the benchmarks (``python -m tests.fake_bedrock``):
the bench.dN.gMS model ids, or the use cases' scripted replies at a given pace."""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable, Sequence
from contextlib import suppress
from pathlib import Path

import trio

from tests.fake_bedrock_frames import Frame, message_end, message_start, text_events, tool_events
from tests.fake_bedrock_replies import HttpError, Reply, StreamReply, text_reply
from tests.fake_bedrock_requests import RecordedRequest
from tests.fake_bedrock_server import FakeBedrock
from voiceagent.catalog import read_config_dir
from voiceagent.errors import ModelRejected
from voiceagent.llm.base import LLMRequest, TextDelta, ToolUseRequest, Usage
from voiceagent.llm.scripted import ScriptedLLM
from voiceagent.tools.registry import default_registry

_BENCH_MODEL = re.compile(
    r"^bench\.d(?P<deltas>\d+)\.g(?P<gap_ms>\d+)(\.h(?P<headers_ms>\d+))?$")


def bench_reply(request: RecordedRequest) -> Reply:
    """``bench.d{N}.g{MS}[.h{MS}]``: N word deltas MS milliseconds apart (the first after MS),
    optionally the headers only after ``h`` milliseconds."""
    match = _BENCH_MODEL.match(request.model_id)
    if match is None:
        return HttpError(400, "ValidationException", "fake: model id is not bench.dN.gMS")
    deltas, gap_s = int(match["deltas"]), int(match["gap_ms"]) / 1000
    headers_delay_s = int(match["headers_ms"] or 0) / 1000
    return text_reply([f" w{n}" for n in range(deltas)], gap_s=gap_s,
                      output_tokens=deltas, headers_delay_s=headers_delay_s)


def scripted_responder(llm: ScriptedLLM, *, first_token_s: float | None = None,
                       token_s: float | None = None,
                       times: int = 1) -> Callable[[RecordedRequest], Reply]:
    """Replies from the use cases' ``scripted`` sections (what ``LLM=scripted`` says in
    process), streamed as ConverseStream events: text deltas, then a toolUse block when a
    rule calls a tool, then messageStop and metadata. ``first_token_s`` (request received ->
    first delta) and ``token_s`` (between deltas) override the use cases' own pace; ``times``
    says each text that many times over (longer replies for the same turns: what one more
    token costs). A history Converse would refuse gets the service's answer, HTTP 400
    ValidationException."""
    def respond(request: RecordedRequest) -> Reply:
        body = request.body
        metadata = body.get("requestMetadata") or {}
        tools = (body.get("toolConfig") or {}).get("tools") or []
        asked = LLMRequest(
            call_sid=str(metadata.get("callSid", "")), use_case=str(metadata.get("useCase", "")),
            model_id=request.model_id,
            system=tuple(str(b["text"]) for b in body.get("system") or () if "text" in b),
            messages=tuple(body.get("messages") or ()),
            tools=tuple(t for t in tools if "toolSpec" in t))
        try:
            reply = llm.reply(asked)
        except ModelRejected as err:
            return HttpError(400, "ValidationException", str(err))
        first = reply.first_token_delay_s if first_token_s is None else first_token_s
        gap = reply.token_delay_s if token_s is None else token_s
        texts = [e.text for e in reply.events if isinstance(e, TextDelta)] * times
        frames: list[Frame] = [message_start()]
        if texts:
            frames += text_events(texts, gap_s=gap, first_delay_s=first)
        for n, tool in enumerate(e for e in reply.events if isinstance(e, ToolUseRequest)):
            frames += tool_events(n + 1, tool.tool_use_id, tool.name,
                                  [json.dumps(dict(tool.input))], gap_s=gap if texts else first)
        usage = reply.end.usage or Usage()
        frames += message_end(reply.end.stop_reason, input_tokens=usage.input_tokens,
                              output_tokens=usage.output_tokens)
        return StreamReply(tuple(frames))

    return respond


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port-file", help="write the port here once listening")
    parser.add_argument("--scripted", metavar="CONFIG_DIR", type=Path,
                        help="answer as the use cases in CONFIG_DIR script it (their "
                             "`scripted` rules), instead of the bench.dN.gMS model ids")
    parser.add_argument("--first-token-ms", type=float, default=None,
                        help="with --scripted: request received -> first delta, overriding "
                             "the use cases' first_token_delay_ms")
    parser.add_argument("--token-ms", type=float, default=None,
                        help="with --scripted: between deltas, overriding token_delay_ms")
    parser.add_argument("--reply-times", type=int, default=1, metavar="K",
                        help="with --scripted: say each reply K times over (default 1)")
    parser.add_argument("--tls", metavar="CA_FILE", type=Path, default=None,
                        help="serve TLS (https://localhost:PORT) with a new private CA, its "
                             "certificate written to CA_FILE (point AWS_CA_BUNDLE at it)")
    args = parser.parse_args(argv)
    responder: Callable[[RecordedRequest], Reply] = bench_reply
    if args.scripted is not None:
        use_cases = read_config_dir(args.scripted, default_registry()).use_cases
        responder = scripted_responder(
            ScriptedLLM.from_use_cases(use_cases),
            first_token_s=None if args.first_token_ms is None else args.first_token_ms / 1000,
            token_s=None if args.token_ms is None else args.token_ms / 1000,
            times=max(1, args.reply_times))
    fake = FakeBedrock(responder=responder, keep_bodies=False, tls=args.tls is not None)
    if args.tls is not None:
        fake.write_ca_bundle(args.tls)

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(fake.serve)
            print(fake.port, flush=True)
            if args.port_file:
                with open(args.port_file, "w") as out:  # noqa: ASYNC230 - once, at start-up
                    out.write(str(fake.port))
    with suppress(KeyboardInterrupt):
        trio.run(run)
    return 0
