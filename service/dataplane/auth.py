"""Bearer-token authentication, whatever the transport: gRPC metadata or an HTTP header."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

AUTH_KEY = "authorization"
BEARER = "bearer"


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", errors="surrogateescape")).digest()


class BearerCheck:
    """Checks ``authorization: Bearer <token>`` values against one token.

    The comparison is constant-time over SHA-256 digests, so neither the token's content
    nor its length leaks through response timing.
    """

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("BearerCheck needs a non-empty token")
        self._expected = _digest(token)

    def problem(self, values: Sequence[str | bytes], where: str = "metadata") -> str | None:
        """None if ``values`` (every "authorization" entry the call carries, in its
        ``where``: "metadata", "header") hold the right bearer token, else why not."""
        if not values:
            return f"missing '{AUTH_KEY}: Bearer <token>' {where}"
        if len(values) > 1:
            return f"more than one '{AUTH_KEY}' {where} entry"
        value = values[0]
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() != BEARER or not token.strip():
            return f"'{AUTH_KEY}' {where} must be 'Bearer <token>'"
        if not hmac.compare_digest(_digest(token.strip()), self._expected):
            return "invalid bearer token"
        return None
