"""``/v1/chargeback/report``: GPU-hours and cost by team, architecture and model, JSON or CSV."""

from __future__ import annotations

import asyncio
import re
from datetime import date, datetime

from gpufleet.server.api.context import ApiContext
from gpufleet.server.api.guard import add_route
from gpufleet.server.api.simulated import report_header as simulated_header
from gpufleet.server.auth import READ
from gpufleet.server.http.router import Router
from gpufleet.server.http.types import HttpError, Request, Response
from gpufleet.server.schemas import ChargebackReport

MAX_REPORT_DAYS = 366
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


def report_period(query: dict[str, str]) -> tuple[date, date]:
    """``from`` and ``to`` (inclusive UTC dates) from the query string, or a 400."""
    values: dict[str, date] = {}
    for name in ("from", "to"):
        raw = query.get(name)
        if not raw:
            raise HttpError(400, f"Query parameter {name} is required (YYYY-MM-DD)")
        try:
            if not _DAY.fullmatch(raw):  # fromisoformat also takes 2026-W01-1 and 20260101
                raise ValueError(raw)
            values[name] = date.fromisoformat(raw)
        except ValueError:
            raise HttpError(400, f"Query parameter {name} must be a date in YYYY-MM-DD form") \
                from None
    start, end = values["from"], values["to"]
    if start > end:
        raise HttpError(400, "Query parameter from must not be after to")
    if (end - start).days + 1 > MAX_REPORT_DAYS:
        raise HttpError(400, f"The report period must be at most {MAX_REPORT_DAYS} days")
    return start, end


def csv_filename(start: date, end: date) -> str:
    return f"chargeback-{start.isoformat()}-to-{end.isoformat()}.csv"


class ChargebackRoutes:
    def __init__(self, ctx: ApiContext) -> None:
        if ctx.store is None:
            raise ValueError("chargeback needs a store")
        self._ctx = ctx
        self._store = ctx.store

    def register(self, router: Router) -> None:
        add_route(router, self._ctx, "GET", "/v1/chargeback/report", self.report, scope=READ,
                  limit="chargeback", name="getChargebackReport",
                  response_model=ChargebackReport,
                  summary="Cost attribution for a date range (format=json|csv)")

    async def report(self, request: Request) -> Response:
        start, end = report_period(request.query)
        fmt = (request.query.get("format") or "json").lower()
        if fmt not in ("json", "csv"):
            raise HttpError(400, "Query parameter format must be json or csv")
        from gpufleet.server.store import ReportRangeError

        account = request.account or ""
        pricing = self._ctx.settings.pricing
        now = self._ctx.now()
        try:
            if fmt == "csv":
                return await self._csv(account, start, end, now)
            report = await asyncio.to_thread(self._store.chargeback, account, start, end,
                                             pricing, now)
        except ReportRangeError as exc:
            raise HttpError(400, str(exc)) from None
        return Response.json(report, headers=[simulated_header(self._ctx)])

    async def _csv(self, account: str, start: date, end: date, now: datetime) -> Response:
        text = await asyncio.to_thread(self._store.chargeback_csv, account, start, end,
                                       self._ctx.settings.pricing, now)
        disposition = f'attachment; filename="{csv_filename(start, end)}"'
        return Response.text(text, content_type="text/csv; charset=utf-8",
                             headers=[("Content-Disposition", disposition),
                                      simulated_header(self._ctx)])
