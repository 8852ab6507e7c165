"""Simulated data over the API: the ``X-Gpufleet-Simulated`` header, on the way in and out.

A request with ``X-Gpufleet-Simulated: true`` (``gpufleet agent --simulate``, the
console's demo nodes) carries simulated samples or heartbeats. A server takes them
only when it was started to (``server.simulate``: ``serve --simulate``, the console's
demo store) or when its store already holds simulated data; any other server answers
409, so a store of real data never takes made-up numbers. Taking them marks the store,
and every chargeback answer from a marked store says so: ``"simulated": true`` in
JSON, and this header, ``true`` or ``false``, on every chargeback answer (the CSV's
columns are fixed by the API document).
"""

from __future__ import annotations

import asyncio

from gpufleet.server.api.context import ApiContext
from gpufleet.server.http.types import HttpError, Request
from gpufleet.server.schemas import SIMULATED_HEADER as HEADER

REFUSED = ("This server stores real data only; simulated samples and heartbeats go to a "
           "server started with --simulate, which keeps them in a store of their own")
_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no")


def marked_simulated(request: Request) -> bool:
    """Whether the request says it carries simulated data; 400 for a value that is neither."""
    value = request.header(HEADER)
    if value is None:
        return False
    value = value.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise HttpError(400, f"Header {HEADER} must be true or false")


async def admit(ctx: ApiContext, request: Request) -> None:
    """Let a request marked simulated through only where simulated data may go, marking the store."""
    if not marked_simulated(request):
        return
    store = ctx.store
    assert store is not None
    if not ctx.settings.server.simulate and store.simulated is None:
        raise HttpError(409, REFUSED)
    from gpufleet.server.store.simulated import INGEST

    await asyncio.to_thread(store.mark_simulated, INGEST, ctx.now())


def report_header(ctx: ApiContext) -> tuple[str, str]:
    """The header every chargeback answer carries: does this store hold simulated data?"""
    assert ctx.store is not None
    return HEADER, "true" if ctx.store.simulated is not None else "false"
