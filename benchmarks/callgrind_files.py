"""Callgrind's output files, read by function and object (``bench_instructions.py``)."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

BELOW_MAIN = "(below main)"     # callgrind's name for what runs main: all is under it


@dataclass
class Dump:
    """One callgrind dump: its total, each function's own instructions, by (function,
    object), and the instructions of the calls each function made, by callee."""

    total: int = 0
    own: Counter[tuple[str, str]] = field(default_factory=Counter)
    calls: Counter[tuple[tuple[str, str], tuple[str, str]]] = field(default_factory=Counter)
    # calls still under way at the dump (``calls=0``): what they cost up to it
    underway: Counter[tuple[tuple[str, str], tuple[str, str]]] = field(
        default_factory=Counter)

    def inclusive(self, function: tuple[str, str]) -> int:
        """Its own instructions and its calls' (exact for a function that is never on the
        stack twice, as the collector: it cannot start inside itself)."""
        return self.own[function] + sum(cost for (caller, callee), cost in self.calls.items()
                                        if caller == function and callee != function)

    def entered(self) -> Counter[str]:
        """By object: the instructions of the calls into it from another object (what its
        entry points cost, what they called back included)."""
        into: Counter[str] = Counter()
        for (caller, callee), cost in self.calls.items():
            if caller[1] != callee[1]:
                into[callee[1]] += cost
        return into


def parse_callgrind(text: str) -> Dump:
    """A callgrind output file (its format: valgrind's docs, "Callgrind Format
    Specification"): names may be compressed to ``(id)`` after their first use; a cost line
    after ``calls=`` is that call's inclusive cost, any other is the current function's own.
    Files, lines and positions are not kept: the costs are by function and object."""
    dump = Dump()
    names: dict[str, dict[str, str]] = {"ob": {}, "fn": {}}
    obj = function = ""
    callee_obj: str | None = None
    callee = ""
    in_call = finished = False

    def name(table: str, value: str) -> str:
        value = value.strip()
        if value.startswith("("):
            ident, _, rest = value.partition(")")
            if rest.strip():
                names[table][ident] = os.path.basename(rest.strip())
            return names[table].get(ident, ident)
        return os.path.basename(value)

    for line in text.splitlines():
        if not line:
            continue
        head = line[0]
        if head.isdigit() or head in "+-*":
            parts = line.split()
            cost = int(parts[1]) if len(parts) > 1 else 0
            if in_call:
                key = (callee, callee_obj if callee_obj is not None else obj)
                if finished and function != BELOW_MAIN:
                    dump.calls[(function, obj), key] += cost
                elif function != BELOW_MAIN:
                    dump.underway[(function, obj), key] += cost
                in_call, callee_obj = False, None
            else:
                dump.own[function, obj] += cost
        elif line.startswith("ob="):
            obj = name("ob", line[3:])
        elif line.startswith("fn="):
            function, callee_obj = name("fn", line[3:]), None
        elif line.startswith("cob="):
            callee_obj = name("ob", line[4:])
        elif line.startswith("cfn="):
            callee = name("fn", line[4:])
        elif line.startswith("calls="):
            # "calls=0": a call still under way at the dump (main, the loop, the dump's
            # own caller): its cost is the whole dump's, not a call made in it; so is the
            # call of main's caller from below it, which callgrind counts as made
            in_call, finished = True, line[6:].split()[0] != "0"
        elif line.startswith(("totals:", "summary:")):
            dump.total = int(line.split()[1])
    return dump


def read_dump(path: Path) -> Dump:
    dump = parse_callgrind(path.read_text(errors="replace"))
    if not dump.total and not dump.own:
        raise SystemExit(f"{path}: a callgrind dump without a totals line: was it cut short?")
    return dump
