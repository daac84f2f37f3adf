"""Access tokens: a verified token is remembered, its expiry never is."""

from __future__ import annotations

import time

import jwt
import pytest

from fund.kit.security import InvalidToken, issue_access_token, read_access_token

KEY = b"k" * 32


def test_a_remembered_token_still_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    token = issue_access_token(KEY, 42, minutes=1).token
    assert read_access_token(KEY, token) == 42
    assert read_access_token(KEY, token) == 42  # from the verified-token memory

    later = time.time() + 61
    monkeypatch.setattr(time, "time", lambda: later)
    with pytest.raises(InvalidToken):
        read_access_token(KEY, token)


def test_a_token_is_remembered_per_key() -> None:
    token = issue_access_token(KEY, 7, minutes=5).token
    assert read_access_token(KEY, token) == 7
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
    ],
)
def test_refused_tokens_stay_refused(claims: dict[str, object]) -> None:
    token = jwt.encode(claims, KEY, algorithm="HS256")
    for _ in range(2):  # a refusal is not remembered as anything else
        with pytest.raises(InvalidToken):
            read_access_token(KEY, token)
