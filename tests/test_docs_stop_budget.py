"""The stop's budget as the documents give it is the code's: README.md, docs/deploy.md and the
SAM template's comment at StopTimeout quote it worked out (DRAIN_TIMEOUT_S + END_GRACE_S +
FLUSH_TIMEOUT_S + 7 s, 112 s with the defaults, the flushes over at second 107, the watchdog
12 s after the drain). test_deploy checks the budget itself against StopTimeout; an operator
sizing their own stop timeout reads these figures, so a change to ``stop_budget`` or the
watchdog that leaves them behind fails here, naming the file and the figure."""

from __future__ import annotations

from pathlib import Path

import pytest

from voiceagent.app.server import WATCHDOG_S
from voiceagent.app.stop_budget import CLOSE_S, GRACEFUL_S, budget_s
from voiceagent.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DEPLOY = ROOT / "docs" / "deploy.md"
SAM = ROOT / "sam" / "cloud-deploy-infra-template.yml"
STOP_TIMEOUT_S = 120            # Fargate's maximum, the template's StopTimeout (test_deploy)


def _words(path: Path) -> str:
    """The file's text with its line breaks and indents as single spaces, as it reads."""
    return " ".join(path.read_text(encoding="utf-8").replace("#", " ").split())


def _figures() -> dict[str, str]:
    defaults = Settings.from_env({"VALIDATE_SIGNATURES": "false"})
    budget = budget_s(defaults)
    return {
        "sum": f"DRAIN_TIMEOUT_S + END_GRACE_S + FLUSH_TIMEOUT_S + {GRACEFUL_S + CLOSE_S:g}",
        "budget": f"{budget:g} s",
        "flushes over": f"second {budget - CLOSE_S:g}",
        "left of StopTimeout": f"{STOP_TIMEOUT_S - budget:g} s inside",
        "watchdog": f"{GRACEFUL_S + WATCHDOG_S:g} s after",
        "watchdog's own wait": f"then a {WATCHDOG_S:g} s watchdog",
        "sam sum": (f"DRAIN_TIMEOUT_S {defaults.drain_timeout_s:g} + goodbye "
                    f"{defaults.end_grace_s:g} + flush {defaults.flush_timeout_s:g} + "
                    f"{GRACEFUL_S + CLOSE_S:g} = {budget:g} s"),
    }


@pytest.mark.parametrize(("path", "figures"), [
    pytest.param(README, ["sum", "budget", "watchdog"], id="README"),
    pytest.param(DEPLOY, ["sum", "budget", "flushes over", "left of StopTimeout", "watchdog",
                          "watchdog's own wait"], id="deploy"),
    pytest.param(SAM, ["sam sum"], id="sam"),
])
def test_the_documents_quote_the_stop_budget_the_code_has(path: Path,
                                                          figures: list[str]) -> None:
    text, expected = _words(path), _figures()
    missing = {name: expected[name] for name in figures if expected[name] not in text}
    assert not missing, (f"{path.relative_to(ROOT)} no longer says {missing}, the stop's "
                         "figures from voiceagent/app/stop_budget.py and server.py: update it")
