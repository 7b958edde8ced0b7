"""What a model round pays to build its request's history: a deep copy of the whole
conversation (the first design) against the history's own messages, shared (now: a message
is never changed in place, so requests need no copy; before that, one copy of each message
was kept for requests until it changed).

A call of N turns is replayed into a ``History``: each turn the caller speaks, the model asks
for a tool every third turn (toolUse, then its toolResult), and answers. At every model round
the request's messages are taken both ways; the figure is CPU time per round, on the
prompt -> first token path, by conversation length. Nothing else runs.

    python benchmarks/bench_history.py --turns 10 40 100
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from actors.history import History
from voiceagent.llm.base import Message

REPLY = "Sure, we have that today, and it comes with a side of garlic bread and a drink."


def deep_copy_each_round(history: History) -> tuple[Message, ...]:
    """The earlier ``for_request``: the whole history copied, every round."""
    return tuple(copy.deepcopy(list(history._messages)))


def replay(turns: int, take: Callable[[History], tuple[Message, ...]]
           ) -> tuple[float, int, int]:
    """CPU seconds spent taking requests, model rounds, messages at the end."""
    history = History()
    history.add_assistant("Hello, thanks for calling Test Pizza.")
    rounds, spent = 0, 0.0
    for turn in range(turns):
        history.add_user_text(f"I would like item number {turn} please")
        started = time.process_time()
        take(history)
        spent += time.process_time() - started
        rounds += 1
        if turn % 3 == 2:
            use = {"toolUseId": f"tu_{turn}", "name": "lookupMenu",
                   "input": {"item": turn, "size": "large", "extras": ["cheese", "olives"]}}
            history.add_assistant("Let me check that.", [use])
            history.add_tool_results([{"toolResult": {
                "toolUseId": f"tu_{turn}", "status": "success",
                "content": [{"json": {"available": True, "price": 12.5, "minutes": 20}}]}}])
            started = time.process_time()
            take(history)
            spent += time.process_time() - started
            rounds += 1
        history.add_assistant(REPLY)
        history.take_sealed()
    return spent, rounds, len(history)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--turns", type=int, nargs="+", default=[10, 40, 100])
    parser.add_argument("--repeat", type=int, default=200, help="calls replayed per size")
    args = parser.parse_args(argv)
    print(f"{'turns':>6} {'messages':>9} {'deep copy us/round':>19} {'shared':>12} "
          f"{'ratio':>6}")
    for turns in args.turns:
        figures, messages = [], 0
        for take in (deep_copy_each_round, History.for_request):
            spent, rounds = 0.0, 0
            for _ in range(args.repeat):
                s, r, messages = replay(turns, take)
                spent, rounds = spent + s, rounds + r
            figures.append(spent / rounds * 1e6)
        print(f"{turns:>6} {messages:>9} {figures[0]:>19.1f} {figures[1]:>12.1f} "
              f"{figures[1] / figures[0]:>6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
