"""A call's session: prepared during ``/twiml`` while the phone rings, claimed by its socket.

``/twiml`` picks the use case, renders the prompt, mints a token that goes to Twilio in a
``<Parameter>`` and comes back in ``setup``, and writes the session item behind. The socket
finds the session in this process's memory (no store round trip), else in the store (the
webhook landed on another process), else rebuilds it from the use case and profile.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import time
from collections.abc import Mapping

import trio

import voiceagent.store.records as records
from actors.call import CallPlan, CallRejected
from actors.history import History, Message, converse_problems
from actors.messages import Setup
from voiceagent.catalog import Catalog
from voiceagent.logs import mask_phone
from voiceagent.settings import Settings
from voiceagent.store.base import Store
from voiceagent.store.write_behind import WriteBehind
from voiceagent.usecases import render_prompt

log = logging.getLogger(__name__)

TOKEN_PARAMETER = "sessionToken"
PENDING_TTL_S = 120.0            # a /twiml whose socket never came is forgotten after this


class Sessions:
    def __init__(self, *, settings: Settings, store: Store, catalog: Catalog,
                 writer: WriteBehind) -> None:
        self._settings = settings
        self._store = store
        self._catalog = catalog
        self._writer = writer
        self._pending: dict[str, tuple[float, records.CallSession]] = {}

    async def prepare(self, form: Mapping[str, str]) -> records.CallSession:
        """Build the session for Twilio's call webhook (form fields CallSid, From, To)."""
        call_sid, caller, called = form["CallSid"], form.get("From", ""), form.get("To", "")
        session = await self._build(call_sid, caller, called, token=secrets.token_urlsafe(18))
        self._forget_stale()
        self._pending[call_sid] = (trio.current_time(), session)
        self._writer.submit(records.session_item(session, self._settings.session_ttl_s),
                            call_sid=call_sid, urgent=True)   # its socket may reach a sibling
        log.info("session prepared", extra={"use_case": session.use_case,
                                            "caller": mask_phone(caller),
                                            "known_caller": session.profile is not None})
        return session

    async def resolve(self, setup: Setup) -> CallPlan:
        """The plan for a socket that sent ``setup``; CallRejected when its token is wrong."""
        token = setup.custom_parameters.get(TOKEN_PARAMETER, "")
        pending = self._pending.pop(setup.call_sid, None)
        history: tuple[Message, ...] = ()
        if pending is not None:
            session = pending[1]
        else:
            item = await self._store.get(setup.call_sid, "connection")
            if item is None:
                log.warning("no session for this call, rebuilding from the use case")
                session = await self._build(setup.call_sid, setup.from_number,
                                            setup.to_number, token=token)
            else:
                session = records.session_from_item(item)
                history = await self._saved_history(setup.call_sid)
        if not secrets.compare_digest(session.token, token):
            raise CallRejected("session token does not match the call's /twiml request")
        use_case = await self._catalog.use_case(session.use_case)
        return CallPlan(call_sid=session.call_sid, use_case=use_case,
                        system_prompt=session.system_prompt, model_id=session.model_id,
                        greeting=None if history else session.greeting,
                        caller=session.caller, called=session.called, history=history)

    async def _build(self, call_sid: str, caller: str, called: str, *,
                     token: str) -> records.CallSession:
        profile = await self._catalog.profile(caller)
        name = (profile.use_case if profile and profile.use_case
                else self._settings.stack_use_case)
        use_case = await self._catalog.use_case(name)
        now = time.time()
        prompt = render_prompt(use_case, profile, dt.datetime.fromtimestamp(now, dt.UTC),
                               self._settings.time_zone)
        return records.CallSession(
            call_sid=call_sid, token=token, use_case=use_case.name, system_prompt=prompt,
            model_id=use_case.model or self._settings.model_identifier, caller=caller,
            called=called, profile=profile, greeting=use_case.welcome_greeting,
            created_at=now)

    async def _saved_history(self, call_sid: str) -> tuple[Message, ...]:
        """The conversation so far, for a socket that reconnects to a known call."""
        items = await self._store.query(call_sid, "chat::")
        messages = tuple(records.chat_from_item(item)["chat"] for item in items)
        if messages and converse_problems(History(messages).for_request()):
            log.warning("saved history unusable, starting fresh",
                        extra={"messages": len(messages)})
            return ()
        return messages

    def _forget_stale(self) -> None:
        cutoff = trio.current_time() - PENDING_TTL_S
        for call_sid in [k for k, (at, _) in self._pending.items() if at < cutoff]:
            del self._pending[call_sid]
