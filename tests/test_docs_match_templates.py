"""The deploy documents say what the SAM templates have: README's parameter tables list every
parameter of each template and nothing else, and the alarms (their descriptions in the
template, docs/deploy.md's table) name only parameters, metrics and codes that exist.

The cloud template's parameter table once left out six parameters (TwilioAccountSid,
LogLevel, VpcCidr, LogRetentionDays, the load balancer's two), and an alarm's first check
named a parameter (`MaxTasks`) the template never had. Markdown is parsed as in
test_docs_match_code: table rows start with ``|``, names are the first column's backticked
words.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.test_deploy import CLOUD, LOCAL, _template
from tests.test_docs_match_code import README, TICKED, _section, _tables

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent
DEPLOY_DOC = ROOT / "docs" / "deploy.md"
# README's section that deploys each template, and holds its parameter table
PARAMETER_TABLES = [pytest.param(CLOUD, "### Path 2: AWS Fargate", id="cloud"),
                    pytest.param(LOCAL, "### Path 1: your machine, with a tunnel",
                                 id="local-dev")]
CAMEL = re.compile(r"\b[A-Z][a-z0-9]+(?:[A-Z][a-z0-9]*)+\b")     # MaxTaskCount, DynamoDB
PRODUCTS = {"CloudWatch", "DynamoDB"}                              # names, not identifiers


def _documented_parameters(section: str) -> list[str]:
    section_text = _section(README, section)
    return [name.split("=")[0] for _, rows in _tables(section_text, "parameter")
            for row in rows for name in TICKED.findall(row[0])]


@pytest.mark.parametrize(("path", "section"), PARAMETER_TABLES)
def test_every_template_parameter_is_in_the_readme_table(path: Path, section: str) -> None:
    """`sam deploy --guided` asks for each one; README is where a user reads what it means."""
    parameters = set(_template(path)["Parameters"])
    documented = _documented_parameters(section)
    missing = sorted(parameters - set(documented))
    assert not missing, (
        f"{path.relative_to(ROOT)} has the parameters {missing}, which README.md's parameter "
        f"table ({section}: | parameter | meaning |) does not list: add them to a row's first "
        "column, backticked")


@pytest.mark.parametrize(("path", "section"), PARAMETER_TABLES)
def test_every_parameter_the_readme_table_names_exists(path: Path, section: str) -> None:
    parameters = set(_template(path)["Parameters"])
    unknown = sorted(set(_documented_parameters(section)) - parameters)
    assert not unknown, (f"README.md's parameter table ({section}) lists {unknown}, which "
                         f"{path.relative_to(ROOT)} does not have: fix or remove them")


# ------------------------------------------------------------------------------- alarms


def _strings(node: Any) -> Iterator[str]:
    """Every string in a template node, keys included, alarm descriptions left out (they are
    what is checked)."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            if key != "AlarmDescription":
                yield str(key)
                yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)
    elif node is not None:
        yield str(node)


def _code_literals() -> set[str]:
    """String constants in voiceagent's code: metric names, error codes."""
    found = set()
    for path in (ROOT / "voiceagent").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                found.add(node.value)
    return found


def _known_names() -> set[str]:
    template = _template(CLOUD)
    words = {w for text in _strings(template) for w in re.findall(r"\w+", text)}
    return words | _code_literals() | PRODUCTS


def _alarms() -> dict[str, str]:
    """Each alarm's name after ``<stack>-`` -> its description (``${Parameter}`` as the name)."""
    found = {}
    for resource in _template(CLOUD)["Resources"].values():
        if resource["Type"] != "AWS::CloudWatch::Alarm":
            continue
        properties = resource["Properties"]
        name = properties["AlarmName"]["Fn::Sub"].removeprefix("${AWS::StackName}-")
        text = properties["AlarmDescription"]
        text = text["Fn::Sub"] if isinstance(text, Mapping) else text
        found[name] = re.sub(r"\$\{(\w+)\}", r"\1", text)
    return found


def _alarm_rows() -> dict[str, list[str]]:
    section = _section(DEPLOY_DOC, "## 4. Alarms")
    rows = [row for header, table in _tables(section, "alarm (`<stack>-…`)") for row in table]
    assert rows, "docs/deploy.md has no alarm table (| alarm (`<stack>-…`) | ...) any more"
    return {TICKED.findall(row[0])[0]: row for row in rows}


def test_docs_deploy_has_a_row_for_each_alarm_and_no_other() -> None:
    template, documented = set(_alarms()), set(_alarm_rows())
    assert documented == template, (
        f"docs/deploy.md's alarm table lists {sorted(documented)}, the template has "
        f"{sorted(template)}: one row per alarm, named as after `<stack>-`")


def test_the_alarms_name_only_what_exists() -> None:
    """A parameter, metric or error code an alarm's first check names must be one the operator
    can find: a template parameter or resource, a metric the template reads, a name the app's
    code uses (its EMF metrics, the error codes it logs)."""
    known = _known_names()
    wrong = [f"the {name} alarm's description: {word}"
             for name, text in _alarms().items() for word in CAMEL.findall(text)
             if word not in known]
    wrong += [f"docs/deploy.md, the {name} row: {word}"
              for name, row in _alarm_rows().items()
              for word in TICKED.findall(" | ".join(row[1:]))
              if CAMEL.fullmatch(word) and word not in known]
    assert not wrong, ("alarms name what neither the template nor voiceagent's code has "
                       "(a renamed parameter?): " + "; ".join(wrong))
