"""Refuses request bodies above ``max_upload_bytes`` on /v1/audio with a 413, before reading them whole.

The limit is the audio file's: the body may hold :data:`MULTIPART_ALLOWANCE` more bytes for the other
form fields and the parts' headers, and the route refuses a file part over the limit itself
(:func:`check_file_size`). A declared ``Content-Length`` over the body's limit is refused without
reading a byte; a chunked body is counted as it arrives and refused as soon as it passes it.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import ApiError, error_response

LIMITED_PATH_PREFIX = "/v1/audio/"
MULTIPART_ALLOWANCE = 64 * 1024  # bytes of form fields and part headers beside the file


def _too_large_message(limit: int) -> str:
    return f"the upload is larger than the limit of {limit} bytes ({limit / 2**20:g} MiB)"


class UploadLimitMiddleware:
    """A pure ASGI middleware (no buffering of its own)."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes  # the file's limit, as the messages say
        self.max_body_bytes = max_bytes + MULTIPART_ALLOWANCE

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(LIMITED_PATH_PREFIX):
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
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
                if received > self.max_body_bytes:
                    # FastAPI lets an HTTPException raised while reading the body through to the handlers
                    raise HTTPException(413, _too_large_message(self.max_bytes))
            return message

        await self.app(scope, counting_receive, send)


def check_file_size(size: int | None, max_bytes: int) -> None:
    """Refuse an uploaded file over ``max_bytes`` (the body's limit leaves room for the other fields)."""
    if size is not None and size > max_bytes:
        raise ApiError(413, _too_large_message(max_bytes), code="file_too_large", param="file")
