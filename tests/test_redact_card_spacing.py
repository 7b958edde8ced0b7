"""``redact`` masks a card number in logged content (LOG_CONTENT=true) and nothing around it:
the pattern took the separator after the last digit too, so "card 4111 1111 1111 1111 please"
was logged as "card [card]please"."""

from __future__ import annotations

from voiceagent.logs import redact


def test_a_card_number_is_masked_and_the_text_around_it_kept() -> None:
    assert redact("card 4111 1111 1111 1111 please") == "card [card] please"
    assert redact("my card is 4111111111111111 and it's") == "my card is [card] and it's"
    assert redact("card 4111-1111-1111-1111, ok") == "card [card], ok"
    assert redact("order 12 34 and 5") == "order 12 34 and 5"        # too short for a card
