"""The system prompt for one call: the use case's prompt with the caller and the local
date filled in where its placeholders stand.
"""

from __future__ import annotations

import datetime as dt

from voiceagent.usecase_schema import Profile, UseCase, zone_named

USER_CONTEXT_MARK = "<<USER_CONTEXT>>"     # the original sample's placeholders, kept so its
CURRENT_DATE_MARK = "<<CURRENT_DATE>>"     # prompt items work unchanged


def caller_context(profile: Profile | None) -> str:
    if profile is not None and profile.first_name:
        name = f"{profile.first_name} {profile.last_name}".strip()
        return (f"The caller is {name}, a returning customer. Greet them by first name "
                "and do not ask for their name again.")
    return ("The caller's name is not known. Ask for their first name early in the "
            "conversation, naturally, and use it afterwards.")


def render_prompt(use_case: UseCase, profile: Profile | None, now: dt.datetime,
                  default_zone: str) -> str:
    """The system prompt for one call, with the caller and the local date filled in."""
    zone = zone_named(use_case.time_zone or default_zone)
    local = now.astimezone(zone)
    date_text = local.strftime("%A, %B %-d, %Y, %-I:%M %p ") + (local.tzname() or "")
    return (use_case.prompt
            .replace(USER_CONTEXT_MARK, caller_context(profile))
            .replace(CURRENT_DATE_MARK, date_text.strip()))
