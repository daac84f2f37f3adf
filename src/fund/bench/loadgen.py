"""A small HTTP/1.1 keep-alive client and load generator (used when ``wrk`` is not installed).

It runs in a process of its own (``python -m fund.bench.loadgen``) so that its event loop does
not share a core with the bench's own bookkeeping; it talks to loopback only, for a bounded time
and a bounded number of requests, and prints one JSON summary line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class LoadResult:
    requests: int
    errors: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    failures: dict[str, int] = field(default_factory=dict)
    """Responses of status 400 and above, by status."""


class HttpConnection:
    """One keep-alive HTTP/1.1 connection; enough protocol for the bench and nothing more."""

    def __init__(self, host: str, port: int) -> None:
        if host not in LOOPBACK:
            raise ValueError(f"the load generator only talks to loopback, not {host!r}")
        self.host = host
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def open(self) -> HttpConnection:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        return self

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except OSError:
                pass

    def encode(
        self,
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
    ) -> bytes:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if body or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    async def send(self, raw: bytes) -> None:
        assert self._writer is not None
        self._writer.write(raw)

    async def read_head(self) -> tuple[int, dict[str, str]]:
        assert self._reader is not None
        head = await self._reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in header_lines:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        return int(status_line.split(" ", 2)[1]), headers

    async def read_body(self, headers: dict[str, str]) -> bytes:
        """The whole body: by its length, or chunk by chunk to the last."""
        assert self._reader is not None
        if "content-length" in headers:
            return await self._reader.readexactly(int(headers["content-length"]))
        if headers.get("transfer-encoding", "").lower() != "chunked":
            return b""
        parts: list[bytes] = []
        while True:
            size_line = await self._reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0], 16)
            data = await self._reader.readexactly(size + 2)
            if size == 0:
                return b"".join(parts)
            parts.append(data[:-2])

    async def request(
        self,
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
    ) -> Response:
        await self.send(self.encode(method, path, headers, body))
        status, response_headers = await self.read_head()
        return Response(status, response_headers, await self.read_body(response_headers))


async def _worker(
    host: str,
    port: int,
    requests: Sequence[bytes],
    offset: int,
    deadline: float,
    budget: list[int],
    latencies: list[float],
    failures: dict[str, int],
) -> None:
    connection = await HttpConnection(host, port).open()
    i = offset
    try:
        while time.perf_counter() < deadline and budget[0] > 0:
            budget[0] -= 1
            raw = requests[i % len(requests)]
            i += 1
            started = time.perf_counter()
            await connection.send(raw)
            status, headers = await connection.read_head()
            await connection.read_body(headers)
            latencies.append(time.perf_counter() - started)
            if status >= 400:
                failures[str(status)] = failures.get(str(status), 0) + 1
    finally:
        await connection.close()


@dataclass(frozen=True)
class Sample:
    """What one generator process saw: every latency (s), failures by status, its duration."""

    latencies: list[float]
    failures: dict[str, int]
    seconds: float


async def run_load(
    host: str,
    port: int,
    paths: Sequence[str],
    headers: dict[str, str],
    *,
    connections: int,
    seconds: float,
    max_requests: int,
) -> Sample:
    """``connections`` keep-alive connections GET ``paths`` round-robin for ``seconds``."""
    probe = HttpConnection(host, port)
    requests = [probe.encode("GET", path, headers) for path in paths]
    latencies: list[float] = []
    failures: dict[str, int] = {}
    budget = [max_requests]
    started = time.perf_counter()
    deadline = started + seconds
    await asyncio.gather(
        *(
            _worker(host, port, requests, n, deadline, budget, latencies, failures)
            for n in range(connections)
        )
    )
    return Sample(latencies, failures, time.perf_counter() - started)


def summarise(samples: Sequence[Sample]) -> LoadResult:
    latencies = sorted(x for s in samples for x in s.latencies)
    failures: dict[str, int] = {}
    for sample in samples:
        for status, count in sample.failures.items():
            failures[status] = failures.get(status, 0) + count
    elapsed = max(s.seconds for s in samples)
    if not latencies:
        return LoadResult(0, sum(failures.values()), elapsed, 0.0, 0.0, 0.0, failures)
    cuts = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else []
    return LoadResult(
        requests=len(latencies),
        errors=sum(failures.values()),
        seconds=elapsed,
        rps=len(latencies) / elapsed,
        p50_ms=statistics.median(latencies) * 1000,
        p99_ms=(cuts[98] if cuts else latencies[0]) * 1000,
        failures=failures,
    )


def _process(args: argparse.Namespace, connections: int, max_requests: int) -> Sample:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    headers = dict(h.split(": ", 1) for h in args.header)
    return asyncio.run(
        run_load(
            args.host,
            args.port,
            args.path,
            headers,
            connections=connections,
            seconds=args.seconds,
            max_requests=max_requests,
        )
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fund.bench.loadgen")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", action="append", required=True)
    parser.add_argument("--header", action="append", default=[])
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--max-requests", type=int, default=2_000_000)
    parser.add_argument(
        "--processes", type=int, default=2, help="generator processes, like wrk's threads"
    )
    args = parser.parse_args(argv)
    processes = max(1, min(args.processes, args.connections))
    shares = [
        args.connections // processes + (i < args.connections % processes) for i in range(processes)
    ]
    budgets = [args.max_requests // processes] * processes
    if processes == 1:
        samples = [_process(args, shares[0], budgets[0])]
    else:
        # One event loop per core: a single Python loop would be the bottleneck, not the server.
        with multiprocessing.get_context("fork").Pool(processes) as pool:
            samples = pool.starmap(
                _process, [(args, c, b) for c, b in zip(shares, budgets, strict=True)]
            )
    sys.stdout.write(json.dumps(asdict(summarise(samples))) + "\n")


if __name__ == "__main__":
    main()
