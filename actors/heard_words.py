"""Which of the words Twilio says were heard (``utteranceUntilInterrupt``) belong to which text
of a cut reply: a reply with a tool round is several texts in the history, and each is cut to
its own share of the heard words; and whether they can be a reply's at all (``heard_within``,
which picks among replies still playing), judged by the same words.

Twilio reports the words of the chunk it was speaking (a clause or a sentence), not of the
whole talk cycle: a reply cut as its second sentence began gave "Sentence 2 of", its first
sentence played whole (observed on a live call, the spec's [S18]). So the heard words may
begin anywhere in what we sent, and everything before them was heard. Twilio may also space,
case and punctuate what it played otherwise than we sent it, so words are compared, not
characters. When the heard words begin with the words we sent (the last one maybe cut
inside), they are split by count. Otherwise the voice said some text in other words (a price,
a time or an abbreviation spoken out, SSML left unsaid), or the words are a later chunk's, or
both: they are aligned with the sent ones from where they fit best (the most words the same,
less any word we sent that the stretch passes over unsaid; the earliest of equals, since
what comes before it is known to have played), and each text takes the words that match it
and those that render it: a text whose last word was heard, or after which a later text's
words were heard, was said whole.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Sequence

_WORD = re.compile(r"\S+")
MAX_RENDERING_WORDS = 32     # said and heard words apart that a rendering may put back in step
_CLAUSE_ENDS = (".", ",", "!", "?", ";", ":")   # where Twilio's chunks may begin after


def _key(word: str) -> str:
    return word.strip(string.punctuation).casefold()


def split_heard(texts: Sequence[str], heard: str) -> list[str]:
    """For each of ``texts`` (in the order they were said), what the caller heard of it:
    the text itself when heard whole, Twilio's words (as it spaced them) where the caller
    cut in during it, after our own words of it that came before Twilio's, "" when it was
    not reached."""
    spans = [(m.start(), m.end()) for m in _WORD.finditer(heard)]
    heard_keys = [_key(heard[a:b]) for a, b in spans]
    said_words = [text.split() for text in texts]
    said_keys = [[_key(w) for w in words] for words in said_words]
    owners, whole, first = (
        _by_count(said_keys, heard_keys) if _begins(said_keys, heard_keys)
        else _by_alignment(said_keys, heard_keys, [w for words in said_words for w in words]))
    out: list[str] = []
    for n, text in enumerate(texts):
        mine = [k for k, owner in enumerate(owners) if owner == n]
        if n in whole or any(owner > n for owner in owners):
            out.append(text.strip())
        elif mine:
            before = sum(len(words) for words in said_keys[:n])
            said = heard[spans[mine[0]][0]:spans[mine[-1]][1]].rstrip()
            if first > before:          # Twilio's words begin inside this text
                start = [m.start() for m in _WORD.finditer(text)][first - before]
                said = f"{text[:start].rstrip()} {said}"
            out.append(said.strip())
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


def heard_within(said: str, heard: str) -> bool:
    """Whether ``heard`` can be what the caller heard of ``said``: one begins the other
    (``begins_alike``), or the heard words are a run of the said words further on (a later
    chunk of the reply, the last word maybe cut inside)."""
    if begins_alike(said, heard):
        return True
    said_keys, heard_keys = _keys(said), _keys(heard)
    return any(_runs_at(said_keys, heard_keys, at)
               for at in range(1, len(said_keys) - len(heard_keys) + 1))


def _runs_at(said: list[str], heard: list[str], at: int) -> bool:
    return all(_same(said[at + k], word, last=k == len(heard) - 1)
               for k, word in enumerate(heard))


def _same(said: str, heard: str, *, last: bool) -> bool:
    """The same word, or (the last heard word) a start of it Twilio cut inside."""
    return said == heard or (last and bool(heard) and said.startswith(heard))


def _keys(text: str) -> list[str]:
    """The words to compare, those of punctuation alone left out (a dash Twilio may drop)."""
    return [key for key in map(_key, text.split()) if key]


# Each heard word's text, the texts heard whole whatever came after them, and where among the
# words sent the heard ones begin (all before it played).
Split = tuple[list[int], set[int], int]


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
    return [*owners, *[len(said) - 1] * past], {len(said) - 1} if past else set(), 0


def _by_alignment(said: list[list[str]], heard: list[str], raw: list[str]) -> Split:
    """The best of the walks (``_walk``) from the start and from where else the heard words
    may begin (``_starts``). Of walks that score alike the earliest is taken, and an exact
    run ends the search (nothing scores more): a phrase said twice is taken for its first
    saying, known to have played either way. ``raw``: the said words as sent."""
    flat = [w for words in said for w in words]
    places = [(n, i) for n, words in enumerate(said) for i in range(len(words))]
    unsaid = [not _sayable(key, word) for key, word in zip(flat, raw, strict=True)]
    ends = [word.endswith(_CLAUSE_ENDS) for word in raw]
    starts = sorted({0, *_starts(flat, ends, heard)})
    best: _Walk | None = None
    for start in starts:
        walk = _walk(said, flat, places, (unsaid, ends), heard, start,
                     -math.inf if best is None else best.score)
        if walk is not None and (best is None or walk.score > best.score):
            best = walk
            if best.score == len(heard):
                break
    assert best is not None             # the first walk is never cut short
    return best.owners, best.whole, best.first


def _starts(flat: list[str], ends: list[bool], heard: list[str]) -> set[int]:
    """Where the heard words may begin: where their first word was said; failing that
    (the chunk begins with a rendering), the clause start before each place where the
    first of them that was said at all was said."""
    first_said = next((word for word in heard if word in flat), None)
    places = [i for i, word in enumerate(flat) if word == first_said]
    if first_said == heard[0]:
        return set(places)
    clause, clause_of = 0, []
    for i, end in enumerate(ends):
        clause_of.append(clause)
        if end:
            clause = i + 1
    return {clause_of[i] for i in places}


class _Walk:
    __slots__ = ("first", "owners", "score", "whole")

    def __init__(self, first: int) -> None:
        self.owners: list[int] = []
        self.whole: set[int] = set()
        self.first = first              # the said word the first heard word stands for
        self.score = 0                  # heard words the same, less sent ones passed unsaid


def _walk(said: list[list[str]], flat: list[str], places: list[tuple[int, int]],
          marks: tuple[list[bool], list[bool]], heard: list[str], start: int,
          beat: float) -> _Walk | None:
    """Walk both in order from said word ``start``; where they part, go on from the nearest
    pair of equal words (a rendering replaces a few words with a few others), the heard
    words skipped over being the rendering of the said words skipped over. Nearest, not
    best overall: a common word of a later text must not draw a rendering of this one into
    it. Heard words before the first one matched render only the said words after the
    last clause end they pass (a chunk begins there). ``marks``: per said word, whether a
    voice leaves it unsaid, and whether it ends a clause. None once it cannot score more
    than ``beat``."""
    unsaid, ends = marks
    walk = _Walk(start)
    i, j = start, 0
    while j < len(heard):
        if walk.score + len(heard) - j <= beat:
            return None
        if i < len(flat) and _same(flat[i], heard[j], last=j == len(heard) - 1):
            n, word = places[i]
            walk.owners.append(n)
            if flat[i] == heard[j]:     # a word cut inside neither ends a text nor scores
                walk.score += 1
                if word == len(said[n]) - 1:
                    walk.whole.add(n)
            i, j = i + 1, j + 1
            continue
        skip_said, skip_heard = _resync(flat, heard, i, j)
        if not walk.owners and skip_heard and any(ends[i:i + skip_said - 1]):
            # a chunk begins after a clause end: the words up to it an earlier one said
            i = walk.first = max(k + 1 for k in range(i, i + skip_said - 1) if ends[k])
            continue
        if not walk.owners and not skip_heard:
            walk.first = i + skip_said  # not heard in this chunk: an earlier one said them
        else:                           # words sent that no heard word can have rendered
            walk.score -= max(0, skip_said - sum(unsaid[i:i + skip_said]) - skip_heard)
        if skip_said:
            owner = places[i][0]            # a rendering of the words it skips
        elif walk.owners:
            owner = walk.owners[-1]         # words added after the last one matched
        else:
            owner = places[min(i, len(flat) - 1)][0]
        walk.owners += [owner] * skip_heard
        i, j = i + skip_said, j + skip_heard
    return walk


def _sayable(key: str, word: str) -> bool:
    """Not punctuation alone, nor markup (SSML), which a voice leaves unsaid."""
    return bool(key) and "<" not in word and ">" not in word


def _resync(flat: list[str], heard: list[str], i: int, j: int) -> tuple[int, int]:
    """How many said and heard words to skip to the nearest equal pair; none: the rest of
    the heard words render the said word at ``i``."""
    for distance in range(1, MAX_RENDERING_WORDS + 1):
        for skip_said in range(distance + 1):
            at_said, at_heard = i + skip_said, j + distance - skip_said
            if at_said < len(flat) and at_heard < len(heard) and flat[at_said] == heard[at_heard]:
                return skip_said, distance - skip_said
    return (1 if i < len(flat) else 0), len(heard) - j
