"""Optional API keys: with ``server.api_keys`` set, /v1 needs ``Authorization: Bearer <key>`` (else 401)."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.deps import SettingsDep
from app.errors import ApiError

_bearer = HTTPBearer(auto_error=False, description="One of the server's API keys, when it has any.")
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


async def require_api_key(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Let the request through if the server has no keys or the request carries one of them."""
    keys = settings.server.api_keys
    if not keys:
        return
    if credentials is None:
        raise ApiError(
            401,
            "missing API key: send the header 'Authorization: Bearer <key>'",
            code="missing_api_key",
            headers=_CHALLENGE,
        )
    offered = credentials.credentials.encode()
    # compare with every key, in constant time, so that timing tells nothing about which nearly matched
    matches = [hmac.compare_digest(offered, key.get_secret_value().encode()) for key in keys]
    if not any(matches):
        raise ApiError(401, "invalid API key", code="invalid_api_key", headers=_CHALLENGE)
