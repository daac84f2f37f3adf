"""Cache-aside over Redis that can fail without the service failing or serving stale data.

Rules, in one place (the reasoning is in docs/CACHING.md):

* Every Redis call has a socket timeout in tens of milliseconds and no retry.
  A few consecutive failures open a circuit breaker: a dead or frozen Redis is
  not called again until ``cooldown`` has passed, and then by one probe at a time.
* Invalidation runs after the commit. It writes a short-lived tombstone instead
  of deleting; populates are ``SET NX`` and carry a deadline, so a reader that
  loaded the old row before the commit cannot put it back, even when Redis
  executes its populate late.
* An invalidation that fails is recorded in PostgreSQL (``InvalidationLog``)
  before the write returns, and the writer then waits one trust lease. Every
  process reads the log at most one lease before it reads Redis, writes the
  recorded tombstones first, and only then trusts the cache. So no process,
  including one that never saw Redis fail, serves an entry older than a write
  that returned.

Keys are ``fund:v2:<database>:<kind>:<id>``: versioned, and named after the PostgreSQL
database they cache (``InvalidationLog.database``), so two deployments that share a Redis
database never read each other's entries. One read takes two keys (an ``MGET``,
``Cache.get_many``), in different hash slots: one Redis server, not a Cluster.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import asyncpg
import structlog
from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from fund.kit import metrics

log = structlog.get_logger(__name__)

T = TypeVar("T")

# Bumped when an entry's format changes; v2: a user entry leads with its token version.
NAMESPACE = "fund:v2"
TOMBSTONE = b"\x00"
TOMBSTONE_MS = 5_000
# A populate that Redis executes later than this after its database read began is dropped:
# by then a tombstone written after a concurrent commit (it lives TOMBSTONE_MS) may be gone.
POPULATE_WINDOW_MS = 2_000
LOCK_MS = 10_000
TRUST_LEASE = 0.25
"""Seconds a process trusts Redis after reading the invalidation log; writers wait this long."""
LEASE_MARGIN = 0.01
FAILURES_TO_OPEN = 3
"""Consecutive failed calls that open the breaker: one late reply from a busy event loop does
not switch the cache off, and a dead Redis still costs at most this many timeouts."""
MAX_REDIS_CALLS = 32
"""Redis calls in flight per process; a burst waits here instead of opening more sockets."""
FLUSH_BATCH = 500
"""Tombstones written per pipelined batch when pending invalidations are flushed."""

_POPULATE = """
local now = redis.call('TIME')
if tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) > tonumber(ARGV[3]) then
    return 0
end
if redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2], 'NX') then
    return 1
end
return 0
"""


_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""

_WITHDRAW = """
local count = tonumber(redis.call('GET', KEYS[1]))
if count and count > 0 then
    return redis.call('DECR', KEYS[1])
end
return 0
"""


def prefix(database: str) -> str:
    """What every key of the deployment whose database is ``database`` starts with."""
    return f"{NAMESPACE}:{database}:"


def key(database: str, kind: str, ident: str | int) -> str:
    """The Redis key of one entry of the deployment whose database is ``database``."""
    return f"{prefix(database)}{kind}:{ident}"


def entry_name(kind: str, ident: str | int) -> str:
    """An entry as the invalidation log and ``Cache.pending`` name it: within its database."""
    return f"{kind}:{ident}"


def create_redis(url: str, socket_timeout: float) -> Redis:
    """The client: each socket operation bounded by ``socket_timeout``, no retry, no
    health-check pings, at most ``MAX_REDIS_CALLS`` connections.

    Tried and left: no socket timeout, each call bounded whole by ``asyncio.timeout``
    instead, which spares redis-py's ``asyncio.wait_for`` around every send (a task per
    command: a GET cost 69-87 µs of client CPU instead of 93-97). That window is wider (it
    spans the connection's checkout too) and a saturated event loop's lag counts in it: in
    the one-worker load runs of ``fund bench`` it timed out twice and opened the breaker, and
    the cached ``GET /users/{id}`` fell from 1,260 to 444 requests/s; with socket timeouts
    the same runs had opened it never.
    """
    return Redis.from_url(
        url,
        socket_timeout=socket_timeout,
        socket_connect_timeout=socket_timeout,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
        max_connections=MAX_REDIS_CALLS,
    )


class CircuitOpen(Exception):
    """Redis is considered down; the call was not made or did not succeed."""


@dataclass
class Lookup:
    value: bytes | None
    hit: bool
    published: bool = True
    """Whether Redis holds the value (False: rebuilt while Redis did not take it)."""


@dataclass(frozen=True, slots=True)
class Found:
    """An entity as the cache holds it (its schema's JSON), and whether it came from there."""

    value: bytes
    hit: bool


APPLICATION_NAME = "fund-invalidation-log"
"""How the log's own connection (one per process, beside the engine's pool) shows in
``pg_stat_activity``."""


class InvalidationLog:
    """Invalidations that could not reach Redis, in PostgreSQL where every process sees them.

    It talks over one connection of its own, outside the request sessions, so
    its statements never count against a request's queries.
    """

    DATABASE = (
        "SELECT to_hex(system_identifier) || '.' || d.oid FROM pg_control_system(), pg_database d"
        " WHERE d.datname = current_database()"
    )
    """What tells this database from any other a Redis database may be shared with: the
    cluster's system identifier (set by ``initdb``, so a restored dump differs) and the
    database's oid within it. Any role may read both, unless the server revokes
    ``pg_control_system()`` (some managed services may): then ``DATABASE_ALONE``."""
    DATABASE_ALONE = (
        "SELECT 'db.' || d.oid || '.' || left(md5(d.datname), 8) FROM pg_database d"
        " WHERE d.datname = current_database()"
    )
    """The database's oid and name alone: two servers can hold a database of one name and
    oid, so then only a Redis database of its own keeps a deployment apart."""

    def __init__(self, dsn: str, *, timeout: float = 2.0) -> None:
        self.dsn = dsn
        self.timeout = timeout
        self._conn: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()

    async def _run(self, op: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        async with self._lock:
            try:
                async with asyncio.timeout(self.timeout):
                    if self._conn is None or self._conn.is_closed():
                        self._conn = await asyncpg.connect(
                            self.dsn, server_settings={"application_name": APPLICATION_NAME}
                        )
                    return await op(self._conn)
            except BaseException:
                await self._drop()
                raise

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            conn.terminate()

    async def database(self) -> str:
        """This database's name in the cache's keys (``DATABASE``)."""
        try:
            name: str = await self._run(lambda c: c.fetchval(self.DATABASE))
        except (asyncpg.InsufficientPrivilegeError, asyncpg.UndefinedFunctionError) as exc:
            log.warning("cache_keys_without_system_identifier", error=type(exc).__name__)
            name = await self._run(lambda c: c.fetchval(self.DATABASE_ALONE))
        return name

    async def record(self, entry: str) -> None:
        """An entry (``entry_name``) whose invalidation did not reach Redis."""
        await self._run(
            lambda c: c.execute("INSERT INTO cache_invalidations (key) VALUES ($1)", entry)
        )

    async def fetch(self) -> dict[str, int]:
        """Each recorded entry with the newest row id that names it."""
        rows = await self._run(
            lambda c: c.fetch("SELECT key, max(id) AS id FROM cache_invalidations GROUP BY key")
        )
        return {row["key"]: row["id"] for row in rows}

    async def forget(self, entries: dict[str, int]) -> None:
        """Delete what has been written to Redis; rows recorded since then stay."""
        await self._run(
            lambda c: c.execute(
                "DELETE FROM cache_invalidations c USING unnest($1::text[], $2::bigint[]) "
                "AS done(key, id) WHERE c.key = done.key AND c.id <= done.id",
                list(entries),
                list(entries.values()),
            )
        )

    async def close(self) -> None:
        async with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None and not conn.is_closed():
                await conn.close()


class Cache:
    def __init__(
        self,
        redis: Redis | None,
        *,
        cooldown: float = 2.0,
        invalidation_log: InvalidationLog | None = None,
        lease: float = TRUST_LEASE,
        database: str | None = None,
    ) -> None:
        self.redis = redis
        self.cooldown = cooldown
        self.invalidation_log = invalidation_log
        self.lease = lease
        self.database = database
        """The database named in every key: given, or read once through the invalidation
        log; until it is known, Redis is not used (every read is a miss, every write goes
        to the log). Without a log and not given: ``local``, for a cache of one database."""
        if database is None and invalidation_log is None:
            self.database = "local"
        self.pending: dict[str, int | None] = {}
        """Tombstones to write before Redis is read again: entry -> log row id (None: local)."""
        self.calls = 0
        """Redis calls attempted: a breaker that works keeps this still while Redis is down."""
        self._open_until = 0.0  # 0: closed; else the breaker is open until then
        self._failures = 0
        self._probing = False
        self._trusted_since = -math.inf
        self._log_retry_at = 0.0
        self._database_retry_at = 0.0
        self._log_lock = asyncio.Lock()
        self._flush_lock = asyncio.Lock()
        self._slots = asyncio.Semaphore(MAX_REDIS_CALLS)
        self._flights: dict[str, asyncio.Future[bytes]] = {}
        # Last rebuilds, for while Redis is down: (value, expires, whether Redis has it).
        self._kept: dict[str, tuple[bytes, float, bool]] = {}
        self._populate = redis.register_script(_POPULATE) if redis is not None else None
        self._release = redis.register_script(_RELEASE) if redis is not None else None
        self._withdraw = redis.register_script(_WITHDRAW) if redis is not None else None

    # -- breaker ---------------------------------------------------------------

    @property
    def breaker_open(self) -> bool:
        return self._open_until != 0.0

    @property
    def available(self) -> bool:
        """False while the breaker is open and not yet due for a probe (or with no Redis)."""
        return self.redis is not None and time.monotonic() >= self._open_until

    def key(self, kind: str, ident: str | int) -> str:
        """The Redis key of an entry; only once ``database`` is known (``_call`` sees to it)."""
        assert self.database is not None
        return key(self.database, kind, ident)

    async def _known_database(self) -> bool:
        """Whether the database the keys name is known, reading it once if need be; a
        failure is retried no sooner than ``cooldown`` later (PostgreSQL is not hammered)."""
        if self.database is not None:
            return True
        log_ = self.invalidation_log
        assert log_ is not None
        async with self._log_lock:
            started = time.monotonic()
            if self.database is not None:
                return True
            if started < self._database_retry_at:
                return False
            try:
                self.database = await log_.database()
            except Exception as exc:
                log.warning("cache_database_unknown", error=type(exc).__name__)
                self._database_retry_at = time.monotonic() + self.cooldown  # as in _trusted
                return False
            log.info("cache_keys", prefix=prefix(self.database))
            return True

    async def _call(self, op: Callable[[Redis], Awaitable[T]]) -> T:
        redis = self.redis
        if redis is None:
            raise CircuitOpen
        if self.database is None and not await self._known_database():
            metrics.CACHE_ERRORS.inc()
            raise CircuitOpen
        probe = False
        if self._open_until:
            if time.monotonic() < self._open_until or self._probing:
                metrics.CACHE_ERRORS.inc()
                raise CircuitOpen
            self._probing = probe = True
        try:
            async with self._slots:
                if self._open_until and not probe:  # it opened while this call queued
                    metrics.CACHE_ERRORS.inc()
                    raise CircuitOpen
                self.calls += 1
                if self.pending:
                    await self._flush_pending(redis)
                result = await op(redis)
        except (TimeoutError, RedisError, OSError) as exc:
            metrics.CACHE_ERRORS.inc()
            self._failures += 1
            if probe or self._failures >= FAILURES_TO_OPEN:
                if not self._open_until or probe:
                    log.warning(
                        "cache_unavailable",
                        error=type(exc).__name__,
                        # What Redis said ("DB index is out of range" for a database it
                        # does not have): a misconfiguration reads as one, not as an outage.
                        detail=str(exc)[:200],
                        cooldown=self.cooldown,
                    )
                self._open_until = time.monotonic() + self.cooldown
            raise CircuitOpen from exc
        finally:
            if probe:
                self._probing = False
        self._failures = 0
        if probe:
            self._open_until = 0.0
            log.info("cache_available")
        return result

    async def _flush_pending(self, redis: Redis) -> None:
        async with self._flush_lock:
            written = dict(self.pending)
            if not written:
                return
            names = list(written)
            start_of_key = prefix(cast("str", self.database))
            # In batches: after a long outage, one huge pipeline could outlast the socket timeout.
            for start in range(0, len(names), FLUSH_BATCH):
                pipe = redis.pipeline(transaction=False)
                for name in names[start : start + FLUSH_BATCH]:
                    pipe.set(start_of_key + name, TOMBSTONE, px=TOMBSTONE_MS)
                await pipe.execute()
                for name in names[start : start + FLUSH_BATCH]:
                    if self.pending.get(name, written[name]) == written[name]:  # not failed since
                        self.pending.pop(name, None)
            log.info("cache_pending_invalidations_flushed", count=len(written))
        recorded = {k: row for k, row in written.items() if row is not None}
        if recorded and self.invalidation_log is not None:
            try:
                await self.invalidation_log.forget(recorded)
            except Exception as exc:
                # The rows stay: someone writes the same tombstones again later, harmlessly.
                log.warning("cache_invalidation_log_unavailable", error=type(exc).__name__)

    async def _trusted(self) -> bool:
        """Whether this process has read the invalidation log within the last lease."""
        if self.invalidation_log is None:
            return True
        if time.monotonic() - self._trusted_since < self.lease:
            return True
        async with self._log_lock:
            started = time.monotonic()  # the lease runs from before the read, not after it
            if started - self._trusted_since < self.lease:
                return True
            if started < self._log_retry_at:
                return False
            try:
                recorded = await self.invalidation_log.fetch()
            except Exception as exc:
                log.warning("cache_invalidation_log_unavailable", error=type(exc).__name__)
                # From the failure, not from the start of the read: a read that timed out
                # outlasts the cooldown, and every request queued on the lock meanwhile would
                # try again in turn, each for a whole timeout (a frozen PostgreSQL answered
                # concurrent requests 5 s apart, one after the other).
                self._log_retry_at = time.monotonic() + self.cooldown
                return False
            for k, row in recorded.items():
                self.pending[k] = max(row, self.pending.get(k) or 0)
            self._trusted_since = started
            return True

    async def ping(self) -> bool:
        try:
            await self._call(lambda r: r.ping())
        except CircuitOpen:
            return False
        return True

    # -- cache-aside -------------------------------------------------------------

    async def _read(self, kind: str, ident: str | int) -> bytes | None:
        """The live value; None on a miss, a tombstone, an untrusted cache or Redis trouble."""
        return (await self._read_many(kind, (ident,)))[0]

    async def _read_many(self, kind: str, idents: Sequence[str | int]) -> list[bytes | None]:
        """``_read`` for several entries in one round trip: one ``MGET`` (client CPU here,
        per call: ``GET`` 106 µs, ``MGET`` of two 128 µs, a pipeline of two GETs 159 µs).
        The client is a plain one, whose keys live on one server, not a Cluster client."""
        if not self.available or not await self._trusted():
            return [None] * len(idents)

        async def op(r: Redis) -> list[bytes | None]:
            keys = [self.key(kind, ident) for ident in idents]
            if len(keys) == 1:
                return [cast("bytes | None", await r.get(keys[0]))]
            return cast("list[bytes | None]", await r.mget(keys))

        try:
            values = await self._call(op)
        except CircuitOpen:
            return [None] * len(idents)
        return [None if value == TOMBSTONE else value for value in values]

    async def get(self, kind: str, ident: str | int) -> bytes | None:
        return (await self.get_many(kind, (ident,)))[0]

    async def get_many(self, kind: str, idents: Sequence[str | int]) -> list[bytes | None]:
        """The live values of several entries of one kind, in one Redis round trip."""
        values = await self._read_many(kind, idents)
        for value in values:
            (metrics.CACHE_MISSES if value is None else metrics.CACHE_HITS).labels(kind).inc()
        return values

    async def load_through(
        self,
        kind: str,
        ident: str | int,
        ttl: int,
        load: Callable[[], Awaitable[bytes | None]],
    ) -> bytes | None:
        """Cache-aside's miss: ``load`` the row (None: no such row), then populate its entry."""
        deadline_ms = int(time.time() * 1000) + POPULATE_WINDOW_MS  # taken before the read
        value = await load()
        if value is not None and self._populate is not None:
            populate = self._populate
            try:
                await self._call(
                    lambda r: populate(
                        keys=[self.key(kind, ident)],
                        args=[value, ttl * 1000, deadline_ms],
                        client=r,
                    )
                )
            except CircuitOpen:
                pass
        return value

    async def replace(self, kind: str, ident: str | int, value: bytes, ttl: float) -> bool:
        """Write a freshly rebuilt value (single-flight rebuilds, not row reads); whether
        Redis took it."""
        try:
            await self._call(
                lambda r: r.set(self.key(kind, ident), value, px=max(1, int(ttl * 1000)))
            )
        except CircuitOpen:
            return False
        return True

    async def invalidate(self, kind: str, ident: str | int) -> None:
        """Called after commit; returns only once no process can serve the old entry."""
        if self.redis is None:
            return
        try:
            await self._call(lambda r: r.set(self.key(kind, ident), TOMBSTONE, px=TOMBSTONE_MS))
            return
        except CircuitOpen:
            name = entry_name(kind, ident)
            self.pending.setdefault(name, None)
        if self.invalidation_log is None:
            return
        log.warning("cache_invalidation_deferred", entry=name)
        # If PostgreSQL fails here too, this raises: the unit of work logs it (the change is
        # committed and answered as done) and this process keeps the entry in ``pending``.
        await self.invalidation_log.record(name)
        # Every process that read the log before the record stops trusting Redis by then.
        await asyncio.sleep(self.lease + LEASE_MARGIN)

    async def get_or_build(
        self, kind: str, ident: str | int, ttl: int, build: Callable[[], Awaitable[bytes]]
    ) -> Lookup:
        """A value rebuilt by ``build`` when cold, for entries that only expire (statistics).

        Single flight: one rebuild at a time per key, in this process and across processes.
        """
        k = entry_name(kind, ident)
        kept = self._kept.get(k)
        now = time.monotonic()
        # Rebuilt while Redis did not answer, so newer than what Redis may still hold from
        # before: published now, or a dashboard would see its figures go back in time when
        # Redis returns (with the rest of the rebuild's TTL).
        if (
            kept is not None
            and not kept[2]  # unpublished
            and kept[1] > now
            and self.available
            and await self.replace(kind, ident, kept[0], kept[1] - now)
        ):
            self._kept[k] = (kept[0], kept[1], True)
            return Lookup(kept[0], hit=True)
        cached = await self.get(kind, ident)
        if cached is not None:
            return Lookup(cached, hit=True)
        if (self.redis is None or self.breaker_open) and kept and kept[1] > time.monotonic():
            # Not invalidated by writes (it lives out its TTL anyway): this process's copy
            # stands in for Redis, so an outage does not mean one rebuild per request.
            return Lookup(kept[0], hit=True)
        flight = self._flights.get(k)
        if flight is None:
            flight = asyncio.get_running_loop().create_future()
            self._flights[k] = flight
            try:
                lookup = await self._build_once(kind, ident, ttl, build)
            except BaseException:
                flight.cancel()  # the waiters build for themselves
                raise
            finally:
                del self._flights[k]
            value, published = lookup.value, lookup.published
            assert value is not None
            flight.set_result(value)
            self._kept[k] = (value, time.monotonic() + ttl, published)
            return lookup
        try:
            return Lookup(await asyncio.shield(flight), hit=False)
        except asyncio.CancelledError:
            if not flight.cancelled():
                raise  # this request itself was cancelled
        return await self.get_or_build(kind, ident, ttl, build)

    async def _build_once(
        self, kind: str, ident: str | int, ttl: int, build: Callable[[], Awaitable[bytes]]
    ) -> Lookup:
        token = secrets.token_bytes(16)
        if await self._lock(kind, ident, token):
            try:
                cached = await self._read(kind, ident)  # built by another process meanwhile
                if cached is not None:
                    return Lookup(cached, hit=True)
                value = await build()
                published = await self.replace(kind, ident, value, ttl)
                return Lookup(value, hit=False, published=published)
            finally:
                await self._unlock(kind, ident, token)
        # Another process is rebuilding: wait for its result a little, then build anyway.
        for _ in range(40):
            await asyncio.sleep(0.025)
            cached = await self._read(kind, ident)
            if cached is not None:
                return Lookup(cached, hit=True)
        # Redis answers (it refused the lock): the other process's build is published by it.
        return Lookup(await build(), hit=False)

    async def _lock(self, kind: str, ident: str | int, token: bytes) -> bool:
        try:
            got: Any = await self._call(
                lambda r: r.set(self.key("lock", f"{kind}:{ident}"), token, px=LOCK_MS, nx=True)
            )
        except CircuitOpen:
            return True  # no Redis to coordinate through: this process rebuilds alone
        return bool(got)

    async def _unlock(self, kind: str, ident: str | int, token: bytes) -> None:
        """Release the lock if it is still this build's: one that outlived ``LOCK_MS`` may
        have expired and been taken by another process, whose lock is not ours to drop."""
        release = self._release
        if release is None:
            return
        try:
            await self._call(
                lambda r: release(
                    keys=[self.key("lock", f"{kind}:{ident}")], args=[token], client=r
                )
            )
        except CircuitOpen:
            pass

    # -- counters (login throttling) ---------------------------------------------

    async def incr_window(self, kind: str, ident: str, window_seconds: int) -> tuple[int, int]:
        """Count an event in a fixed window: (the count, seconds left in the window).

        Raises CircuitOpen when Redis is unavailable.
        """

        async def op(r: Redis) -> tuple[int, int]:
            k = self.key(kind, ident)
            pipe = r.pipeline(transaction=True)
            # The window starts with its first event: SET NX, not EXPIRE NX (Redis 7 only;
            # on 6 every transaction aborted and tripped the breaker on a healthy Redis).
            pipe.set(k, 0, ex=window_seconds, nx=True)
            pipe.incr(k)
            pipe.ttl(k)
            _, count, seconds_left = await pipe.execute()
            return int(count), int(seconds_left)

        return await self._call(op)

    async def decr_window(self, kind: str, ident: str) -> None:
        """Take back one event counted by ``incr_window`` (never below 0, the window's end
        unchanged). Best effort: nothing is taken back while Redis is unavailable."""
        withdraw = self._withdraw
        if withdraw is None:
            return
        try:
            await self._call(lambda r: withdraw(keys=[self.key(kind, ident)], client=r))
        except CircuitOpen:
            pass

    async def delete(self, kind: str, ident: str) -> None:
        try:
            await self._call(lambda r: r.delete(self.key(kind, ident)))
        except CircuitOpen:
            pass

    async def close(self) -> None:
        """Closes the log's connection and Redis's. A close that fails or times out (Redis
        hung, or a busy loop past the 50 ms that redis-py gives a socket to close) is
        logged: the process is stopping, and what stops after it must still run."""
        closes: list[Callable[[], Awaitable[None]]] = []
        if self.invalidation_log is not None:
            closes.append(self.invalidation_log.close)
        if self.redis is not None:
            closes.append(self.redis.aclose)
        for close in closes:
            try:
                await close()
            except Exception as exc:  # whatever it is, the shutdown goes on
                log.warning("cache_close_failed", error=type(exc).__name__)
