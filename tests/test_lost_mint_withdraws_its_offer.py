"""Two signed ``/twiml`` requests for one call at once, each on its own server process (two
real servers over one SQLite file, as WORKERS=2 runs them): both read the store before
either wrote, both mint a session, and the store takes one. The other process answers 409
and takes its offer back (``SessionOffers.withdraw``): its token never left the process, and
the offer holds the prompt rendered with the caller's profile, which would otherwise stay in
its memory until PENDING_TTL_S. Nothing tested that take-back (a review found it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

import voiceagent.store.records as records
from tests.server_harness import AUTH_TOKEN, make_settings, running_server
from voiceagent.app.caller import CallerError, Identity, post_form
from voiceagent.app.runtime import Runtime
from voiceagent.app.sessions import TOKEN_PARAMETER
from voiceagent.usecases import UseCase

pytestmark = pytest.mark.timeout(60)


def _meet_before_minting(runtimes: list[Runtime]) -> None:
    """Each ``/twiml``, past its read of the store (nothing there yet), waits for the
    other one to get as far: both then mint, and the store decides between them."""
    arrived, both = 0, trio.Event()
    for runtime in runtimes:
        real = runtime.catalog.use_case

        async def after_both_read(name: str, real: Any = real) -> UseCase:
            nonlocal arrived
            arrived += 1
            if arrived == len(runtimes):
                both.set()
            await both.wait()
            return await real(name)         # type: ignore[no-any-return]

        runtime.catalog.use_case = after_both_read     # type: ignore[method-assign]


async def test_the_process_whose_mint_lost_keeps_no_offer(tmp_path: Path) -> None:
    identity = Identity()
    form = {"CallSid": identity.call_sid, "From": identity.from_number,
            "To": identity.to_number}
    answers: dict[str, str] = {}
    with trio.fail_after(45):
        async with running_server(make_settings(tmp_path)) as a, \
                running_server(make_settings(tmp_path)) as b:
            _meet_before_minting([a.runtime, b.runtime])

            async def ring(name: str, url: str) -> None:
                try:
                    answers[name] = await post_form(url + "/twiml", form, AUTH_TOKEN)
                except CallerError as err:
                    answers[name] = str(err)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(ring, "a", a.url)
                nursery.start_soon(ring, "b", b.url)
            minted = [name for name, answer in answers.items() if "<Connect" in answer]
            assert len(minted) == 1, answers
            winner, loser = ((a, b) if minted == ["a"] else (b, a))
            stored = await a.runtime.store.get(identity.call_sid, records.SESSION_SK)
            offered_by_winner = winner.runtime.sessions._offers.get(identity.call_sid)
            offered_by_loser = loser.runtime.sessions._offers.get(identity.call_sid)
    assert "HTTP 409" in answers["b" if minted == ["a"] else "a"]
    assert stored is not None
    assert offered_by_winner is not None
    assert stored["token"] == offered_by_winner.session.token     # the winner's stands
    assert f'name="{TOKEN_PARAMETER}" value="{stored["token"]}"' in answers[minted[0]]
    assert offered_by_loser is None                                 # taken back
