"""The ``.env`` file of the current folder, read into the environment before the settings.

``voiceagent serve``, ``voiceagent check`` and the ``config``, ``calls`` and ``store`` commands
all call ``load_dotenv_file`` first, so a check or a ``config load`` sees exactly the settings
the service would. A variable already set in the environment wins
over the file (a container's or a shell's value is never overridden by a stale file), and a
missing file is not an error: production sets everything in the environment.

A name in the file that is not a setting but is a typo away from one (``TWILIO_AUTH_TOKN``) is
said on stderr with the setting it looks like: otherwise it is silently ignored, and the
setting it meant keeps its default, or is reported missing with nothing to say why. Other
names (a tool's own, compose's) are the user's business and pass without a word.
"""

from __future__ import annotations

import sys
from pathlib import Path

from dotenv import dotenv_values, load_dotenv

from voiceagent.look_alike import look_alike
from voiceagent.settings import Settings

DOTENV_NAME = ".env"
CLOSE = 0.8                          # difflib's ratio: TWILIO_AUTH_TOKN, MAX_CALS, TOOL
# read from .env by something other than Settings: boto3 and the AWS CLI, the proxy support,
# docker-compose.yml and the image's entrypoint (.env.example lists them)
OTHER_NAMES = frozenset({
    "AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION", "AWS_CA_BUNDLE", "AWS_BEARER_TOKEN_BEDROCK", "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_BEDROCK_RUNTIME",
    "AWS_ENDPOINT_URL_DYNAMODB", "AWS_ENDPOINT_URL_STS", "AWS_EC2_METADATA_DISABLED",
    "HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "INFERENCE_PROFILE_ARN", "AWS_CONFIG_DIR",
    "NGROK_AUTHTOKEN", "NGROK_DOMAIN", "VOICEAGENT_UID", "VOICEAGENT_GID", "APP_HOST_PORT",
    "DYNAMODB_HOST_PORT"})


def load_dotenv_file(path: Path | None = None) -> Path | None:
    """Read ``path`` (default ``./.env``) into ``os.environ`` without overriding what is set;
    return the file read, or None when there is none. Misspelt setting names are said on
    stderr (``misspelt_names``)."""
    target = Path(DOTENV_NAME) if path is None else path
    if not target.is_file():
        return None
    load_dotenv(target, override=False, encoding="utf-8")
    for name, meant in misspelt_names(target):
        print(f"voiceagent: {target}: {name} is not a setting (nothing reads it); did you "
              f"mean {meant}?", file=sys.stderr)
    return target


def misspelt_names(path: Path) -> list[tuple[str, str]]:
    """(name, the setting it looks like) for each name in the file that is no setting, nor
    another name voiceagent's set-up reads, but is close to one of them."""
    fields = Settings.model_fields
    aliases = {field.alias for field in fields.values() if field.alias} | OTHER_NAMES
    known = aliases | set(fields)                # populate_by_name: port=3000 works too
    found = []
    for name in dotenv_values(path, encoding="utf-8"):
        if name in known or name.upper().startswith("AWS_ENDPOINT_URL_"):  # any service's
            continue
        if (close := look_alike(name, aliases, cutoff=CLOSE)) is not None:
            found.append((name, close))
    return found
