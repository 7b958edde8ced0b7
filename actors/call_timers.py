"""The two clocks of a call's conversation: the caller's silence (``Idle``: re-prompts, then a
goodbye) and the call's end from outside it (``Limits``: its maximum length, or the server
draining), each a deadline the interrupt handler waits on beside its input.

Apart from ``interrupt_handler``, which decides what the caller's input starts or cuts: these
only say when the silence or the call has run out and what is said then, and move their
deadlines on what Twilio reports (speaker events hold the silence timer back).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import trio

from actors.end_signal import EndSignal
from actors.messages import (
    Dtmf,
    EndCall,
    Inbound,
    Interrupt,
    Prompt,
    Reprompt,
    SpeakerEvent,
    TurnCommand,
)
from voiceagent.usecase_lines import DEFAULT_LINES

if TYPE_CHECKING:
    from actors.interrupt_handler import InputPolicy

# The English defaults of the lines said here (a use case may give its own, per language:
# ``actors.spoken_lines``); each is said through ``policy.lines``, by the name in the comment.
REPROMPT = DEFAULT_LINES["reprompt"]                      # reprompt
IDLE_GOODBYE = DEFAULT_LINES["idle_goodbye"]              # idle_goodbye
DRAINING = DEFAULT_LINES["draining_goodbye"]              # draining_goodbye
TOO_LONG = DEFAULT_LINES["time_limit_goodbye"]            # time_limit_goodbye
MAX_AGENT_SPEECH_S = 120.0       # the silence timer waits at most this long for "agent off"
MAX_CALLER_SPEECH_S = 120.0      # ... and for "client off"


class Idle:
    """Silence timer: restarts on any caller input. With Twilio's speaker events, it also
    stands still while the agent or the caller speaks and restarts when they stop: a reply longer
    than ``idle_reprompt_s`` of audio (60 words at 150 a minute) would otherwise be followed
    at once by "are you still there?", the caller never having had a silence to answer in."""

    def __init__(self, policy: InputPolicy) -> None:
        self.policy = policy
        self.reprompts = 0
        self.deadline = math.inf
        self.heard_from_caller()

    def heard_from_caller(self) -> None:
        self.reprompts = 0
        self._arm()

    def saw(self, message: Inbound) -> None:
        """Every message from Twilio passes here, whichever loop reads it."""
        if isinstance(message, Prompt | Dtmf | Interrupt):
            self.heard_from_caller()
        elif isinstance(message, SpeakerEvent) and message.who == "caller":
            self.heard_from_caller()
            # talking is not silence: the prompt comes only once they stop, and a caller
            # still talking past idle_reprompt_s was asked "are you still there?"
            if message.speaking:
                self.deadline += MAX_CALLER_SPEECH_S
        elif isinstance(message, SpeakerEvent):
            self.agent_speaking(message.speaking)

    def agent_speaking(self, speaking: bool) -> None:
        if self.deadline == math.inf:       # off, or the goodbye is said: nothing to move
            return
        self._arm()
        if speaking:                        # an "off" that never comes cannot stop it
            self.deadline += MAX_AGENT_SPEECH_S

    def _arm(self) -> None:
        after = self.policy.idle_reprompt_s
        self.deadline = trio.current_time() + after if after else math.inf

    def waiting_for_agent(self) -> None:
        """The silence ran out while a turn was in flight: it counts from now again."""
        self._arm()

    def expired(self) -> TurnCommand:
        self.reprompts += 1
        self._arm()
        if self.reprompts > self.policy.max_reprompts:
            self.deadline = math.inf
            return EndCall(self.policy.lines("idle_goodbye"), "caller-silent")
        return Reprompt(self.policy.lines("reprompt"))


class Limits:
    """The call's end from outside the conversation: its maximum length, or the server
    draining. At most one goodbye, whichever comes first."""

    def __init__(self, policy: InputPolicy, ending: EndSignal) -> None:
        self.policy = policy
        self.deadline = trio.current_time() + policy.max_call_s
        self.ending = ending
        self.said = False

    def reached(self) -> EndCall | None:
        if self.said:
            return None
        if self.ending.is_set():
            command = EndCall(self.policy.lines("draining_goodbye"), "server-draining")
        elif trio.current_time() >= self.deadline:
            command = EndCall(self.policy.lines("time_limit_goodbye"), "max-duration")
        else:
            return None
        self.said, self.deadline = True, math.inf
        return command

    def wake(self, scope: trio.CancelScope) -> None:
        """Until the goodbye is said, the server draining wakes the wait in ``scope``."""
        if not self.said:
            self.ending.waiting(scope)

    def done(self, scope: trio.CancelScope) -> None:
        """The wait in ``scope`` is over: the server draining no longer wakes it."""
        self.ending.done_waiting(scope)
