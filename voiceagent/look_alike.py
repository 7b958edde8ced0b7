"""The "did you mean" of every error message: which known name a misspelt one looks like.

One rule for every place a name or value is written by hand (use-case keys and values,
relay attributes, .env setting names, tool names, TOOLS modules, JSON Schema types): by
difflib's ratio, or else one slip of the fingers. The ratio alone misses the short words,
where one slip is a large share of the word (``sya`` for ``say`` scores 0.67, ``hgih`` for
``high`` 0.5, ``HSOT`` for ``HOST`` 0.5), and each site called difflib with a cut-off of its
own, so the same typo was told its fix in one file and not in another.
"""

from __future__ import annotations

from collections.abc import Iterable
from difflib import get_close_matches

CLOSE = 0.7                 # difflib's ratio; a site where false hints cost more asks more
SHORTEST_SLIP = 3           # a word under this is one slip from half the short words


def look_alike(written: str, known: Iterable[str], *, cutoff: float = CLOSE) -> str | None:
    """The one of ``known`` that ``written`` most looks like, as ``known`` spells it, or None.

    Letter case is no difference (``Prompt`` for ``prompt``, ``checkorderstatus`` for
    ``CheckOrderStatus``): the answer is the spelling to use. Two known names that differ
    only in case: the first in sorted order."""
    by_folded: dict[str, str] = {}
    for name in sorted(known):
        by_folded.setdefault(name.casefold(), name)
    folded = written.casefold()
    if folded in by_folded:
        return by_folded[folded]
    close = get_close_matches(folded, list(by_folded), n=1, cutoff=cutoff)
    if close:
        return by_folded[close[0]]
    if len(folded) < SHORTEST_SLIP:
        return None
    return next((by_folded[name] for name in sorted(by_folded) if one_slip(folded, name)),
                None)


def one_slip(a: str, b: str) -> bool:
    """``a`` and ``b`` differ by one edit, two neighbouring letters swapped counted as one."""
    if abs(len(a) - len(b)) > 1 or a == b:
        return False
    start = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
                 min(len(a), len(b)))
    if len(a) == len(b):
        one_wrong = a[start + 1:] == b[start + 1:]
        two_swapped = (a[start:start + 2] == b[start:start + 2][::-1]
                       and a[start + 2:] == b[start + 2:])
        return one_wrong or two_swapped
    shorter, longer = (a, b) if len(a) < len(b) else (b, a)
    return shorter[start:] == longer[start + 1:]                          # one missing
