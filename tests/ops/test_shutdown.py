"""SIGTERM with an export under way that outlasts ``FUND_SHUTDOWN_TIMEOUT``: the client's
transfer stays visibly incomplete, and the log says so in one line, with no traceback."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from fund.deps import Resources
from tests.audit.test_export_interrupted import fill
from tests.conftest import Account
from tests.ops.processes import serve_environment, spare_port, start_serve

CHUNKED_END = b"\r\n0\r\n\r\n"


@pytest.mark.parametrize("log_json", ["false", "true"], ids=["console", "json"])
async def test_an_export_cut_by_the_shutdown_timeout_ends_incomplete_in_one_log_line(
    database_url: str,
    redis_url: str,
    tmp_path: Path,
    resources: Resources,
    admin: Account,
    log_json: str,
) -> None:
    await fill(resources, 200_000)  # far more than the socket buffers hold
    port = spare_port()
    log = tmp_path / "serve.log"
    env = serve_environment(
        database_url,
        redis_url,
        tmp_path / "data",
        FUND_LOG_JSON=log_json,
        FUND_SHUTDOWN_TIMEOUT="1",
    )
    process = await asyncio.to_thread(start_serve, env, port, log)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"GET /api/v1/audit-logs/export?format=jsonl&include_deleted=true HTTP/1.1\r\n"
            b"Host: 127.0.0.1\r\n"
            + f"Authorization: {admin.headers['Authorization']}\r\n\r\n".encode()
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        assert head.startswith(b"HTTP/1.1 200"), head
        assert b"transfer-encoding: chunked" in head.lower()
        await asyncio.sleep(0.5)  # reads nothing more: the server's sends wait on this client

        process.terminate()
        await asyncio.sleep(3)  # still reading nothing, past the shutdown timeout
        body = await asyncio.wait_for(reader.read(), 60)  # what was sent, to the server's close
        writer.close()
        code = await asyncio.to_thread(process.wait, 60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)

    assert code == 0
    assert body, "part of the export was sent"
    assert not body.endswith(CHUNKED_END)  # never the end of a chunked body: a cut transfer
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]
    assert "Exception in ASGI application" not in text, text[-3000:]
    assert text.count("request_cancelled") == 1, text[-3000:]
    assert admin.headers["Authorization"].split()[1][:20] not in text
