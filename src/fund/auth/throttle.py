"""Per-account login throttling: Redis when it answers, this process's memory when not."""

from __future__ import annotations

import hashlib
import time

from fund.kit.cache import Cache, CircuitOpen

KIND = "login_failures"


def _account(email: str) -> str:
    """The key of an address as sign-in looks it up (``fund.kit.text.sign_in_address``, in
    ``AuthService.login``). Hashed: the key names no email, and any input makes a bounded key."""
    return hashlib.sha256(email.encode()).hexdigest()[:32]


LOCAL_ACCOUNTS = 100_000
"""Accounts whose count this process keeps (for a Redis outage): memory stays bounded."""


class LoginThrottle:
    def __init__(self, cache: Cache, *, max_failures: int, window_seconds: int) -> None:
        self.cache = cache
        self.max_failures = max_failures
        self.window = window_seconds
        self._local: dict[str, tuple[int, float]] = {}

    async def attempt(self, email: str) -> int:
        """Count a sign-in attempt on this account before its password is checked; the
        seconds to wait when it is over the limit, 0 when it may be checked now.

        Counted first, so that counting and checking are one step: attempts sent at once are
        numbered one by one, and only the first ``max_failures`` of a window get a password
        check. A success clears the count (``succeeded``), so only failures add up.

        While Redis answers, its count decides, whichever worker saw each attempt: a success
        on one worker clears what failures on another had counted. This process counts
        every attempt it sees too, synchronously (so a burst is numbered in order even if
        Redis stops answering in the middle of it), and raises its count to Redis's when
        Redis's is higher; that count decides only when Redis does not answer, so an outage
        neither resets the count nor lifts the limit.
        """
        account = _account(email)
        count, until = self._local_state(account)
        if count == 0:
            until = time.monotonic() + self.window
        count += 1
        self._remember(account, count, until)
        try:
            shared, seconds_left = await self.cache.incr_window(KIND, account, self.window)
        except CircuitOpen:
            return max(1, int(until - time.monotonic())) if count > self.max_failures else 0
        seen, seen_until = self._local_state(account)
        if shared > seen:
            self._remember(account, shared, seen_until or time.monotonic() + seconds_left)
        return max(1, seconds_left) if shared > self.max_failures else 0

    async def unanswered(self, email: str) -> None:
        """Take back the attempt ``attempt`` counted when its check gave no verdict (the
        database down, the request cancelled): only failures may add up to a lockout, and
        a user retrying through an outage, as its 503 asks, has failed nothing."""
        account = _account(email)
        count, until = self._local_state(account)
        if count > 1:
            self._remember(account, count - 1, until)
        else:
            self._local.pop(account, None)
        await self.cache.decr_window(KIND, account)

    async def succeeded(self, email: str) -> None:
        account = _account(email)
        self._local.pop(account, None)
        await self.cache.delete(KIND, account)

    def _local_state(self, account: str) -> tuple[int, float]:
        count, until = self._local.get(account, (0, 0.0))
        if until <= time.monotonic():
            return 0, 0.0
        return count, until

    def _remember(self, account: str, count: int, until: float) -> None:
        self._local.pop(account, None)  # re-inserted last: the dict's order is by last attempt
        self._local[account] = (count, until)
        if len(self._local) > LOCAL_ACCOUNTS:
            # Expired windows go first; if a spray of emails still overflows, the accounts
            # least recently tried, never the one being tried now. Down to nine tenths, so
            # the sweep runs once per 10,000 new accounts, not on every attempt of a spray.
            now = time.monotonic()
            for stale in [a for a, (_, end) in self._local.items() if end <= now]:
                del self._local[stale]
            while len(self._local) > LOCAL_ACCOUNTS * 9 // 10:
                del self._local[next(iter(self._local))]
