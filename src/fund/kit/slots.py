"""A bound on how many of one kind of long-running work a process does at once."""

from __future__ import annotations

import asyncio


class NoSlot(Exception):
    """No slot came free in the time allowed."""


class Slots:
    """At most ``size`` holders at once in this process; a newcomer waits its turn up to
    ``wait`` seconds, first come first served, then gets ``NoSlot``."""

    def __init__(self, size: int, *, wait: float) -> None:
        self.size = size
        self.wait = wait
        self._free = asyncio.Semaphore(size)
        self.held = 0
        self.waiting = 0
        """Callers waiting for a turn now."""

    async def take(self) -> None:
        """One slot, for the caller to ``give_back``; ``NoSlot`` after ``wait`` seconds."""
        self.waiting += 1
        try:
            async with asyncio.timeout(self.wait):
                await self._free.acquire()
        except TimeoutError:
            raise NoSlot from None
        finally:
            self.waiting -= 1
        self.held += 1

    def give_back(self) -> None:
        self.held -= 1
        self._free.release()
