"""Which of a use case's validation errors to report, and in what words.

A file is reported by one problem, named by its key path. Pydantic lists them in field order,
so a misspelt required key (``promt:``) came out as ``prompt: Field required`` while the key
actually written, the cause, went unsaid; a missing key is now reported as the unknown key
beside it that looks like it, with the name it should have. Text that YAML read as a
boolean (``code: no``, Norwegian) says to quote it: "a valid string" did not say why.
"""

from __future__ import annotations

from collections.abc import Sequence
from difflib import get_close_matches

from pydantic_core import ErrorDetails

from voiceagent.usecase_relay import KEY_PROBLEM, quote_it

UNKNOWN_KEY = "unknown key (check the spelling; see config/README.md for the keys)"
CLOSE = 0.7


def first_problem(errors: Sequence[ErrorDetails]) -> tuple[tuple[int | str, ...], str]:
    """The key path and the words of the problem to report."""
    for missing in (e for e in errors if e["type"] == "missing" and e["loc"]):
        parent, wanted = tuple(missing["loc"][:-1]), missing["loc"][-1]
        unknown = {str(e["loc"][-1]): tuple(e["loc"]) for e in errors
                   if e["type"] == "extra_forbidden" and tuple(e["loc"][:-1]) == parent}
        for written in get_close_matches(str(wanted), sorted(unknown), n=1, cutoff=CLOSE):
            return unknown[written], (f"unknown key (did you mean {wanted}? it is required; "
                                      "see config/README.md for the keys)")
    first = errors[0]
    loc = tuple(first["loc"])
    if first["type"] == "extra_forbidden":
        return loc, UNKNOWN_KEY
    if first["type"] == KEY_PROBLEM:
        return loc + tuple(first.get("ctx", {}).get("at", ())), first["msg"]
    if first["type"] == "string_type" and isinstance(first["input"], bool):
        key = loc[-1] if loc and isinstance(loc[-1], str) else None
        return loc, f"must be text, not true/false; {quote_it(first['input'], key)}"
    return loc, first["msg"]
