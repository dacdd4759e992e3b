"""Errors as HTTP responses, in OpenAI's envelope: ``{"error": {"message", "type", "param", "code"}}``.

The rest of hush raises plain exceptions; this module alone decides their status codes:

| error | status | code |
|---|---|---|
| unknown model | 404 | model_not_found |
| unknown language | 400 | unsupported_language |
| empty audio | 400 | empty_audio |
| NaN or infinite samples | 400 | invalid_audio |
| audio longer than ``max_audio_seconds`` | 400 | audio_too_long |
| audio file larger than ``max_upload_bytes`` | 413 | file_too_large |
| undecodable input | 415 | unsupported_audio_format |
| no variant for the language/tier/floor | 400 | no_variant_available |
| bad or missing parameter | 422 (types) / 400 (combinations) | invalid_parameter |
| missing or wrong API key | 401 | missing_api_key / invalid_api_key |
| queue full | 429 (+ Retry-After) | queue_full |
| no runnable variant, corrupt variant | 503 | no_variants / model_unavailable |
| transcription too slow | 504 | timeout |
| unknown experiment | 404 | experiment_not_found |
| feedback for an unknown request | 404 | request_not_found |
| feedback for a forgotten (too old) request | 410 | feedback_expired |
| second feedback for a request | 409 | feedback_already_given |
| anything else | 500, generic message, never a stack trace | internal_error |
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.experiments.registry import ExperimentNotFoundError
from app.feedback import DuplicateFeedbackError, ExpiredRequestError, FeedbackError
from app.inference import InferenceTimeoutError, QueueFullError
from app.routing import NoRouteError, NoVariantsError
from model_store.errors import (
    AudioDecodeError,
    AudioTooLongError,
    BackendUnavailableError,
    CorruptVariantError,
    EmptyAudioError,
    HushError,
    InvalidSamplesError,
    InvalidVariantIdError,
    UnsupportedLanguageError,
    VariantNotFoundError,
)

logger = logging.getLogger(__name__)

_TYPES = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}
_HTTP_CODES = {
    400: "invalid_request_body",  # the multipart parser's refusals (no boundary, a part over its size...)
    404: "not_found",
    405: "method_not_allowed",
    413: "file_too_large",
}
_HTTP_PARAMS = {413: "file"}  # the upload limit counting a chunked body


class ApiError(Exception):
    """An error the HTTP layer itself finds (e.g. a bad combination of parameters)."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.code = code
        self.param = param
        self.headers = dict(headers or {})


def error_type(status_code: int) -> str:
    if status_code >= 500:
        return "server_error"
    return _TYPES.get(status_code, "invalid_request_error")


def error_response(
    status_code: int,
    message: str,
    *,
    code: str | None = None,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body = {"error": {"message": message, "type": error_type(status_code), "param": param, "code": code}}
    return JSONResponse(body, status_code=status_code, headers=dict(headers or {}))


def internal_error_response(request_id: str) -> JSONResponse:
    """The answer to an unexpected failure: nothing about its cause reaches the client."""
    return error_response(
        500, f"internal server error; quote request id {request_id} to the operator", code="internal_error"
    )


def domain_error(error: Exception) -> ApiError:
    """The HTTP form of an error raised by hush's domain code."""
    if isinstance(error, VariantNotFoundError | InvalidVariantIdError):
        return ApiError(404, str(error), code="model_not_found", param="model")
    if isinstance(error, UnsupportedLanguageError):
        return ApiError(400, str(error), code="unsupported_language", param="language")
    if isinstance(error, AudioTooLongError):
        return ApiError(400, str(error), code="audio_too_long", param="file")
    if isinstance(error, EmptyAudioError):
        return ApiError(400, str(error), code="empty_audio", param="file")
    if isinstance(error, InvalidSamplesError):
        return ApiError(400, str(error), code="invalid_audio", param="file")
    if isinstance(error, AudioDecodeError):
        return ApiError(415, str(error), code="unsupported_audio_format", param="file")
    if isinstance(error, BackendUnavailableError):
        return ApiError(400, str(error), code="model_unavailable", param="model")
    if isinstance(error, CorruptVariantError):
        return ApiError(503, str(error), code="model_unavailable", param="model")
    if isinstance(error, NoVariantsError):
        return ApiError(503, str(error), code="no_variants")
    if isinstance(error, NoRouteError):
        return ApiError(400, str(error), code="no_variant_available", param=error.param)
    if isinstance(error, QueueFullError):
        return ApiError(
            429, str(error), code="queue_full", headers={"Retry-After": str(error.retry_after_seconds)}
        )
    if isinstance(error, InferenceTimeoutError):
        return ApiError(504, str(error), code="timeout")
    if isinstance(error, ExperimentNotFoundError):
        return ApiError(404, str(error), code="experiment_not_found", param="name")
    if isinstance(error, ExpiredRequestError):
        return ApiError(410, str(error), code="feedback_expired", param="request_id")
    if isinstance(error, DuplicateFeedbackError):
        return ApiError(409, str(error), code="feedback_already_given", param="request_id")
    if isinstance(error, FeedbackError):
        return ApiError(404, str(error), code="request_not_found", param="request_id")
    logger.error("unmapped hush error: %r", error)
    return ApiError(500, "internal server error", code="internal_error")


def _param_of(location: tuple[Any, ...]) -> str | None:
    names = [str(part) for part in location[1:] if not isinstance(part, int)] if len(location) > 1 else []
    return ".".join(names) or None


async def _api_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, ApiError)
    return error_response(
        error.status_code, error.message, code=error.code, param=error.param, headers=error.headers
    )


async def _domain_error(request: Request, error: Exception) -> JSONResponse:
    return await _api_error(request, domain_error(error))


def _problem_message(problem: Mapping[str, Any]) -> str:
    """pydantic's words for one problem, except where they would name a Python class to the client."""
    if "Expected UploadFile" in str(problem.get("msg", "")):
        return "expected an uploaded file (a multipart part with a filename), got a plain form field"
    return str(problem.get("msg", "invalid"))


async def _validation_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    problems = error.errors()
    message = "; ".join(f"{_param_of(tuple(p['loc'])) or 'request'}: {_problem_message(p)}" for p in problems)
    param = _param_of(tuple(problems[0]["loc"])) if problems else None
    return error_response(422, message or "invalid request", code="invalid_parameter", param=param)


async def _http_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, StarletteHTTPException)
    return error_response(
        error.status_code,
        str(error.detail),
        code=_HTTP_CODES.get(error.status_code),
        param=_HTTP_PARAMS.get(error.status_code),
        headers=error.headers,
    )


def install_error_handlers(app: FastAPI) -> None:
    """Turn every error into OpenAI's envelope (unexpected ones are handled by the request middleware)."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    for domain in (
        HushError,
        NoRouteError,
        QueueFullError,
        InferenceTimeoutError,
        ExperimentNotFoundError,
        FeedbackError,
    ):
        app.add_exception_handler(domain, _domain_error)
