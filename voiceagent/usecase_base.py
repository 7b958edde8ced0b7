"""What every part of the use-case schema builds on: the strict model, and the error that
names a key deeper than where its validator sits.

Apart from ``usecase_relay`` (which re-exports them) so that ``usecase_lines`` can use them
while ``usecase_relay``'s ``<Language>`` entries hold lines.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from pydantic_core import PydanticCustomError

# A validation error whose key path goes deeper than where the validator sits: ``at`` is
# appended to pydantic's location, so a bad key inside a mapping is named itself.
KEY_PROBLEM = "voiceagent_key_problem"


def key_problem(at: tuple[str | int, ...], problem: str) -> PydanticCustomError:
    return PydanticCustomError(KEY_PROBLEM, "{problem}", {"problem": problem, "at": at})


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
