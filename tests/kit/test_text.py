"""``fund.kit.text``: which addresses and names are taken, and in what form."""

from __future__ import annotations

import pytest

from fund.kit.text import EmailRefused, email_address, sign_in_address, unprintable

KEPT = {
    " Ann.Lee@Example.COM ": "ann.lee@example.com",
    "jose\u0301@exemple.fr": "josé@exemple.fr",  # NFC
    "оля@пример.рф": "оля@пример.рф",  # one script in each part
    "ann@\uff45xample.com": "ann@example.com",  # a fullwidth domain is mapped (IDNA)
    "a" * 64 + "@example.com": "a" * 64 + "@example.com",
}

REFUSED = {
    "local-part-of-65": "a" * 65 + "@example.com",
    "display-name": "Ann <ann@example.com>",
    "quoted-local-part": '"ann lee"@example.com',
    "ip-domain": "ann@[192.0.2.1]",
    "cyrillic-a-in-latin": "\u0430nn@example.com",
    "greek-omicron-in-latin": "b\u03bfb@example.com",
    "cyrillic-in-a-latin-domain-label": "ann@ex\u0430mple.com",
    "fullwidth-local-part": "\uff41nn@example.com",
    "mathematical-bold-local-part": "\U0001d41anne@example.com",
}


@pytest.mark.parametrize(("typed", "kept"), KEPT.items(), ids=list(KEPT))
def test_addresses_are_kept_in_one_form(typed: str, kept: str) -> None:
    assert email_address(typed) == kept
    assert sign_in_address(typed) == kept


@pytest.mark.parametrize("typed", REFUSED.values(), ids=list(REFUSED))
def test_addresses_that_pass_for_another_are_refused_and_still_sign_in_as_typed(
    typed: str,
) -> None:
    with pytest.raises(EmailRefused):
        email_address(typed)
    # An account kept from before these rules is still found: trimmed, NFC, lower-cased.
    assert sign_in_address(f" {typed.upper()} ") == typed.lower()


@pytest.mark.parametrize(
    ("name", "refused"),
    [
        ("Ann Lee", None),
        ("Mehr\u200cdad", None),  # the zero-width non-joiner Persian needs
        ("\U00031350 Li", None),  # a letter newer than some Pythons' Unicode: not refused
        ("Ann\u202eeeL", "\u202e"),  # a direction override
        ("Ann\u200bLee", "\u200b"),  # a zero-width space
        ("Two\u2028lines", "\u2028"),
        ("Tab\there", "\t"),
        ("Ann \ue000", "\ue000"),  # private use
    ],
)
def test_what_a_name_may_not_hold(name: str, refused: str | None) -> None:
    assert unprintable(name) == refused
