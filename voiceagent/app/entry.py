"""The ``voiceagent`` command's entry point (``python -m voiceagent`` and the installed
script): the CLI takes a second or more to import (trio, pydantic, httpx, the commands), and
a Ctrl-C meanwhile raised KeyboardInterrupt out of the import, a traceback for a person who
only changed their mind. Importing nothing heavy itself, this catches it: exit 130 and one
line, as for a Ctrl-C later on. An import that fails keeps its traceback: only the
interrupt is caught.
"""

from __future__ import annotations

import sys

INTERRUPTED = 128 + 2          # as a shell reports a command SIGINT ended


def main() -> int:
    try:
        from voiceagent.app.cli import main as run_command

        return run_command()
    except KeyboardInterrupt:
        # the CLI itself returns 130 quietly for a Ctrl-C once it runs: this one came first
        print("voiceagent: interrupted", file=sys.stderr)
        return INTERRUPTED
