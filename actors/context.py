"""What every actor of one call shares: who the call is, the model, the history, the channels.

Built by ``actors.call``; the llm_streamer is the only task that mutates ``history``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from actors.channel import Sends
from actors.history import History
from actors.messages import Outgoing
from actors.relay_control import RelayControl
from actors.spoken_lines import SpokenLines
from actors.tool_executor import ToolExecutor
from actors.turn_slot import CutMarks
from voiceagent.llm.base import LLM
from voiceagent.usecases import UseCase

if TYPE_CHECKING:
    from actors.settling import Settling


@dataclass(frozen=True, slots=True)
class ModelRound:
    """One model call of a turn, for metrics and the per-turn summary."""

    turn: int
    stop_reason: str      # "cancelled" when a barge-in or hang-up cut it; "model_error"
    first_token_s: float | None = None     # request sent -> first delta (backend's figure)
    overhead_s: float | None = None        # first delta received -> handed to the writer
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0


@dataclass
class TurnStats:
    """Per-call figures, summed into process metrics when the call ends."""

    turns: int = 0
    barge_ins: int = 0
    superseded: int = 0
    tool_calls: int = 0
    model_errors: int = 0
    failed_in_a_row: int = 0     # turns that ended in an apology, since one answered
    latencies_s: list[float] = field(default_factory=list)   # prompt in -> first token out
    rounds: list[ModelRound] = field(default_factory=list)
    tools: list[tuple[str, str, float]] = field(default_factory=list)  # name, status, seconds


@dataclass
class CallContext:
    call_sid: str
    use_case: UseCase
    model_id: str
    system_prompt: str
    llm: LLM
    history: History
    outbound: Sends[Outgoing]
    tools: ToolExecutor
    max_tool_rounds: int = 4
    tool_wait_s: float = 30.0        # longest a cancelled turn waits for side-effect tools
    max_history_messages: int = 200  # older turns are trimmed (in valid pairs) from memory
    max_history_chars: int | None = 100_000   # and by size (history_trim)
    log_content: bool = False        # LOG_CONTENT: what was said, redacted, at debug level
    token_hold_s: float = 0.0        # TOKEN_HOLD_MS: later tokens of a reply sent together
    stats: TurnStats = field(default_factory=TurnStats)
    on_turn: Callable[[dict[str, Any]], None] | None = None   # the turn summary (metrics)
    marks: CutMarks = field(default_factory=CutMarks)         # barge-in, shared with the writer
    relay: RelayControl | None = None                         # language, rules, reply flags
    # side-effect tools a cut turn left running, answered before the next model round
    settling: list[Settling] = field(default_factory=list)
    # voiceagent's own words (apologies, the call's end, the hold line, fillers), in the
    # language spoken now: the relay's record of it, which tools' switches move too
    lines: SpokenLines = field(init=False)

    def __post_init__(self) -> None:
        self.lines = SpokenLines(self.use_case,
                                 self.relay.language if self.relay is not None else None)
