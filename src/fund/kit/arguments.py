"""Command-line argument types: each refusal is one line that says what was expected."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def whole_number(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An ``argparse`` type: a whole number in ``minimum..maximum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            bound = (
                f"{_n(minimum)}..{_n(maximum)}"
                if maximum is not None
                else f"at least {_n(minimum)}"
            )
            raise argparse.ArgumentTypeError(f"must be {bound}, not {_n(value)}")
        return value

    return parse


def _n(number: int) -> str:
    """Thousands separated where they help reading (a row count), not in a port number."""
    return f"{number:,}" if abs(number) >= 100_000 else str(number)
