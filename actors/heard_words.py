"""Which of the words Twilio says were heard (``utteranceUntilInterrupt``) belong to which text
of a cut reply: a reply with a tool round is several texts in the history, and each is cut to
its own share of the heard words; and whether they can be a reply's at all (``begins_alike``,
which picks among replies still playing), judged by the same words.

Twilio may space, case and punctuate what it played otherwise than we sent it, so words are
compared, not characters. When the heard words begin with the words we sent (the last one
maybe cut inside), they are split by count. Otherwise the voice said some text in other words
(a price, a time or an abbreviation spoken out, SSML left unsaid), and counting would put the
extra words of a longer rendering into the next text, after a tool round the caller never
reached, or end a text early for a shorter one. Then the heard words are aligned with the
sent ones, and each text takes the words that match it and those that render it: a text
whose last word was heard, or after which a later text's words were heard, was said whole.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

_WORD = re.compile(r"\S+")
MAX_RENDERING_WORDS = 32     # said and heard words apart that a rendering may put back in step


def _key(word: str) -> str:
    return word.strip(string.punctuation).casefold()


def split_heard(texts: Sequence[str], heard: str) -> list[str]:
    """For each of ``texts`` (in the order they were said), what the caller heard of it:
    the text itself when heard whole, Twilio's words (as it spaced them) when the caller cut
    in during it, "" when it was not reached."""
    spans = [(m.start(), m.end()) for m in _WORD.finditer(heard)]
    heard_keys = [_key(heard[a:b]) for a, b in spans]
    said_keys = [[_key(w) for w in text.split()] for text in texts]
    owners, whole = (_by_count(said_keys, heard_keys) if _begins(said_keys, heard_keys)
                     else _by_alignment(said_keys, heard_keys))
    out: list[str] = []
    for n, text in enumerate(texts):
        mine = [k for k, owner in enumerate(owners) if owner == n]
        if n in whole or any(owner > n for owner in owners):
            out.append(text.strip())
        elif mine:
            out.append(heard[spans[mine[0]][0]:spans[mine[-1]][1]].rstrip())
        else:
            out.append("")
    return out


def begins_alike(said: str, heard: str) -> bool:
    """Whether one of ``said`` and ``heard`` begins the other, word by word as the heard
    words are split (case, spacing and punctuation aside; the last word of either may be cut
    inside). Nothing heard fits any text; nothing said fits only nothing heard."""
    said_keys, heard_keys = _keys(said), _keys(heard)
    if not heard_keys or not said_keys:
        return not heard_keys
    shorter = min(len(said_keys), len(heard_keys))
    for k in range(shorter):
        said_word, heard_word = said_keys[k], heard_keys[k]
        if said_word == heard_word:
            continue
        if k != shorter - 1:
            return False
        return ((k == len(heard_keys) - 1 and said_word.startswith(heard_word))
                or (k == len(said_keys) - 1 and heard_word.startswith(said_word)))
    return True


def _keys(text: str) -> list[str]:
    """The words to compare, those of punctuation alone left out (a dash Twilio may drop)."""
    return [key for key in map(_key, text.split()) if key]


# Each heard word's text, and the texts heard whole whatever came after them.
Split = tuple[list[int], set[int]]


def _begins(said: list[list[str]], heard: list[str]) -> bool:
    """The heard words are the words sent, in order, up to where either ends (the last heard
    word may be cut inside)."""
    flat = [w for words in said for w in words]
    for k, word in enumerate(heard[:len(flat)]):
        if word != flat[k] and not (k == len(heard) - 1 and flat[k].startswith(word)):
            return False
    return True


def _by_count(said: list[list[str]], heard: list[str]) -> Split:
    """Word for word; heard words past everything sent are the last text's, said whole."""
    owners = [n for n, words in enumerate(said) for _ in words][:len(heard)]
    past = len(heard) - len(owners)
    return [*owners, *[len(said) - 1] * past], {len(said) - 1} if past else set()


def _by_alignment(said: list[list[str]], heard: list[str]) -> Split:
    """Walk both in order; where they part, go on from the nearest pair of equal words (a
    rendering replaces a few words with a few others), the heard words skipped over being
    the rendering of the said words skipped over. Nearest, not best overall: a common word
    of a later text must not draw a rendering of this one into it."""
    places = [(n, i) for n, words in enumerate(said) for i in range(len(words))]
    flat = [w for words in said for w in words]
    owners: list[int] = []
    whole: set[int] = set()
    i = j = 0
    while j < len(heard):
        if i < len(flat) and heard[j] == flat[i]:
            n, word = places[i]
            owners.append(n)
            if word == len(said[n]) - 1:
                whole.add(n)
            i, j = i + 1, j + 1
            continue
        skip_said, skip_heard = _resync(flat, heard, i, j)
        if skip_said:
            owner = places[i][0]            # a rendering of the words it skips
        elif owners:
            owner = owners[-1]              # words added after the last one matched
        else:
            owner = places[min(i, len(flat) - 1)][0]
        owners += [owner] * skip_heard
        i, j = i + skip_said, j + skip_heard
    return owners, whole


def _resync(flat: list[str], heard: list[str], i: int, j: int) -> tuple[int, int]:
    """How many said and heard words to skip to the nearest equal pair; none: the rest of
    the heard words render the said word at ``i``."""
    for distance in range(1, MAX_RENDERING_WORDS + 1):
        for skip_said in range(distance + 1):
            at_said, at_heard = i + skip_said, j + distance - skip_said
            if at_said < len(flat) and at_heard < len(heard) and flat[at_said] == heard[at_heard]:
                return skip_said, distance - skip_said
    return (1 if i < len(flat) else 0), len(heard) - j
