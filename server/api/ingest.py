"""``/v1/metrics/ingest``: the health body (GET) and batches of samples (POST)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import orjson

from gpufleet.server.api.context import ApiContext
from gpufleet.server.api.guard import add_route
from gpufleet.server.api.simulated import admit as admit_simulated
from gpufleet.server.api.validation import (
    TS_US,
    IngestValidationError,
    validate_batch,
    validate_rows_and_columns,
)
from gpufleet.server.auth import INGEST
from gpufleet.server.http.router import Router
from gpufleet.server.http.types import HttpError, Request, Response
from gpufleet.server.schemas import IngestHealth, IngestResult, MetricSample

_HEALTH = Response.json(IngestHealth()).body


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def success_message(inserted: int, duplicates: int) -> str:
    """``Successfully ingested 1 metric``, as documented; duplicates said after it."""
    text = f"Successfully ingested {_plural(inserted, 'metric')}"
    if duplicates:
        text += f" ({_plural(duplicates, 'duplicate')} already stored)"
    return text


class IngestRoutes:
    def __init__(self, ctx: ApiContext) -> None:
        if ctx.store is None:
            raise ValueError("ingest needs a store")
        self._ctx = ctx
        self._store = ctx.store
        limits = ctx.settings.limits
        self._max_samples = limits.max_samples_per_batch
        self._max_depth = limits.max_json_depth
        self._max_age = (timedelta(days=limits.max_sample_age_days)
                         if limits.max_sample_age_days is not None else None)

    def register(self, router: Router) -> None:
        add_route(router, self._ctx, "GET", "/v1/metrics/ingest", self.health,
                  name="ingestHealth", response_model=IngestHealth,
                  summary="Health of the ingest endpoint (no authentication)")
        add_route(router, self._ctx, "POST", "/v1/metrics/ingest", self.ingest, scope=INGEST,
                  limit="ingest", name="ingestMetrics", request_model=MetricSample,
                  response_model=IngestResult,
                  summary="Ingest a JSON array of GPU metric samples (whole batch or nothing)")

    async def health(self, request: Request) -> Response:
        return Response(body=_HEALTH)

    async def ingest(self, request: Request) -> Response:
        await admit_simulated(self._ctx, request)  # 409 for simulated samples to a real store
        received_at = self._ctx.now()
        fast = _fast_json(request)
        keys = None
        try:
            if fast is _UNPARSED:
                raise IngestValidationError("not parsed by orjson")
            # orjson refuses NaN and infinity, so the batch needs no NaN checks
            samples, columns = validate_rows_and_columns(fast, max_samples=self._max_samples,
                                                         now=received_at, finite=True,
                                                         max_age=self._max_age,
                                                         max_depth=self._max_depth)
            fractions = columns["gpu_fraction"]
            keys = (columns["gpu_uuid"], columns[TS_US],
                    None if fractions.count(None) == len(fractions) else fractions)
        except IngestValidationError:
            # Anything unusual (a parse error, a rule broken) is answered exactly as the
            # stdlib parser + validation always answered it: same texts, same edge cases.
            try:
                samples = validate_batch(request.json(), max_samples=self._max_samples,
                                         now=received_at, max_age=self._max_age)
            except IngestValidationError as exc:
                raise HttpError(400, str(exc)) from None
        from gpufleet.server.store.shares import GpuShareError  # the store loads with it

        try:
            result = await self._store.writer.submit(request.account or "", samples, received_at, keys)
        except GpuShareError as exc:  # one GPU's shares at one time over 1: nothing stored
            raise HttpError(400, str(exc)) from None
        body = IngestResult(success=True, inserted=result.inserted,
                            message=success_message(result.inserted, result.duplicates),
                            duplicates=result.duplicates)
        return Response.json(body)


_UNPARSED = object()


def _fast_json(request: Request) -> Any:
    """The body parsed by orjson (3-4x the stdlib's speed), or ``_UNPARSED``.

    orjson rejects NaN/Infinity and numbers that overflow a double, and reads integers
    beyond 64 bits as floats; for any body it refuses, and for any batch that then fails
    validation, the caller re-reads the body with ``request.json()`` so clients see the
    documented errors unchanged. A wrong content type is left to ``request.json()`` too.
    """
    ctype = (request.header("content-type") or "").split(";", 1)[0].strip().lower()
    if ctype != "application/json" and not ctype.endswith("+json"):
        return _UNPARSED
    try:
        return orjson.loads(request.body)
    except orjson.JSONDecodeError:
        return _UNPARSED
