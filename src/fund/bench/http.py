"""HTTP scenarios against a real ``fund serve`` on loopback: load, cache miss/hit, export.

The server is the product's own command started as a subprocess against the bench database,
so the figures include uvicorn, the middleware, authentication and serialisation.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import IO

import psutil

from fund.bench.loadgen import HttpConnection, LoadResult

HOST = "127.0.0.1"
START_TIMEOUT = 60.0
PRIME_TIMEOUT = 120.0
REQUEST_TIMEOUT = 30.0


@dataclass(frozen=True)
class Route:
    key: str
    label: str
    paths: tuple[str, ...]
    authenticated: bool = True


@dataclass(frozen=True)
class LoadRun:
    workers: int
    route: Route
    result: LoadResult
    generator: str
    command: str


@dataclass(frozen=True)
class CacheResult:
    samples: int
    miss_p50_ms: float
    hit_p50_ms: float
    miss_p99_ms: float
    hit_p99_ms: float
    labels_ok: bool
    """Every first read said ``X-Cache: miss`` and every second read ``hit``."""


@dataclass(frozen=True)
class ExportResult:
    rows: int
    bytes: int
    seconds: float
    rss_start_mib: float
    rss_peak_mib: float
    rss_after_warmup_mib: float
    complete: bool
    """False when the stream was cut at ``--export-seconds`` (the rate is over what was read)."""
    samples: list[tuple[float, int, float]] = field(default_factory=list)
    """(seconds, rows so far, server RSS in MiB) while streaming."""

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0

    @property
    def growth_after_warmup_mib(self) -> float:
        return self.rss_peak_mib - self.rss_after_warmup_mib


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class Server:
    """``fund serve --workers N`` on a free loopback port, for the length of a block."""

    def __init__(self, env: dict[str, str], workers: int, stderr: IO[bytes]) -> None:
        self.env = env
        self.workers = workers
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        # A file, not a pipe: nobody reads a pipe while the server runs, and a full one
        # would stop the server at its next log line.
        self._stderr = stderr
        self.log = ""
        """What the server wrote to stderr (warnings and errors), once it has stopped."""

    @property
    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "fund",
            "serve",
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
        ]

    async def start(self) -> None:
        self.process = await asyncio.to_thread(
            subprocess.Popen,
            self.command,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"fund serve exited with {self.process.returncode}: {self._read_log()}"
                )
            try:
                connection = await HttpConnection(HOST, self.port).open()
            except OSError:
                await asyncio.sleep(0.2)
                continue
            try:
                response = await connection.request("GET", "/healthz")
            finally:
                await connection.close()
            if response.status == 200 and await self._workers_ready():
                return
            await asyncio.sleep(0.2)
        raise RuntimeError("fund serve did not answer /healthz in time")

    async def _workers_ready(self) -> bool:
        if self.workers == 1:
            return True
        assert self.process is not None
        # uvicorn's supervisor spawns the workers; wait until all of them exist (each route's
        # warm-up run then waits for them to serve).
        children = psutil.Process(self.process.pid).children(recursive=True)
        spawned = [c for c in children if "spawn_main" in " ".join(c.cmdline())]
        return len(spawned) >= self.workers

    def rss_mib(self) -> float:
        """Resident memory of the server and all its workers."""
        assert self.process is not None
        try:
            root = psutil.Process(self.process.pid)
            processes = [root, *root.children(recursive=True)]
            total = 0
            for process in processes:
                try:
                    total += process.memory_info().rss
                except psutil.NoSuchProcess:
                    continue
            return total / 2**20
        except psutil.NoSuchProcess:
            return 0.0

    def stop(self) -> None:
        """SIGTERM to the server (uvicorn stops its workers); whatever it leaves is killed."""
        if self.process is None or self.process.poll() is not None:
            self.log = self._read_log()
            return
        try:
            workers = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            workers = []
        self.process.terminate()
        try:
            self.process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for worker in workers:
            try:
                worker.kill()
            except psutil.NoSuchProcess:
                continue
        self.log = self._read_log()

    def _read_log(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")


@asynccontextmanager
async def running_server(env: dict[str, str], workers: int) -> AsyncIterator[Server]:
    with tempfile.TemporaryFile() as stderr:
        server = Server(env, workers, stderr)
        try:
            await server.start()
            yield server
        finally:
            server.stop()
            # Warnings a run must not hide (the server logs at WARNING): the last few, shown.
            for line in server.log.splitlines()[-20:]:
                print(f"  · fund serve: {line}", file=sys.stderr, flush=True)


async def _answer(
    port: int,
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes = b"",
) -> bytes:
    """One request on a connection of its own; its body, or an error unless it is a 200."""
    connection = await HttpConnection(HOST, port).open()
    try:
        response = await connection.request(method, path, headers, body)
    finally:
        await connection.close()
    if response.status != 200:
        raise RuntimeError(f"{method} {path}: {response.status} {response.body[:200]!r}")
    return response.body


async def login(port: int, email: str, password: str) -> str:
    body = await _answer(
        port,
        "POST",
        "/api/v1/auth/token",
        {"Content-Type": "application/x-www-form-urlencoded"},
        sign_in_form(email, password),
    )
    return str(json.loads(body)["access_token"])


def sign_in_form(email: str, password: str) -> bytes:
    return urllib.parse.urlencode({"username": email, "password": password}).encode()


def _percentile(values: Sequence[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


async def cache_scenario(
    port: int, token: str, user_ids: Sequence[int], redis_url: str, database_url: str
) -> CacheResult:
    """Each id read twice on one keep-alive connection: first from PostgreSQL, then Redis."""
    from redis.asyncio import Redis

    from fund.db import asyncpg_dsn
    from fund.kit.cache import InvalidationLog, key
    from fund.users.service import CACHE_KIND

    names = InvalidationLog(asyncpg_dsn(database_url))
    try:
        database = await names.database()  # as the server names its keys
    finally:
        await names.close()
    redis = Redis.from_url(redis_url)
    connection = await HttpConnection(HOST, port).open()
    headers = {"Authorization": f"Bearer {token}"}
    misses: list[float] = []
    hits: list[float] = []
    labels_ok = True
    try:
        # A cold key for every id: these keys live in the bench's own Redis database.
        await redis.delete(*(key(database, CACHE_KIND, i) for i in user_ids))
        for user_id in user_ids:
            for expected, into in (("miss", misses), ("hit", hits)):
                started = time.perf_counter()
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    response = await connection.request("GET", f"/api/v1/users/{user_id}", headers)
                into.append((time.perf_counter() - started) * 1000)
                labels_ok &= response.status == 200 and response.headers.get("x-cache") == expected
    finally:
        await connection.close()
        await redis.aclose()
    return CacheResult(
        samples=len(user_ids),
        miss_p50_ms=statistics.median(misses),
        hit_p50_ms=statistics.median(hits),
        miss_p99_ms=_percentile(misses, 99),
        hit_p99_ms=_percentile(hits, 99),
        labels_ok=labels_ok,
    )


@dataclass
class _ExportProgress:
    rows: int = 0
    bytes: int = 0
    complete: bool = False


def _read_export(port: int, token: str, max_seconds: float, progress: _ExportProgress) -> None:
    """Read the export over a plain blocking socket, counting lines as they arrive.

    The client must cost little beside the server: it shares the cores with the server
    and PostgreSQL (an asyncio reader with chunk parsing held the rate down by a third).
    JSON Lines never hold a raw CR, so the body's lines are its LF count less the CRLFs
    of the chunked framing. ``Connection: close``: the end of the body is the end of the
    stream.
    """
    request = (
        "GET /api/v1/audit-logs/export?format=jsonl&include_deleted=true HTTP/1.1\r\n"
        f"Host: {HOST}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    ).encode()
    buffer = bytearray(1 << 20)
    view = memoryview(buffer)
    started = time.perf_counter()
    with socket.create_connection((HOST, port)) as sock:
        sock.sendall(request)
        head = b""
        previous = b""
        while True:
            received = sock.recv_into(buffer)
            if not received:
                progress.complete = True
                return
            data = bytes(view[:received])
            if not head:
                head, _, data = data.partition(b"\r\n\r\n")
                if not head.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError(f"export answered {head[:40]!r}")
            # A CRLF split across two reads is still seen: one byte of look-behind.
            progress.rows += data.count(b"\n") - (previous + data).count(b"\r\n")
            progress.bytes += len(data)
            previous = data[-1:]
            if time.perf_counter() - started > max_seconds:
                return  # closing the connection mid-stream ends the export on the server too


async def export_scenario(
    server: Server, token: str, *, max_seconds: float, sample_every: float = 0.1
) -> ExportResult:
    """Stream the audit export (at most ``max_seconds``), sampling the server's memory."""
    progress = _ExportProgress()
    samples: list[tuple[float, int, float]] = []
    rss_start = server.rss_mib()
    started = time.perf_counter()
    reading = asyncio.create_task(
        asyncio.to_thread(_read_export, server.port, token, max_seconds, progress)
    )
    while not reading.done():
        samples.append((time.perf_counter() - started, progress.rows, server.rss_mib()))
        await asyncio.wait([reading], timeout=sample_every)
    await reading  # its errors, if any
    seconds = time.perf_counter() - started
    rows = progress.rows
    samples.append((seconds, rows, server.rss_mib()))
    # Past the first tenth of the stream, buffers and caches are warm: growth after is a leak.
    warm = [s for s in samples if s[1] >= rows / 10] or samples
    return ExportResult(
        rows=rows,
        bytes=progress.bytes,
        seconds=seconds,
        rss_start_mib=rss_start,
        rss_peak_mib=max(s[2] for s in samples),
        rss_after_warmup_mib=warm[0][2],
        complete=progress.complete,
        samples=samples,
    )


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


_WRK_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def parse_wrk(output: str) -> LoadResult:
    """The figures of ``wrk --latency`` output."""

    def latency(percent: str) -> float:
        match = re.search(rf"^\s*{percent}%\s+([\d.]+)(us|ms|s)\s*$", output, re.MULTILINE)
        if match is None:
            raise ValueError(f"no {percent}% latency in wrk output")
        return float(match.group(1)) * _WRK_UNITS[match.group(2)]

    done = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s)", output)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if done is None or rps is None:
        raise ValueError("no request count in wrk output")
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    return LoadResult(
        requests=int(done.group(1)),
        errors=int(errors.group(1)) if errors else 0,
        seconds=float(done.group(2)) * _WRK_UNITS[done.group(3)] / 1000,
        rps=float(rps.group(1)),
        p50_ms=latency("50"),
        p99_ms=latency("99"),
        failures={"non-2xx/3xx": int(errors.group(1))} if errors else {},
    )


async def prime(port: int, route: Route, token: str) -> None:
    """One request, waited for, before a route's load: a cold cache entry is built here,
    not inside the measured run (a cold ``/stats`` takes over half a second at 10M
    entries, and every request of the run would wait for it)."""
    headers = {"Authorization": f"Bearer {token}"} if route.authenticated else {}
    async with asyncio.timeout(PRIME_TIMEOUT):
        await _answer(port, "GET", route.paths[0], headers)


async def load(
    port: int,
    route: Route,
    token: str,
    *,
    seconds: float,
    connections: int,
    use_wrk: bool,
) -> tuple[LoadResult, str, str]:
    """(result, generator name, command) for one route."""
    headers = {"Authorization": f"Bearer {token}"} if route.authenticated else {}
    if use_wrk:
        # wrk takes one URL: the first path (the rotation of ids only matters for misses).
        command = [
            "wrk",
            "-t2",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--latency",
            *(arg for k, v in headers.items() for arg in ("-H", f"{k}: {v}")),
            f"http://{HOST}:{port}{route.paths[0]}",
        ]
        generator = "wrk"
    else:
        command = [
            sys.executable,
            "-m",
            "fund.bench.loadgen",
            "--port",
            str(port),
            "--connections",
            str(connections),
            "--seconds",
            str(seconds),
            *(arg for p in route.paths for arg in ("--path", p)),
            *(arg for k, v in headers.items() for arg in ("--header", f"{k}: {v}")),
        ]
        generator = "built-in asyncio keep-alive client (fund.bench.loadgen, 2 processes)"
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=seconds + 60)
    if process.returncode != 0:
        raise RuntimeError(f"load generator failed: {err.decode()[-500:]}")
    result = parse_wrk(out.decode()) if use_wrk else LoadResult(**json.loads(out))
    shown = " ".join(
        "'Authorization: Bearer $TOKEN'" if a.startswith("Authorization") else a
        for a in command[1:]
    )
    return result, generator, f"{'wrk' if use_wrk else 'python'} {shown}"
