"""The ``.env`` file of the current folder, read into the environment before the settings.

``voiceagent serve``, ``voiceagent check`` and the ``config``, ``calls`` and ``store`` commands
all call ``load_dotenv_file`` first, so a check or a ``config load`` sees exactly the settings
the service would. A variable already set in the environment wins
over the file (a container's or a shell's value is never overridden by a stale file), and a
missing file is not an error: production sets everything in the environment.
"""

from __future__ import annotations

from pathlib import Path

from dotenv import load_dotenv

DOTENV_NAME = ".env"


def load_dotenv_file(path: Path | None = None) -> Path | None:
    """Read ``path`` (default ``./.env``) into ``os.environ`` without overriding what is set;
    return the file read, or None when there is none."""
    target = Path(DOTENV_NAME) if path is None else path
    if not target.is_file():
        return None
    load_dotenv(target, override=False, encoding="utf-8")
    return target
