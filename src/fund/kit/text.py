"""Hygiene for text people type into the records: names and email addresses.

A name is printed in back-office screens, exports and terminals; an email address is how an
account signs in and how an auditor tells accounts apart. Both are kept in one Unicode form
(NFC), so that what looks the same is stored, searched and compared the same.
"""

from __future__ import annotations

import unicodedata

import email_validator

# What a name has no use for: controls (C0, DEL, C1: a CSV reader's line breaks, a terminal's
# escapes), format characters (invisible, and the direction overrides that make text read
# other than it is stored), line and paragraph separators (line breaks to many readers),
# surrogates and private-use code points. Not "unassigned": that is this Python's Unicode
# version, and a newer one assigns letters people have in their names.
_UNPRINTABLE = frozenset({"Cc", "Cf", "Cs", "Co", "Zl", "Zp"})
# Except the two joiners, which Persian and Indic names and emoji sequences need.
_JOINERS = frozenset("\u200c\u200d")

# Scripts whose letters look alike (LATIN SMALL LETTER A, CYRILLIC SMALL LETTER A): mixed in
# one part of an address, they would let two accounts read the same.
_LOOK_ALIKE_SCRIPTS = ("LATIN", "CYRILLIC", "GREEK", "ARMENIAN", "CHEROKEE", "COPTIC")


def unprintable(text: str) -> str | None:
    """The first character of ``text`` that a name may not hold, or None."""
    for char in text:
        if unicodedata.category(char) in _UNPRINTABLE and char not in _JOINERS:
            return char
    return None


def visible(text: str) -> bool:
    """Whether ``text`` has a character that shows: not a space, a control or a format
    character (a zero-width space, a joiner, a direction mark)."""
    return any(unicodedata.category(char)[0] not in "ZC" for char in text)


def has_letter_or_digit(text: str) -> bool:
    return any(unicodedata.category(char)[0] in "LN" for char in text)


def nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def code_point(char: str) -> str:
    """``U+202E``: how a refused character is named in a message (it may not print)."""
    return f"U+{ord(char):04X}"


class EmailRefused(ValueError):
    """Why an email address is not taken, in words a client can act on."""


def email_address(text: str) -> str:
    """``text`` as the address it is stored under, or :class:`EmailRefused`.

    Trimmed, then the standard's syntax and lengths (at most 64 characters before the @,
    254 in all; no display name, no quoted local part, no IP address for a domain),
    normalized and lower-cased. Refused besides, because they make one address pass for
    another: compatibility characters (fullwidth or mathematical letters, ligatures) and
    letters of look-alike scripts mixed in the part before the @ or in one label of the
    domain.
    """
    try:
        valid = email_validator.validate_email(
            text.strip(), check_deliverability=False, strict=True
        )
    except email_validator.EmailNotValidError as error:
        raise EmailRefused(str(error)) from None
    local, domain = valid.local_part, valid.domain
    if unicodedata.normalize("NFKC", local) != local:
        raise EmailRefused(
            "The part before the @-sign has compatibility characters (fullwidth or"
            " styled letters, ligatures): type their plain form."
        )
    parts = [("The part before the @-sign", local)]
    parts += [("A label of the domain", label) for label in domain.split(".")]
    for where, part in parts:
        scripts = sorted(script.title() for script in _look_alike_scripts(part))
        if len(scripts) > 1:
            raise EmailRefused(
                f"{where} mixes letters of the {' and '.join(scripts)} scripts, which look alike."
            )
    return f"{local}@{domain}".lower()


def sign_in_address(typed: str) -> str:
    """The address a sign-in looks up for what was typed: as ``email_address`` keeps it (so
    `` Admin@EXAMPLE.com`` finds ``admin@example.com``, as does a domain typed in fullwidth
    letters), or, for what it refuses (an account made before its rules), trimmed, in NFC
    and lower-cased."""
    typed = typed.strip()
    if len(typed) <= _LONGEST_ADDRESS:  # longer is nobody's; not worth parsing
        try:
            return email_address(typed)
        except EmailRefused:
            pass
    return nfc(typed).lower()


_LONGEST_ADDRESS = 320  # 64 before the @, 255 after it (RFC 3696)


def _look_alike_scripts(part: str) -> set[str]:
    scripts = set()
    for char in part:
        if unicodedata.category(char).startswith("L"):
            script = unicodedata.name(char, "").partition(" ")[0]
            if script in _LOOK_ALIKE_SCRIPTS:
                scripts.add(script)
    return scripts
