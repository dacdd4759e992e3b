"""Refuses request bodies above ``max_upload_bytes`` on /v1/audio with a 413, before reading them whole.

A declared ``Content-Length`` over the limit is refused without reading a byte; a chunked body is
counted as it arrives and refused as soon as it passes the limit.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import error_response

LIMITED_PATH_PREFIX = "/v1/audio/"


def _too_large_message(limit: int) -> str:
    return f"the upload is larger than the limit of {limit} bytes ({limit / 2**20:g} MiB)"


class UploadLimitMiddleware:
    """A pure ASGI middleware (no buffering of its own)."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(LIMITED_PATH_PREFIX):
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            response = error_response(
                413, _too_large_message(self.max_bytes), code="file_too_large", param="file"
            )
            await response(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # FastAPI lets an HTTPException raised while reading the body through to the handlers
                    raise HTTPException(413, _too_large_message(self.max_bytes))
            return message

        await self.app(scope, counting_receive, send)
