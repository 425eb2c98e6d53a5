"""What every gRPC transport reads from a call the same way: its request id and deadline."""

from __future__ import annotations

import grpc

from service.dataplane.deadline import timeout_of
from service.dataplane.request_id import REQUEST_ID_KEY, call_request_id


async def request_id(context: grpc.aio.ServicerContext, stream: bool = False) -> str:
    """The call's id: the client's "x-request-id" metadata or a fresh one; sent back as
    metadata: initial metadata of a stream (before its first response), trailing metadata
    of a unary call (sent with its status: a separate initial-metadata send would cost
    every call another round through the transport)."""
    metadata = context.invocation_metadata() or ()
    rid = call_request_id([v for k, v in metadata if k == REQUEST_ID_KEY])
    if stream:
        await context.send_initial_metadata(((REQUEST_ID_KEY, rid),))
    else:
        context.set_trailing_metadata(((REQUEST_ID_KEY, rid),))
    return rid


def timeout(context: grpc.aio.ServicerContext) -> float | None:
    """Seconds left until the call's deadline, None when it has none."""
    return timeout_of(context.time_remaining())
