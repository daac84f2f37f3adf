"""Per-account login throttling: Redis when it answers, this process's memory when not."""

from __future__ import annotations

import hashlib
import time

from fund.kit.cache import Cache, CircuitOpen

KIND = "login_failures"


def _account(email: str) -> str:
    # Hashed: the key names no email, and any input makes a bounded key.
    return hashlib.sha256(email.strip().lower().encode()).hexdigest()[:32]


class LoginThrottle:
    def __init__(self, cache: Cache, *, max_failures: int, window_seconds: int) -> None:
        self.cache = cache
        self.max_failures = max_failures
        self.window = window_seconds
        self._local: dict[str, tuple[int, float]] = {}

    async def retry_after(self, email: str) -> int:
        """Seconds until this account may try again; 0 when it may now."""
        account = _account(email)
        local_count, local_until = self._local_state(account)
        if local_count >= self.max_failures:
            return max(1, int(local_until - time.monotonic()))
        try:
            if await self.cache.read_counter(KIND, account) >= self.max_failures:
                return max(1, await self.cache.ttl(KIND, account))
        except CircuitOpen:
            pass
        return 0

    async def failed(self, email: str) -> None:
        account = _account(email)
        try:
            await self.cache.incr_window(KIND, account, self.window)
        except CircuitOpen:
            pass
        # Counted locally too, so a Redis outage does not reset the count.
        count, until = self._local_state(account)
        if count == 0:
            until = time.monotonic() + self.window
        self._local[account] = (count + 1, until)
        if len(self._local) > 100_000:  # bounded memory under a spray of emails
            self._local.clear()

    async def succeeded(self, email: str) -> None:
        account = _account(email)
        self._local.pop(account, None)
        await self.cache.delete(KIND, account)

    def _local_state(self, account: str) -> tuple[int, float]:
        count, until = self._local.get(account, (0, 0.0))
        if until <= time.monotonic():
            return 0, 0.0
        return count, until
