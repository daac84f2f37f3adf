"""The HTTP protocol ``fund serve`` gives uvicorn: its own, but a request it cannot parse is
answered in JSON, like every other error.

What the HTTP parser cannot read as HTTP (a NUL or a raw 0xFF byte in the request line or a
header, a ``Content-Length`` that is not one number, a bad chunk size, a request line over
its buffer) never reaches the application: uvicorn answers it itself, in plain text,
without a request id. Here that answer is the API's: ``400 {"detail": …}``, with an
``X-Request-ID`` the operator can find in the log (beside uvicorn's own warning, which has
none), ``nosniff`` and ``no-store``. Not HSTS: the protocol does not know the settings; a
TLS-terminating proxy in front adds it to what it forwards.
"""

from __future__ import annotations

import json
import uuid

import structlog
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MALFORMED = "Malformed HTTP request: it could not be parsed"

log = structlog.get_logger(__name__)


class JSONErrorsHttpToolsProtocol(HttpToolsProtocol):
    def send_400_response(self, msg: str) -> None:
        request_id = uuid.uuid4().hex
        log.warning("malformed_http_request", request_id=request_id, client=self.client)
        body = json.dumps({"detail": MALFORMED}, separators=(",", ":")).encode()
        head = [b"HTTP/1.1 400 Bad Request\r\n"]
        for name, value in self.server_state.default_headers:
            head.append(name + b": " + value + b"\r\n")
        head += [
            b"content-type: application/json\r\n",
            b"content-length: " + str(len(body)).encode() + b"\r\n",
            b"x-request-id: " + request_id.encode() + b"\r\n",
            b"x-content-type-options: nosniff\r\n",
            b"cache-control: no-store\r\n",
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)
        self.transport.close()
