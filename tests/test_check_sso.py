"""`voiceagent check` with an AWS SSO profile whose sign-in is missing or has run out: the
README's step 4 is `aws configure sso` then AWS_PROFILE, and an SSO session lasts hours. The
check said "fix AWS_PROFILE or ~/.aws/config, or unset AWS_PROFILE" for the credentials, and
"Bedrock is unavailable ... try again in a minute; the AWS Health Dashboard shows incidents"
for the model, under some 70 lines of botocore tracebacks; the fix is `aws sso login`.

Nothing reaches the network: botocore fails while reading its token cache (none, or one that
has expired with nothing to refresh it), before any request.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import trio
from botocore.exceptions import SSOTokenLoadError

from tests.check_support import RUN_TIMEOUT_S, base_env, run_check
from voiceagent.llm.bedrock_errors import classify

pytestmark = pytest.mark.timeout(90)

SESSION = "my-sso"
AWS_CONFIG = f"""\
[profile dev]
sso_session = {SESSION}
sso_account_id = 111122223333
sso_role_name = Developer
region = us-east-1

[sso-session {SESSION}]
sso_start_url = https://example.awsapps.com/start
sso_region = us-east-1
"""


def _expired_token(home: Path) -> None:
    """The cache entry `aws sso login` left, hours ago, with no refresh token."""
    cache = home / ".aws" / "sso" / "cache"
    cache.mkdir(parents=True)
    name = hashlib.sha1(SESSION.encode()).hexdigest()
    (cache / f"{name}.json").write_text(json.dumps({
        "startUrl": "https://example.awsapps.com/start", "region": "us-east-1",
        "accessToken": "expired-not-secret", "expiresAt": "2020-01-01T00:00:00Z"}))


@pytest.mark.parametrize("signed_in", [False, True], ids=["never-signed-in", "expired"])
async def test_an_sso_profile_without_a_live_sign_in_says_aws_sso_login(
        tmp_path: Path, signed_in: bool) -> None:
    (tmp_path / "aws-config").write_text(AWS_CONFIG)
    if signed_in:
        _expired_token(tmp_path)
    env = base_env(tmp_path, AWS_CONFIG_FILE=str(tmp_path / "aws-config"), AWS_PROFILE="dev",
                   LLM="bedrock", STORE="sqlite", DATA_DIR=str(tmp_path / "data"))
    with trio.fail_after(RUN_TIMEOUT_S):
        run = await run_check(env, tmp_path)
    lines = run.lines
    assert run.code == 1
    for name in ("AWS credentials", "Bedrock model us.amazon.nova-lite-v1:0"):
        assert lines[name].status == "fail", run.out
        assert "SSO sign-in missing or expired" in lines[name].detail, run.out
        assert lines[name].advice[0].startswith("sign in again: `aws sso login --profile "
                                                "dev`"), run.out
    assert "try again in a minute" not in run.out
    assert "Traceback" not in run.err, run.err      # botocore's, below the asked-for level


def test_a_call_whose_sso_sign_in_ran_out_logs_aws_sso_login() -> None:
    """`serve` starts with such a profile (its credentials load lazily); each turn then
    fails, and the log line's what-to-check names the fix."""
    failure = classify(SSOTokenLoadError(error_msg="Token for my-sso does not exist"))
    assert failure.kind == "credentials"
    assert not failure.retryable
    assert "`aws sso login` for an SSO profile" in failure.message
