"""The languages Twilio speaks and hears in this session, as far as our messages changed them.

Two senders switch them: the automatic switch to the caller's language (RelayControl) and a
tool's ``language`` message (switchLanguage, or a plugin's). Each must see the other's switch:
one the tool made unseen was sent again on the caller's next prompt in that language, and a
caller going back to the first language was answered in the tool's voice, since the automatic
switch thought Twilio still spoke the first. Twilio never confirms a switch, so this is the
only record; a reconnected session starts from the TwiML again, and so does this.
"""

from __future__ import annotations

from dataclasses import dataclass

from voiceagent.relay.outbound import Language
from voiceagent.usecases import UseCase


@dataclass
class SessionLanguage:
    tts: str                  # what Twilio speaks now
    transcription: str        # what it transcribes in now (``multi``: every language)

    @classmethod
    def for_use_case(cls, use_case: UseCase) -> SessionLanguage:
        """The TwiML's: ``ttsLanguage`` / ``transcriptionLanguage`` over ``language``, else
        Twilio's default, en-US (the order the spec gives, §4.4)."""
        relay = use_case.relay
        spoken = str(relay.get("language") or "en-US")
        return cls(str(relay.get("ttsLanguage") or spoken),
                   str(relay.get("transcriptionLanguage") or spoken))

    def changes(self, message: Language) -> bool:
        """Whether ``message`` moves either language (case aside: BCP-47 ignores it)."""
        return ((message.tts_language is not None
                 and not same(message.tts_language, self.tts))
                or (message.transcription_language is not None
                    and not same(message.transcription_language, self.transcription)))

    def note(self, message: Language) -> None:
        """``message`` went to the relay writer: Twilio speaks and hears what it says."""
        self.tts = message.tts_language or self.tts
        self.transcription = message.transcription_language or self.transcription


def same(a: str, b: str) -> bool:
    return a.lower() == b.lower()
