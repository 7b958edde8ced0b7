"""The Fargate template's parameters and the app's settings agree: what the task definition
sets is something the app reads, what the app needs is set, and an optional feature the app
has (confirmation texts) can be turned on from the template, with what it needs besides.

The template is read offline and its intrinsic functions evaluated for given parameter values
(``tests.test_deploy.Resolver``), as the other template tests do.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.test_deploy import CLOUD, TEST_PARAMETERS, Resolver, _container, _template
from voiceagent.app.dotenv_file import OTHER_NAMES
from voiceagent.errors import SettingsError
from voiceagent.settings import Settings

pytestmark = pytest.mark.timeout(60)

SETTING_NAMES = {f.alias for f in Settings.model_fields.values() if f.alias}
ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
SMS_FROM = "+14155550100"


def _task(parameters: dict[str, Any]) -> tuple[dict[str, str], set[str]]:
    """The container's plain environment (name -> value, as ECS would pass it) and the names
    of its secrets."""
    template = _template(CLOUD)
    container = Resolver(template, {**TEST_PARAMETERS, **parameters}).resolve(
        _container(template))
    env = {item["Name"]: str(item["Value"]) for item in container["Environment"]}
    return env, {item["Name"] for item in container["Secrets"]}


def _rule_holds(name: str, parameters: dict[str, Any]) -> list[str]:
    """The AssertDescription of each assertion of rule ``name`` that fails for these values
    (none when its RuleCondition is false), as CloudFormation checks them before a change."""
    template = _template(CLOUD)
    rule = template["Rules"][name]
    resolver = Resolver(template, {**TEST_PARAMETERS, **parameters})
    if "RuleCondition" in rule and not resolver.resolve(rule["RuleCondition"]):
        return []
    return [assertion["AssertDescription"] for assertion in rule["Assertions"]
            if not resolver.resolve(assertion["Assert"])]


def test_every_variable_the_task_gets_is_one_the_app_reads() -> None:
    """A name the app does not read (a typo, a setting since renamed) would be set on every
    task and do nothing, silently."""
    env, secrets = _task({"TwilioSharedKeySecretArn":
                          "arn:aws:ssm:eu-west-1:111122223333:parameter/voiceagent/key"})
    unknown = sorted((set(env) | secrets) - SETTING_NAMES - OTHER_NAMES)
    assert not unknown, (f"the task definition sets {unknown}, which neither Settings "
                         "(voiceagent/settings.py) nor dotenv_file.OTHER_NAMES reads")


def test_every_setting_the_app_requires_is_set_by_the_template() -> None:
    """What ``Settings.from_env`` refuses to start without, for the store and model the
    template chooses, read from the code's own problems, not listed here: a setting made
    required later is caught too. The region is what Bedrock's start-up check requires."""
    env, secrets = _task({})
    try:
        Settings.from_env({"STORE": env["STORE"], "LLM": env["LLM"]})
    except SettingsError as err:
        required = {problem.split(":")[0] for problem in err.problems}
    else:
        required = set()
    assert required, "nothing is required any more: this test checks nothing"
    missing = sorted(required - {name for name, value in env.items() if value} - secrets)
    assert not missing, f"the app needs {missing}, which the task definition does not set"
    assert env["AWS_REGION"] == "eu-west-1"


def test_confirmation_texts_can_be_turned_on() -> None:
    """sendConfirmationSms needs TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN and TWILIO_SMS_FROM
    (voiceagent/tools/messaging.py); the template had no way to set the third."""
    parameter = _template(CLOUD)["Parameters"]["TwilioSmsFrom"]
    assert parameter["Default"] == ""                     # off unless asked for
    env, secrets = _task({"TwilioAccountSid": ACCOUNT_SID, "TwilioSmsFrom": SMS_FROM,
                          "NatGateway": "Single"})
    assert "TWILIO_AUTH_TOKEN" in secrets
    settings = Settings.from_env({**env, "TWILIO_AUTH_TOKEN": "from-the-secret"})
    assert (settings.twilio_account_sid, settings.twilio_sms_from) == (ACCOUNT_SID, SMS_FROM)
    off, _ = _task({})
    assert not Settings.from_env({**off, "TWILIO_AUTH_TOKEN": "x"}).twilio_sms_from


@pytest.mark.parametrize(("name", "good", "bad"), [
    ("TwilioSmsFrom", ["", SMS_FROM, "+447700900123"],
     ["14155550100", "+1 415 555 0100", "+0123", "+1415555010012345", "sender"]),
    ("TwilioAccountSid", ["", ACCOUNT_SID], ["AC123", "ac" + ACCOUNT_SID[2:], "SK" + "0" * 32]),
])
def test_twilio_parameters_refuse_what_twilio_would(name: str, good: list[str],
                                                    bad: list[str]) -> None:
    """Refused by CloudFormation before anything is created, not by Twilio on a caller's
    first text."""
    pattern = _template(CLOUD)["Parameters"][name]["AllowedPattern"]
    for value in good:
        assert re.fullmatch(pattern, value), value
    for value in bad:
        assert not re.fullmatch(pattern, value), value


def test_texts_need_the_account_and_a_way_to_twilio() -> None:
    """The tasks' subnets reach the internet only through the NAT gateway: without it each
    text would time out while the caller waits, so the stack refuses the combination."""
    rule = "TextMessagesNeedTheAccountAndTheInternet"
    assert _rule_holds(rule, {}) == []                                     # texts off
    assert _rule_holds(rule, {"TwilioAccountSid": ACCOUNT_SID, "TwilioSmsFrom": SMS_FROM,
                              "NatGateway": "Single"}) == []
    no_nat = _rule_holds(rule, {"TwilioAccountSid": ACCOUNT_SID, "TwilioSmsFrom": SMS_FROM})
    assert len(no_nat) == 1
    assert "NatGateway=Single" in no_nat[0]
    no_account = _rule_holds(rule, {"TwilioSmsFrom": SMS_FROM, "NatGateway": "Single"})
    assert len(no_account) == 1
    assert "TwilioAccountSid" in no_account[0]
    template = _template(CLOUD)
    assert "TwilioSmsFrom" in template["Parameters"]["NatGateway"]["Description"]
    routes = [r for r in template["Resources"].values() if r["Type"] == "AWS::EC2::Route"
              and r["Properties"].get("NatGatewayId")]
    assert routes
    assert all(r.get("Condition") == "UseNat" for r in routes)
