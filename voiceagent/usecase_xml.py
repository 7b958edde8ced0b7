"""Characters a use case's TwiML cannot carry.

XML 1.0 has no way to write most control characters (not even as ``&#1;``), lone
surrogates, U+FFFE or U+FFFF: a greeting holding one (``\\x0b``, Word's line break, pasted
in) made a document Twilio refuses, so every call to the use case failed at setup, long after
the file was loaded and deployed. A file is refused at load, naming the key and the character;
a use case already stored is still served, with the character left out of its TwiML
(``xml_safe``).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from voiceagent.usecase_schema import UseCase

# The complement of XML 1.0's Char production: #x9 | #xA | #xD | [#x20-#xD7FF] |
# [#xE000-#xFFFD] | [#x10000-#x10FFFF]
NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")

KeyPath = tuple[str | int, ...]


def describe(char: str) -> str:
    """``U+000B (a control character)``: the code point, since the character itself does
    not show on a terminal."""
    code = ord(char)
    if 0xD800 <= code <= 0xDFFF:
        kind = "a lone surrogate, half of a UTF-16 pair"
    elif unicodedata.category(char) == "Cc":
        kind = "a control character"
    else:
        kind = "a noncharacter"
    return f"U+{code:04X} ({kind})"


def xml_safe(text: str) -> str:
    """``text`` with what XML cannot carry taken out: a whitespace control (vertical tab,
    form feed, the separators) becomes a space, so words stay apart; the rest is dropped."""
    return NOT_XML.sub(lambda m: " " if m.group().isspace() else "", text)


def not_xml(text: str) -> list[str]:
    """The code points (``U+000B``) in ``text`` that XML cannot carry, each once: for a log
    line, which names them and never the text."""
    return sorted({f"U+{ord(c):04X}" for c in NOT_XML.findall(text)})


def twiml_texts(use_case: UseCase) -> Iterator[tuple[KeyPath, object]]:
    """Each value of the use case that goes into TwiML, with its key path: the relay
    attributes, each ``<Language>``'s and its failover's, and the handoff's."""
    for section in ("relay", "relay_extra"):
        for name, value in getattr(use_case, section).items():
            yield (section, name), value
    for index, entry in enumerate(use_case.languages):
        for name, value in entry.attributes().items():
            yield ("languages", index, name), value
        for name, value in (entry.failover or {}).items():
            yield ("languages", index, "failover", name), value
    handoff = use_case.handoff
    for name in ("message", "queue", "workflow_sid", "number"):
        yield ("handoff", name), getattr(handoff, name)


def twiml_text_problem(use_case: UseCase) -> tuple[KeyPath, str] | None:
    """The first text of the use case that TwiML cannot carry: its key path and what to do."""
    for path, value in twiml_texts(use_case):
        if not isinstance(value, str):
            continue
        found = NOT_XML.search(value)
        if found is not None:
            return path, (f"holds {describe(found.group())} at character {found.start() + 1}, "
                          "which TwiML (XML 1.0) cannot carry: Twilio would refuse the "
                          "call's document; remove it (tab, newline and carriage return are "
                          "allowed)")
    return None
