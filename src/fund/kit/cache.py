"""Cache-aside over Redis that can fail without the service failing.

Rules, in one place:

* Every Redis call has a socket timeout in tens of milliseconds and no retry;
  the first failure opens a circuit breaker, so a dead or frozen Redis is not
  called again until a single probe after ``cooldown`` seconds finds it back.
* Invalidation runs after the commit. It writes a short-lived tombstone instead
  of deleting, so a reader that loaded the old row before the commit cannot put
  it back (its populate is ``SET NX``).
* An invalidation that fails is kept in ``pending``. While anything is pending
  this process does not read the cache at all; the pending tombstones are
  written first, when Redis answers again, and only then is the cache trusted.
  Stale entries therefore are never served after a write that returned.

Keys are ``fund:v1:<kind>:<id>``: namespaced, versioned, and with no
multi-key operation, so they are Redis Cluster-safe.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import structlog
from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from fund.kit import metrics

log = structlog.get_logger(__name__)

T = TypeVar("T")

NAMESPACE = "fund:v1"
TOMBSTONE = b"\x00"
TOMBSTONE_MS = 5_000
LOCK_MS = 10_000


def key(kind: str, ident: str | int) -> str:
    return f"{NAMESPACE}:{kind}:{ident}"


def create_redis(url: str, socket_timeout: float) -> Redis:
    return Redis.from_url(
        url,
        socket_timeout=socket_timeout,
        socket_connect_timeout=socket_timeout,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
        max_connections=64,
    )


class CircuitOpen(Exception):
    """Redis is considered down; the call was not made."""


@dataclass
class Lookup:
    value: bytes | None
    hit: bool


class Cache:
    def __init__(self, redis: Redis | None, *, cooldown: float = 2.0) -> None:
        self.redis = redis
        self.cooldown = cooldown
        self.pending: set[str] = set()
        self._open_until = 0.0
        self._probe = asyncio.Lock()
        self._flights: dict[str, asyncio.Lock] = {}

    # -- breaker ---------------------------------------------------------------

    @property
    def available(self) -> bool:
        """False while the breaker is open (or there is no Redis at all)."""
        return self.redis is not None and time.monotonic() >= self._open_until

    async def _call(self, op: Callable[[Redis], Awaitable[T]]) -> T:
        if self.redis is None or time.monotonic() < self._open_until:
            raise CircuitOpen
        try:
            if self.pending:
                await self._flush_pending(self.redis)
            return await op(self.redis)
        except (TimeoutError, RedisError, OSError) as exc:
            metrics.CACHE_ERRORS.inc()
            if time.monotonic() >= self._open_until:
                log.warning("cache_unavailable", error=type(exc).__name__, cooldown=self.cooldown)
            self._open_until = time.monotonic() + self.cooldown
            raise CircuitOpen from exc

    async def _flush_pending(self, redis: Redis) -> None:
        async with self._probe:
            keys = list(self.pending)
            if not keys:
                return
            pipe = redis.pipeline(transaction=False)
            for k in keys:
                pipe.set(k, TOMBSTONE, px=TOMBSTONE_MS)
            await pipe.execute()
            self.pending.difference_update(keys)
            log.info("cache_pending_invalidations_flushed", count=len(keys))

    async def ping(self) -> bool:
        try:
            await self._call(lambda r: r.ping())
        except CircuitOpen:
            return False
        return True

    # -- cache-aside -------------------------------------------------------------

    async def get(self, kind: str, ident: str | int) -> bytes | None:
        """The cached value, or None on a miss, a tombstone or any Redis trouble."""
        try:
            value = cast("bytes | None", await self._call(lambda r: r.get(key(kind, ident))))
        except CircuitOpen:
            value = None
        if value is None or value == TOMBSTONE:
            metrics.CACHE_MISSES.labels(kind).inc()
            return None
        metrics.CACHE_HITS.labels(kind).inc()
        return value

    async def put(self, kind: str, ident: str | int, value: bytes, ttl: int) -> None:
        """Populate after a miss; never overwrites a tombstone left by an invalidation."""
        try:
            await self._call(lambda r: r.set(key(kind, ident), value, ex=ttl, nx=True))
        except CircuitOpen:
            pass

    async def replace(self, kind: str, ident: str | int, value: bytes, ttl: int) -> None:
        """Write a freshly rebuilt value (single-flight rebuilds, not row reads)."""
        try:
            await self._call(lambda r: r.set(key(kind, ident), value, ex=ttl))
        except CircuitOpen:
            pass

    async def invalidate(self, kind: str, ident: str | int) -> None:
        """Called after commit. A failure is remembered and repaired before the next read."""
        k = key(kind, ident)
        try:
            await self._call(lambda r: r.set(k, TOMBSTONE, px=TOMBSTONE_MS))
        except CircuitOpen:
            self.pending.add(k)

    async def get_or_build(
        self, kind: str, ident: str | int, ttl: int, build: Callable[[], Awaitable[bytes]]
    ) -> Lookup:
        """Single flight: one rebuild at a time per key, in this process and across processes."""
        cached = await self.get(kind, ident)
        if cached is not None:
            return Lookup(cached, hit=True)
        flight = self._flights.setdefault(key(kind, ident), asyncio.Lock())
        async with flight:
            cached = await self._peek(kind, ident)
            if cached is not None:
                return Lookup(cached, hit=True)
            if await self._lock(kind, ident):
                try:
                    value = await build()
                    await self.replace(kind, ident, value, ttl)
                    return Lookup(value, hit=False)
                finally:
                    await self._unlock(kind, ident)
            # Another process is rebuilding: wait for its result a little, then build anyway.
            for _ in range(40):
                await asyncio.sleep(0.025)
                cached = await self._peek(kind, ident)
                if cached is not None:
                    return Lookup(cached, hit=True)
            return Lookup(await build(), hit=False)

    async def _peek(self, kind: str, ident: str | int) -> bytes | None:
        try:
            value = cast("bytes | None", await self._call(lambda r: r.get(key(kind, ident))))
        except CircuitOpen:
            return None
        return None if value == TOMBSTONE else value

    async def _lock(self, kind: str, ident: str | int) -> bool:
        try:
            got: Any = await self._call(
                lambda r: r.set(key("lock", f"{kind}:{ident}"), b"1", px=LOCK_MS, nx=True)
            )
        except CircuitOpen:
            return True  # no Redis to coordinate through: this process rebuilds alone
        return bool(got)

    async def _unlock(self, kind: str, ident: str | int) -> None:
        try:
            await self._call(lambda r: r.delete(key("lock", f"{kind}:{ident}")))
        except CircuitOpen:
            pass

    async def incr_window(self, kind: str, ident: str, window_seconds: int) -> int:
        """Count an event in a fixed window; raises CircuitOpen when Redis is unavailable."""
        k = key(kind, ident)

        async def op(r: Redis) -> int:
            pipe = r.pipeline(transaction=True)
            pipe.incr(k)
            pipe.expire(k, window_seconds, nx=True)
            count, _ = await pipe.execute()
            return int(count)

        return await self._call(op)

    async def read_counter(self, kind: str, ident: str) -> int:
        """A counter's value (0 when absent); raises CircuitOpen when Redis is unavailable."""
        value = await self._call(lambda r: r.get(key(kind, ident)))
        return int(value or 0)

    async def ttl(self, kind: str, ident: str) -> int:
        return int(await self._call(lambda r: r.ttl(key(kind, ident))))

    async def delete(self, kind: str, ident: str) -> None:
        try:
            await self._call(lambda r: r.delete(key(kind, ident)))
        except CircuitOpen:
            pass

    async def close(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()
