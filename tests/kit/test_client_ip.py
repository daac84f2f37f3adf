"""The address an audit entry records: the peer, or behind a trusted proxy what it saw."""

from __future__ import annotations

from typing import Any

import pytest

from fund.kit.request_context import client_ip


def scope(*forwarded: str) -> dict[str, Any]:
    headers = [(b"x-forwarded-for", value.encode()) for value in forwarded]
    return {"client": ("10.0.0.2", 41000), "headers": headers}


@pytest.mark.parametrize(
    ("forwarded", "recorded"),
    [
        ((), "10.0.0.2"),
        (("198.51.100.7",), "198.51.100.7"),  # a proxy that overwrites
        # A proxy that appends: what the client wrote comes first and is not believed.
        (("203.0.113.66, 198.51.100.7",), "198.51.100.7"),
        (("203.0.113.66", "198.51.100.7"), "198.51.100.7"),  # the same, as two header lines
    ],
)
def test_behind_a_trusted_proxy_the_address_it_saw_is_recorded(
    forwarded: tuple[str, ...], recorded: str
) -> None:
    assert client_ip(scope(*forwarded), trust_forwarded=True) == recorded


def test_without_a_trusted_proxy_the_header_is_ignored() -> None:
    assert client_ip(scope("203.0.113.66"), trust_forwarded=False) == "10.0.0.2"
