"""Reading use-case and profile files: YAML in, validated models out, or one ConfigError
that names the file, the key path and what to do (a typo fails at load time, not on a call).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from voiceagent.errors import ConfigError
from voiceagent.usecase_errors import first_problem
from voiceagent.usecase_schema import Profile, ProfilesFile, UseCase

M = TypeVar("M", bound=BaseModel)


def _key_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def parse_model(model: type[M], data: Any, source: str,
                context: Mapping[str, Any] | None = None) -> M:
    """Validate ``data``; one problem (``first_problem``) becomes a ConfigError naming source
    and key path. ``context``: ``STORED`` for a use case read back from the table."""
    try:
        return model.model_validate(data, context=context)
    except ValidationError as err:
        loc, problem = first_problem(err.errors(), model)
        raise ConfigError(source, _key_path(loc), problem) from None


def read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(str(path), "", f"cannot read: {err.strerror}") from None
    except UnicodeDecodeError as err:          # UTF-16 ("Unicode" in Notepad), Latin-1, ...
        raise ConfigError(str(path), "", f"not UTF-8 text (byte {err.start} is not UTF-8); "
                                         "save the file as UTF-8") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(str(path), where, f"not valid YAML: {err}") from None


def load_use_case_file(path: Path) -> UseCase:
    data = read_yaml(path)
    if not isinstance(data, Mapping):
        raise ConfigError(str(path), "", "must be a YAML mapping of use-case keys")
    return parse_model(UseCase, data, str(path))


def load_profiles_file(path: Path) -> tuple[Profile, ...]:
    data = read_yaml(path)
    return parse_model(ProfilesFile, data or {}, str(path)).profiles
