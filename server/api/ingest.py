"""``/v1/metrics/ingest``: the health body (GET) and batches of samples (POST)."""

from __future__ import annotations

from server.api.context import ApiContext
from server.api.guard import add_route
from server.api.validation import IngestValidationError, validate_batch
from server.auth import INGEST
from server.http.router import Router
from server.http.types import HttpError, Request, Response
from server.schemas import IngestHealth, IngestResult, MetricSample

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
        self._max_samples = ctx.settings.limits.max_samples_per_batch

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
        received_at = self._ctx.now()
        try:
            samples = validate_batch(request.json(), max_samples=self._max_samples,
                                     now=received_at)
        except IngestValidationError as exc:
            raise HttpError(400, str(exc)) from None
        result = await self._store.writer.submit(request.account or "", samples, received_at)
        body = IngestResult(success=True, inserted=result.inserted,
                            message=success_message(result.inserted, result.duplicates),
                            duplicates=result.duplicates)
        return Response.json(body)
