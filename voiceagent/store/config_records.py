"""Use-case and profile items: the configuration an operator loads (``voiceagent config
load``), the catalog reads and ``config export`` writes back.

Apart from ``records.py``, which maps what the calls write (sessions, marks, chat messages,
orders): these items change by hand, not per call, and carry the Node sample's compatible
view (``tools`` and ``dtmfHandlers`` as JSON *strings*, ``conversationRelayParams`` a map,
``systemPrompt`` a list of ``{"text"}`` blocks). A use-case item also carries a
``voiceagent`` attribute with the whole model, so fields the sample has no attribute for
(inference settings, scripted replies, handoff) survive the round trip; when it is present it
wins, and the sample attributes are a compatible view of it. A session item holds its
caller's profile item (``records.session_item``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from voiceagent.errors import ConfigError
from voiceagent.logs import mask_phone
from voiceagent.store.base import Item, expect_sk
from voiceagent.store.sample_records import sample_use_case
from voiceagent.usecase_relay import STORED
from voiceagent.usecases import Profile, UseCase, parse_model

log = logging.getLogger("voiceagent.store.records")    # as before the split: same logger

USE_CASE_SK = "configuration"
PROFILE_SK = "profile"
USE_CASE_INDEX = "use-case"          # pk1 values: list one kind of item through the GSI
PROFILE_INDEX = "profile"

_SAMPLE_USE_CASE_ATTRIBUTES = ("title", "description", "prompt", "tools", "dtmfHandlers",
                               "conversationRelayParams", "llmModel")

JSON_TEXT_FIELDS = ("tools", "dtmfHandlers")    # JSON kept as text, as the sample kept it


def same_item(a: Item | None, b: Item) -> bool:
    """Equal as data: the JSON text fields compared parsed, since a round trip through a
    DynamoDB map (``config export``, then ``config load``) may reorder a schema's keys."""
    if a is None or a.keys() != b.keys():
        return False
    for key, value in a.items():
        other = b[key]
        if key in JSON_TEXT_FIELDS and isinstance(value, str) and isinstance(other, str):
            try:
                if json.loads(value) != json.loads(other):
                    return False
            except ValueError:
                if value != other:
                    return False
        elif value != other:
            return False
    return True


def _json_text(value: Any) -> str:
    """JSON as the sample's ``JSON.stringify`` wrote it: compact, non-ASCII kept."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


# ------------------------------------------------------------------ use cases


def use_case_item(uc: UseCase) -> Item:
    handlers = {
        digit: {"replyWithText": handler.reply is not None, "replyText": handler.reply or "",
                "replyWithFunction": handler.tool is not None,
                "replyFunction": handler.tool or ""}
        for digit, handler in uc.dtmf.handlers.items()}
    item: Item = {
        "pk": uc.name, "sk": USE_CASE_SK, "pk1": USE_CASE_INDEX, "sk1": uc.name,
        "title": uc.title, "description": uc.description, "prompt": uc.prompt,
        "tools": _json_text([{"toolSpec": spec} for spec in uc.tool_specs()]),
        "dtmfHandlers": _json_text(handlers),
        "conversationRelayParams": dict(uc.relay),
        "voiceagent": uc.model_dump(mode="json"),
    }
    if uc.model is not None:
        item["llmModel"] = uc.model
    return item


def use_case_from_item(item: Item) -> UseCase:
    """The use case an item describes: from its ``voiceagent`` attribute when present, else
    from the sample's attributes. Raises ``ConfigError`` naming the item and key path."""
    expect_sk(item, USE_CASE_SK, "use case")
    source = f"store item {item['pk']}/{USE_CASE_SK}"
    full = item.get("voiceagent")
    if isinstance(full, Mapping):
        try:
            uc = parse_model(UseCase, full, source, STORED)
        except ConfigError as err:   # e.g. written by a newer version during a rolling deploy
            log.warning("use case voiceagent attribute unreadable, using the sample attributes",
                        extra={"use_case": item["pk"], "key_path": err.key_path,
                               "problem": err.problem})
        else:
            _warn_if_edited(item, uc)
            return uc
    return parse_model(UseCase, sample_use_case(item, source), source, STORED)


def _warn_if_edited(item: Item, uc: UseCase) -> None:
    """Someone changed a sample attribute (say the prompt, in the console) but not the
    ``voiceagent`` attribute, which wins: say so rather than silently ignore the edit."""
    ours = use_case_item(uc)
    edited = [key for key in _SAMPLE_USE_CASE_ATTRIBUTES if item.get(key) != ours.get(key)]
    if edited:
        log.warning("use case item edited outside voiceagent; its voiceagent attribute wins",
                    extra={"use_case": uc.name, "attributes": edited})


# ------------------------------------------------------------------ profiles


def profile_item(p: Profile) -> Item:
    item: Item = {"pk": p.phone, "sk": PROFILE_SK, "pk1": PROFILE_INDEX, "sk1": p.phone,
                  "firstName": p.first_name, "lastName": p.last_name, "email": p.email}
    if p.use_case is not None:
        item["useCase"] = p.use_case
    return item


def profile_from_item(item: Item) -> Profile:
    """Raises ``ConfigError`` (phone number masked) when the item is not a valid profile."""
    expect_sk(item, PROFILE_SK, "profile")
    data = {"phone": item["pk"], "first_name": item.get("firstName") or "",
            "last_name": item.get("lastName") or "", "email": item.get("email") or "",
            "use_case": item.get("useCase") or None}
    return parse_model(Profile, data, f"store item {mask_phone(item['pk'])}/{PROFILE_SK}")
