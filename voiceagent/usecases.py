"""Use cases and caller profiles: the YAML in ``config/`` and the store items made from it.

The public face of three modules, so callers import from one place: ``usecase_schema`` (the
models, checked strictly), ``usecase_loading`` (files -> models, errors naming file and key
path) and ``usecase_prompt`` (a call's system prompt).
"""

from __future__ import annotations

from voiceagent.relay.protocol import Setting
from voiceagent.usecase_handoff import HandoffConfig
from voiceagent.usecase_loading import (
    load_profiles_file,
    load_use_case_file,
    parse_model,
    read_yaml,
)
from voiceagent.usecase_model import InferenceSettings, ModelOptionSettings
from voiceagent.usecase_prompt import (
    CURRENT_DATE_MARK,
    USER_CONTEXT_MARK,
    caller_context,
    render_prompt,
)
from voiceagent.usecase_relay import (
    LANGUAGE_BUILDER_ATTRIBUTES,
    RELAY_BUILDER_ATTRIBUTES,
    TWILIO_VERSION,
    LanguageEntry,
    ReplyControls,
)
from voiceagent.usecase_relay_updates import RelayTrigger, RelayUpdate
from voiceagent.usecase_schema import (
    E164,
    MAX_TOOL_TIMEOUT_S,
    TOOL_NAME,
    DtmfConfig,
    DtmfHandler,
    Profile,
    ProfilesFile,
    ScriptedConfig,
    ScriptedRule,
    ScriptedToolStep,
    ThenCase,
    ToolDeclaration,
    UseCase,
)

__all__ = ["CURRENT_DATE_MARK", "E164", "LANGUAGE_BUILDER_ATTRIBUTES", "MAX_TOOL_TIMEOUT_S",
           "RELAY_BUILDER_ATTRIBUTES", "TOOL_NAME", "TWILIO_VERSION", "USER_CONTEXT_MARK",
           "DtmfConfig", "DtmfHandler", "HandoffConfig", "InferenceSettings", "LanguageEntry",
           "ModelOptionSettings", "Profile", "ProfilesFile", "RelayTrigger", "RelayUpdate",
           "ReplyControls", "ScriptedConfig", "ScriptedRule", "ScriptedToolStep", "Setting",
           "ThenCase", "ToolDeclaration", "UseCase", "caller_context", "load_profiles_file",
           "load_use_case_file", "parse_model", "read_yaml", "render_prompt"]
