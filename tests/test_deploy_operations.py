"""What an operator meets after the template deploys: how long a deploy under traffic may
take, what a use case's guardrail needs, where the read-only task may write, and which image
the task may pull."""

from __future__ import annotations

from typing import Any

from tests.test_deploy import (
    CLOUD,
    TEST_PARAMETERS,
    Resolver,
    _container,
    _template,
)
from voiceagent.app import task_protection
from voiceagent.settings import Settings

# CloudFormation gives an AWS::ECS::Service update about three hours to reach a steady state;
# past that the stack update fails and CloudFormation rolls the service back (another
# deployment, cutting nothing but taking as long again).
CLOUDFORMATION_ECS_STABILIZE_MINUTES = 180


def _env(parameters: dict[str, Any]) -> dict[str, str]:
    template = _template(CLOUD)
    container = Resolver(template, parameters).resolve(_container(template))
    return {item["Name"]: str(item["Value"]) for item in container["Environment"]}


def test_a_deploy_under_traffic_finishes_inside_cloudformations_window() -> None:
    """docs/deploy.md, "A deploy": protection cap + the last hold + the longest call can be
    "more than three hours", and `sam deploy` waits for it. CloudFormation does not wait that
    long: the update fails and is rolled back. The page's remedy, "lower
    TASK_PROTECTION_MAX_MINUTES in the task definition", has no knob in the template (the
    stack owns the task definition, so a hand edit is reverted by the next deploy)."""
    env = _env(TEST_PARAMETERS)
    settings = Settings.from_env({**env, "TWILIO_AUTH_TOKEN": "from-the-secret"})
    template = _template(CLOUD)
    stop_timeout_min = _container(template)["StopTimeout"] / 60
    worst_minutes = (settings.task_protection_max_minutes + task_protection.EXPIRES_MINUTES
                     + settings.max_call_duration_s / 60 + stop_timeout_min)
    assert "TASK_PROTECTION_MAX_MINUTES" in env, (
        "no way to lower the protection cap from the stack (docs/deploy.md tells operators to)")
    assert worst_minutes < CLOUDFORMATION_ECS_STABILIZE_MINUTES, (
        f"a deploy under steady traffic can take {worst_minutes:.0f} min with the template's "
        f"defaults: CloudFormation rolls the stack back after "
        f"~{CLOUDFORMATION_ECS_STABILIZE_MINUTES} min")


def test_a_use_case_guardrail_can_be_granted_to_the_task_role() -> None:
    """config/README.md offers `model_options.guardrail_id` (sent as ConverseStream's
    guardrailConfig, bedrock_converse.py). Bedrock then also checks bedrock:ApplyGuardrail on
    the guardrail's ARN (AWS docs, "Set up permissions to use Amazon Bedrock Guardrails").
    The task role never grants it and no parameter can add it: on Fargate every turn of such
    a use case fails with AccessDeniedException (the caller hears the apology), although the
    same use case worked locally with the developer's own credentials."""
    from voiceagent.usecases import ModelOptionSettings
    assert "guardrail_id" in ModelOptionSettings.model_fields      # the feature exists
    template = _template(CLOUD)
    parameters = template["Parameters"]
    guardrail_parameters = [name for name in parameters if "guardrail" in name.lower()]
    assert guardrail_parameters, "no parameter names a guardrail for the task role"
    import json
    role = Resolver(template, {**TEST_PARAMETERS, **{
        name: "arn:aws:bedrock:eu-west-1:111122223333:guardrail/abc123"
        for name in guardrail_parameters}}).resolve(template["Resources"]["TaskRole"])
    assert "bedrock:ApplyGuardrail" in json.dumps(role)


def test_every_writable_mount_is_writable_by_the_image_user() -> None:
    """The task definition mounts an empty bind volume at /tmp because the root file system is
    read-only ("Volumes: - Name: tmp  # the root file system is read-only"). On Fargate such a
    volume is created root-owned, mode 0755, unless the image declares the path with a VOLUME
    instruction, whose ownership and mode are then copied (AWS ECS docs, "Use bind mounts":
    "By default, the volume permissions are set to 0755 and the owner as root. You can
    customize these permissions in the Dockerfile"). The image runs as uid 10001 and declares no
    VOLUME, so /tmp (and DATA_DIR=/tmp/voiceagent) cannot be written: tempfile, a tool that
    spools to disk, or `voiceagent check`'s DATA_DIR probe fail with EACCES."""
    from tests.test_deploy import _final_stage
    template = _template(CLOUD)
    mounts = [m["ContainerPath"] for m in _container(template)["MountPoints"]
              if not m.get("ReadOnly", False)]
    assert mounts == ["/tmp"]
    declared = " ".join(rest for instruction, rest in _final_stage() if instruction == "VOLUME")
    for path in mounts:
        assert path in declared, (
            f"{path}: mounted writable in the task, but no VOLUME in the image: Fargate makes it "
            "root:root 0755 and user 10001 cannot write there")


def test_the_execution_role_may_pull_the_image_the_task_names() -> None:
    """ECRRepoURL may name another account's or region's registry (one image pushed once,
    stacks in two regions); the role used to grant only this account's and region's
    repository, so tasks never started (CannotPullContainerError, then a rollback)."""
    import re
    template = _template(CLOUD)
    other = "999999999999.dkr.ecr.us-west-2.amazonaws.com"
    for registry, arn in ((other, "arn:aws:ecr:us-west-2:999999999999:repository/voiceagent"),
                          ("", "arn:aws:ecr:eu-west-1:111122223333:repository/voiceagent")):
        resolver = Resolver(template, {**TEST_PARAMETERS, "ECRRepoURL": registry})
        image = resolver.resolve(_container(template))["Image"]
        assert image.startswith(registry or "111122223333.dkr.ecr.eu-west-1.")
        role = template["Resources"]["TaskExecutionRole"]
        pull, = (s for s in map(resolver.resolve,
                                role["Properties"]["Policies"][0]["PolicyDocument"]["Statement"])
                 if s and "ecr:BatchGetImage" in s["Action"])
        assert pull["Resource"] == arn
    pattern = template["Parameters"]["ECRRepoURL"]["AllowedPattern"]
    assert re.match(pattern, other)
    assert re.match(pattern, "")
    for wrong in ("https://" + other, other + "/voiceagent", "ghcr.io"):
        assert not re.match(pattern, wrong), wrong
