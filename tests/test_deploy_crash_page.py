"""The crash page: a task of the service that stopped without being asked to pages the alarm
topic through an EventBridge rule, and the topic and its key let both of their publishers in.

A crashed task used to page no one: ECS replaced it, its calls reconnected, and with another
healthy task no alarm fired. Nothing here can be tried against AWS, so the rule's pattern is
run against events shaped as ECS documents them (``ECS Task State Change``: ``lastStatus``,
``stopCode``, ``stoppedReason``, ``containers[].exitCode``), with the subset of EventBridge's
matching the pattern uses, and the policies are read for what each publisher needs: a statement
in the topic's policy (which replaces SNS's default one) and one in the key's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import pytest

from tests.test_deploy import CLOUD, TEST_PARAMETERS, Resolver, _as_list, _template

pytestmark = pytest.mark.timeout(60)

CLUSTER = "<Cluster.Arn>"               # what Resolver makes of !GetAtt Cluster.Arn
GROUP = "service:<Service.Name>"         # of !Sub "service:${Service.Name}"
TASK = "arn:aws:ecs:eu-west-1:111122223333:task/voiceagent-prod/0123456789abcdef"
TARGET_GROUP = "arn:aws:elasticloadbalancing:eu-west-1:111122223333:targetgroup/va/abc"


def _resources() -> dict[str, Any]:
    return _template(CLOUD)["Resources"]  # type: ignore[no-any-return]


class _Resolver(Resolver):
    """Resolver, with a log group's Ref as the name it is given (the page names it)."""

    def ref(self, name: str) -> Any:
        resource = self.template.get("Resources", {}).get(name, {})
        if resource.get("Type") == "AWS::Logs::LogGroup":
            return self.resolve(resource["Properties"]["LogGroupName"])
        return super().ref(name)


def _resolved(name: str) -> dict[str, Any]:
    template = _template(CLOUD)
    return _Resolver(template, TEST_PARAMETERS).resolve(  # type: ignore[no-any-return]
        template["Resources"][name]["Properties"])


def _rule_name() -> str:
    rules = [name for name, r in _resources().items() if r["Type"] == "AWS::Events::Rule"]
    assert rules == ["TaskCrashedRule"], rules
    return rules[0]


# ------------------------------------------------------------------------------- the pattern

def _value_matches(condition: Any, value: Any) -> bool:
    if not isinstance(condition, Mapping):
        return bool(condition == value)
    (operator, argument), = condition.items()
    if operator == "prefix":
        return isinstance(value, str) and value.startswith(argument)
    raise AssertionError(f"the pattern uses {operator!r}, which this test cannot evaluate: "
                         "teach _value_matches EventBridge's meaning of it")


def _field_matches(conditions: list[Any], value: Any) -> bool:
    """A field holds if one of its conditions matches the value, or, for an array, one of its
    elements (EventBridge matches arrays element by element); an absent field never does."""
    if value is None:
        return False
    values = value if isinstance(value, list) else [value]
    return any(_value_matches(c, v) for c in conditions for v in values)


def _matches(pattern: Mapping[str, Any], event: Any) -> bool:
    if isinstance(event, list):
        return any(_matches(pattern, element) for element in event)
    if not isinstance(event, Mapping):
        return False
    for key, condition in pattern.items():
        if key == "$or":
            if not any(_matches(branch, event) for branch in condition):
                return False
        elif isinstance(condition, Mapping):
            if not _matches(condition, event.get(key)):
                return False
        elif not _field_matches(condition, event.get(key)):
            return False
    return True


def _event(stop_code: str | None, reason: str, exit_code: int | None = None, *,
           container_reason: str | None = None, last_status: str = "STOPPED",
           group: str = GROUP, cluster: str = CLUSTER) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "voiceagent", "lastStatus": last_status,
                                 "taskArn": TASK}
    if exit_code is not None:
        container["exitCode"] = exit_code
    if container_reason is not None:
        container["reason"] = container_reason
    detail: dict[str, Any] = {
        "clusterArn": cluster, "group": group, "taskArn": TASK, "lastStatus": last_status,
        "desiredStatus": "STOPPED", "stoppedReason": reason, "containers": [container],
        "stoppedAt": "2026-12-06T13:50:01.123Z",
        "taskDefinitionArn": "arn:aws:ecs:eu-west-1:111122223333:task-definition/va:7"}
    if stop_code is not None:
        detail["stopCode"] = stop_code
    return {"version": "0", "source": "aws.ecs", "detail-type": "ECS Task State Change",
            "account": "111122223333", "region": "eu-west-1", "resources": [TASK],
            "detail": detail}


ESSENTIAL = "Essential container in task exited"
DEPLOY = "Scaling activity initiated by (deployment ecs-svc/1234567890123456789)"
PAGED = {
    "out of memory": _event("EssentialContainerExited", ESSENTIAL, 137,
                            container_reason="OutOfMemoryError: Container killed due to "
                                             "memory usage"),
    "crash": _event("EssentialContainerExited", ESSENTIAL, 1),
    "start-up fault": _event("EssentialContainerExited", ESSENTIAL, 2),
    "exited by itself": _event("EssentialContainerExited", ESSENTIAL, 0),
    "image": _event("TaskFailedToStart", "CannotPullContainerError: pull image manifest has "
                    "been retried 5 time(s): failed to resolve ref 111122223333.dkr.ecr..."),
    "secret": _event("TaskFailedToStart", "ResourceInitializationError: unable to pull "
                     "secrets or registry auth: execution resource retrieval failed"),
    "hung, ELB": _event("ServiceSchedulerInitiated",
                        f"Task failed ELB health checks in (target-group {TARGET_GROUP})", 137),
    "hung, container check": _event("ServiceSchedulerInitiated",
                                    "Task failed container health checks", 137),
}
NOT_PAGED = {
    "deploy": _event("ServiceSchedulerInitiated", DEPLOY, 0),
    "deploy, killed at StopTimeout": _event("ServiceSchedulerInitiated", DEPLOY, 137),
    "stopped by hand": _event("UserInitiated", "Task stopped by user", 0),
    "Fargate maintenance": _event("TerminationNotice", "Task is being retired", 0),
    "Fargate host": _event("InfrastructureHealth", "Task stopped: underlying host", 137),
    "still stopping": _event("EssentialContainerExited", ESSENTIAL, 1, last_status="RUNNING"),
    "another service": _event("EssentialContainerExited", ESSENTIAL, 1, group="service:other"),
    "a standalone task": _event("EssentialContainerExited", ESSENTIAL, 1, group="family:va"),
    "another cluster": _event("EssentialContainerExited", ESSENTIAL, 1,
                              cluster="arn:aws:ecs:eu-west-1:111122223333:cluster/other"),
    "no stop code": _event(None, ESSENTIAL, 1),
}


@pytest.mark.parametrize("name", sorted(PAGED))
def test_a_task_that_stopped_unasked_pages(name: str) -> None:
    pattern = _resolved(_rule_name())["EventPattern"]
    assert _matches(pattern, PAGED[name]), f"{name}: {json.dumps(PAGED[name]['detail'])}"


@pytest.mark.parametrize("name", sorted(NOT_PAGED))
def test_a_stop_that_was_asked_for_or_another_task_does_not_page(name: str) -> None:
    pattern = _resolved(_rule_name())["EventPattern"]
    assert not _matches(pattern, NOT_PAGED[name]), (
        f"{name} would page: {json.dumps(NOT_PAGED[name]['detail'])}")


def test_the_rule_watches_this_services_cluster() -> None:
    """The pattern's cluster and group are this stack's, not a copy that could drift."""
    pattern = _resources()[_rule_name()]["Properties"]["EventPattern"]
    assert pattern["detail"]["clusterArn"] == [{"Fn::GetAtt": ["Cluster", "Arn"]}]
    assert pattern["detail"]["group"] == [{"Fn::Sub": "service:${Service.Name}"}]


# ------------------------------------------------------------------------------- the message

def _target() -> dict[str, Any]:
    target, = _resolved(_rule_name())["Targets"]
    return target  # type: ignore[no-any-return]


def _path(event: Any, path: str) -> Any:
    """A JSON path of the form EventBridge's InputPathsMap takes here: $.a.b[0].c"""
    assert path.startswith("$."), path
    node = event
    for part in path[2:].split("."):
        name, index = re.fullmatch(r"([\w-]+)(?:\[(\d+)\])?", part).groups()  # type: ignore[union-attr]
        node = node.get(name) if isinstance(node, Mapping) else None
        if index is not None:
            node = node[int(index)] if isinstance(node, list) and len(node) > int(index) else None
    return node


def _transform(event: Mapping[str, Any]) -> str:
    """EventBridge's input transformer, for a template that is a JSON string: each <name> is
    replaced by its path's value, unescaped, and a name whose path is not in the event by
    nothing; what is sent is the string's content."""
    transformer = _target()["InputTransformer"]
    paths, template = transformer["InputPathsMap"], transformer["InputTemplate"]
    assert len(paths) <= 100
    assert len(template) <= 8192
    names = set(re.findall(r"<([\w.-]+)>", template))
    assert names <= set(paths), f"the template uses {sorted(names - set(paths))}, not defined"
    assert set(paths) <= names, f"{sorted(set(paths) - names)} are defined and never said"

    def one(match: re.Match[str]) -> str:
        value = _path(event, paths[match.group(1)])
        return "" if value is None else str(value)
    text = json.loads(re.sub(r"<([\w.-]+)>", one, template))
    assert isinstance(text, str), "the template must be a JSON string: the page is one line"
    return text


def test_the_page_says_what_stopped_why_and_where_to_look() -> None:
    message = _transform(PAGED["out of memory"])
    for said in (TASK, "EssentialContainerExited", ESSENTIAL, "137", "OutOfMemoryError",
                 "2026-12-06T13:50:01.123Z"):
        assert said in message, f"the page leaves out {said!r}: {message}"
    assert message.startswith("voiceagent-prod: ")                    # which stack
    assert "First check:" in message                                 # as the alarms do
    assert "/voiceagent/voiceagent-prod/service" in message          # the log group
    assert "voiceagent/voiceagent/" in message                       # the task's stream
    assert "${" not in message


def test_a_task_that_never_ran_still_gets_its_page() -> None:
    """No container exit code in the event: the page is still built, with the reason."""
    message = _transform(PAGED["image"])
    assert "TaskFailedToStart" in message
    assert "CannotPullContainerError" in message
    assert "<" not in message, message


# ------------------------------------------------------------------------------- the way in

def _publishers() -> dict[str, str]:
    """Each service principal the template has publish to AlarmTopic -> who."""
    found = {}
    for name, resource in _resources().items():
        properties = resource.get("Properties", {})
        if resource["Type"] == "AWS::CloudWatch::Alarm" and {"Ref": "AlarmTopic"} in (
                properties.get("AlarmActions", []) + properties.get("OKActions", [])):
            found["cloudwatch.amazonaws.com"] = name
        if resource["Type"] == "AWS::Events::Rule" and any(
                t["Arn"] == {"Ref": "AlarmTopic"} for t in properties.get("Targets", [])):
            found["events.amazonaws.com"] = name
    return found


def _statements_for(statements: list[dict[str, Any]], service: str) -> list[dict[str, Any]]:
    return [s for s in statements if s["Effect"] == "Allow"
            and service in _as_list(s.get("Principal", {}).get("Service", []))]


def _topic_policy() -> dict[str, Any]:
    policies = [name for name, r in _resources().items() if r["Type"] == "AWS::SNS::TopicPolicy"]
    assert policies, ("AlarmTopic has SNS's default policy, which lets no EventBridge rule "
                      "publish: the crash page would be refused")
    policy, = (_resolved(name) for name in policies)
    assert policy["Topics"] == ["<AlarmTopic>"]
    return policy  # type: ignore[no-any-return]


def test_both_publishers_are_in_the_topics_policy() -> None:
    assert set(_publishers()) == {"cloudwatch.amazonaws.com", "events.amazonaws.com"}
    statements = _topic_policy()["PolicyDocument"]["Statement"]
    for statement in statements:
        # the policy replaces SNS's default one: nothing in it may be wider than its publishers
        assert set(statement["Principal"]) == {"Service"}, statement
        assert _as_list(statement["Action"]) == ["sns:Publish"], statement
        assert statement["Resource"] == "<AlarmTopic>", statement
    for service in _publishers():
        assert _statements_for(statements, service), f"{service} may not publish to AlarmTopic"


def test_cloudwatch_may_publish_for_this_stacks_alarms_only() -> None:
    """The alarms relied on the default policy; now they need their own statement, and its
    aws:SourceArn (an alarm's ARN names its account) keeps other accounts' and other stacks'
    alarms out. Re:Post's "not receiving SNS for an alarm" gives this form."""
    cloudwatch, = _statements_for(_topic_policy()["PolicyDocument"]["Statement"],
                                  "cloudwatch.amazonaws.com")
    condition = cloudwatch["Condition"]
    assert set(condition) == {"ArnLike"}, condition
    pattern = condition["ArnLike"]["aws:SourceArn"]
    wildcard = re.compile(re.escape(pattern).replace(r"\*", ".*"))
    resolver = Resolver(_template(CLOUD), TEST_PARAMETERS)
    names = [resolver.resolve(r["Properties"]["AlarmName"]) for r in _resources().values()
             if r["Type"] == "AWS::CloudWatch::Alarm"]
    for name in names:
        assert wildcard.fullmatch(f"arn:aws:cloudwatch:eu-west-1:111122223333:alarm:{name}"), (
            f"the {name} alarm could no longer notify the topic")
    for other in ("arn:aws:cloudwatch:eu-west-1:444455556666:alarm:voiceagent-prod-5xx",
                  "arn:aws:cloudwatch:eu-west-1:111122223333:alarm:other-stack-5xx"):
        assert not wildcard.fullmatch(other), other


def test_eventbridge_may_publish_without_a_condition() -> None:
    """EventBridge's guide: Condition blocks cannot be used in SNS topic policies for it (its
    request has no aws:SourceArn), so a condition would drop every page without a trace but
    the rule's FailedInvocations."""
    events, = _statements_for(_topic_policy()["PolicyDocument"]["Statement"],
                              "events.amazonaws.com")
    assert "Condition" not in events, events
    target = _target()
    assert target["Arn"] == "<AlarmTopic>"
    assert "RoleArn" not in target, ("a role on an SNS target can make delivery to a "
                                     "KMS-encrypted topic fail: the topic's policy is enough")


@pytest.mark.parametrize("service", ["cloudwatch.amazonaws.com", "events.amazonaws.com"])
def test_each_publisher_may_use_the_topics_key(service: str) -> None:
    topic = _resources()["AlarmTopic"]["Properties"]
    key = _resources()[topic["KmsMasterKeyId"]["Ref"]]["Properties"]
    granted, = _statements_for(key["KeyPolicy"]["Statement"], service)
    assert set(_as_list(granted["Action"])) == {"kms:Decrypt", "kms:GenerateDataKey*"}
    if service == "events.amazonaws.com":
        # its KMS requests for an SNS target carry no aws:Source* keys to match
        assert not any(k.lower().startswith("aws:source")
                       for block in granted.get("Condition", {}).values() for k in block)


def test_an_undelivered_page_fires_an_alarm() -> None:
    """The page cannot be tried before a task crashes: if it is refused, CloudWatch says so,
    through the path the other alarms exercise."""
    alarms = [r["Properties"] for r in _resources().values()
              if r["Type"] == "AWS::CloudWatch::Alarm"
              and r["Properties"].get("Namespace") == "AWS/Events"]
    alarm, = alarms
    assert alarm["MetricName"] == "FailedInvocations"
    assert alarm["Dimensions"] == [{"Name": "RuleName", "Value": {"Ref": _rule_name()}}]
    assert alarm["ComparisonOperator"] == "GreaterThanThreshold"
    assert alarm["Threshold"] == 0
    assert alarm["Statistic"] == "Sum"
    assert alarm["AlarmActions"] == [{"Ref": "AlarmTopic"}]
