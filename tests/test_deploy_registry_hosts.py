"""ECRRepoURL takes every ECR registry host form that deploys (FIPS included)."""

from __future__ import annotations

import re

from tests.test_deploy_operations import CLOUD, TEST_PARAMETERS, Resolver, _template


def test_a_fips_registry_host_is_still_a_registry_host() -> None:
    """ECR's FIPS registry endpoint (ACCOUNT.dkr.ecr-fips.REGION.amazonaws.com, for
    us-east-1/2, us-west-1/2 and GovCloud) pulled fine yesterday: the image URI named it
    and the pull grant (this account and region) covered the repository. The pattern now
    refuses the stack's parameters before anything is created."""
    template = _template(CLOUD)
    fips = "111122223333.dkr.ecr-fips.eu-west-1.amazonaws.com"
    assert re.match(template["Parameters"]["ECRRepoURL"]["AllowedPattern"], fips)
    resolver = Resolver(template, {**TEST_PARAMETERS, "ECRRepoURL": fips})
    role = template["Resources"]["TaskExecutionRole"]
    pull, = (s for s in map(resolver.resolve,
                            role["Properties"]["Policies"][0]["PolicyDocument"]["Statement"])
             if s and "ecr:BatchGetImage" in s["Action"])
    assert pull["Resource"] == "arn:aws:ecr:eu-west-1:111122223333:repository/voiceagent"
