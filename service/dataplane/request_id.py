"""Request ids: the client's (checked) or a fresh one, echoed back by every transport."""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence

from service.errors import ClientError

#: The metadata key (gRPC) / header (HTTP) a client may send its id in.
REQUEST_ID_KEY = "x-request-id"
_REQUEST_ID = re.compile(r"^[\x21-\x7e]{1,128}$")
RULE = "1-128 printable ASCII characters without spaces"


def valid(value: str) -> bool:
    """Whether ``value`` follows the rule (``RULE``)."""
    return bool(_REQUEST_ID.match(value))


def call_request_id(sent: Sequence[str]) -> str:
    """The call's id: the first value the client sent (checked), or a fresh one."""
    if not sent:
        return uuid.uuid4().hex
    rid = str(sent[0])
    if not valid(rid):
        raise ClientError(f"{REQUEST_ID_KEY} must be {RULE}")
    return rid


def check_request_id(value: str, what: str) -> None:
    """An id inside a message (``what`` names its field) follows the rule, or is empty."""
    if value and not valid(value):
        raise ClientError(f"{what} must be {RULE} (got {len(value)} characters)")
