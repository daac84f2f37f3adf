"""Access tokens: a verified token is remembered, its expiry never is."""

from __future__ import annotations

import time

import jwt
import pytest

from fund.kit.security import InvalidToken, TokenSubject, issue_access_token, read_access_token

KEY = b"k" * 32


def test_a_remembered_token_still_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    token = issue_access_token(KEY, 42, 3, minutes=1).token
    subject = read_access_token(KEY, token)
    assert (subject.user_id, subject.version) == (42, 3)
    assert read_access_token(KEY, token) == subject  # from the verified-token memory

    later = time.time() + 61
    monkeypatch.setattr(time, "time", lambda: later)
    with pytest.raises(InvalidToken):
        read_access_token(KEY, token)


def test_a_token_is_remembered_per_key() -> None:
    token = issue_access_token(KEY, 7, 0, minutes=5).token
    assert read_access_token(KEY, token).user_id == 7
    with pytest.raises(InvalidToken):
        read_access_token(b"o" * 32, token)


@pytest.mark.parametrize(
    "claims",
    [
        {"sub": "1"},  # no expiry
        {"sub": "1", "exp": 1, "iat": 0},  # long expired
        {"sub": "x1", "exp": 4_000_000_000, "iat": 0},
        {"sub": 1, "exp": 4_000_000_000, "iat": 0},
        # Correctly signed, but no user could have these ids (a bigint is below 2**63).
        {"sub": "0", "exp": 4_000_000_000, "iat": 0},
        {"sub": str(2**63), "exp": 4_000_000_000, "iat": 0},
        {"sub": "9" * 19, "exp": 4_000_000_000, "iat": 0},
        {"sub": "1" * 400, "exp": 4_000_000_000, "iat": 0},
        {"sub": "١٢", "exp": 4_000_000_000, "iat": 0},  # Arabic-Indic digits: isdigit() says yes
        # A token version is a non-negative integer (users.token_version).
        {"sub": "1", "ver": "0", "exp": 4_000_000_000, "iat": 0},
        {"sub": "1", "ver": True, "exp": 4_000_000_000, "iat": 0},
        {"sub": "1", "ver": 1.0, "exp": 4_000_000_000, "iat": 0},
        {"sub": "1", "ver": -1, "exp": 4_000_000_000, "iat": 0},
        {"sub": "1", "ver": 2**31, "exp": 4_000_000_000, "iat": 0},
        {"sub": "1", "ver": None, "exp": 4_000_000_000, "iat": 0},
        {"sub": "1", "exp": 10**400, "iat": 0},  # no float holds it
        {"sub": "1", "jti": 7, "exp": 4_000_000_000, "iat": 0},
        {"sub": "1", "jti": "", "exp": 4_000_000_000, "iat": 0},
        {"sub": "1", "jti": "x" * 65, "exp": 4_000_000_000, "iat": 0},
    ],
)
def test_refused_tokens_stay_refused(claims: dict[str, object]) -> None:
    token = jwt.encode(claims, KEY, algorithm="HS256")
    for _ in range(2):  # a refusal is not remembered as anything else
        with pytest.raises(InvalidToken):
            read_access_token(KEY, token)


def test_a_token_from_before_versions_counts_as_version_0() -> None:
    """Tokens issued before migration 009 name no version (the column's default) nor id."""
    token = jwt.encode({"sub": "5", "exp": 4_000_000_000, "iat": 0}, KEY, algorithm="HS256")
    assert read_access_token(KEY, token) == TokenSubject(5, 0, None)


def test_every_token_has_an_id_of_its_own() -> None:
    tokens = {issue_access_token(KEY, 1, 0, minutes=5).token for _ in range(50)}
    assert len({read_access_token(KEY, t).token_id for t in tokens}) == 50
