"""``/v1/export/*``: a store's samples and usage rollup as Parquet, one (account, day) a request.

``gpufleet export --server URL`` drives these with a read key (the key's account only);
the admin channel serves the same three answers for ``gpufleet export --db`` while a
server holds the store. A day's file is written by DuckDB's COPY into the store's own
private folder, sent, and removed.

Before it reads, every answer waits for the writes queued before it (a barrier on the
single writer): a sample is stamped ``received_at`` and queued in one step on the event
loop, so everything stamped up to the request's cutoff is committed when the COPY
runs, and a client's mark (the newest ``received_at`` it got) never skips a sample.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import tempfile
from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from gpufleet.server.api.context import ApiContext
from gpufleet.server.api.guard import add_route
from gpufleet.server.auth import READ
from gpufleet.server.http.router import Router
from gpufleet.server.http.types import HttpError, Request, Response
from gpufleet.server.schemas import SIMULATED_HEADER
from gpufleet.server.store.export import MAX_US, NO_MARK_US, StoreExport, utc_us
from gpufleet.server.store.writer import storage_failure

if TYPE_CHECKING:
    from gpufleet.server.store import MetricsStore

log = logging.getLogger("gpufleet.api")

PARQUET = "application/vnd.apache.parquet"
ROWS_HEADER = "X-Gpufleet-Rows"
RECEIVED_MAX_HEADER = "X-Gpufleet-Received-Max-Us"
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
_INT = re.compile(r"-?\d{1,19}")


def _day(query: dict[str, str], name: str, *, required: bool) -> date | None:
    text = query.get(name)
    if not text:
        if required:
            raise HttpError(400, f"Query parameter {name} is required (YYYY-MM-DD)")
        return None
    try:
        if not _DAY.fullmatch(text):
            raise ValueError(text)
        return date.fromisoformat(text)
    except ValueError:
        raise HttpError(400, f"Query parameter {name} must be a date like 2026-01-31") from None


class ExportAnswers:
    """The three export answers over one store, for any caller that knows the account."""

    def __init__(self, store: MetricsStore, now: Callable[[], datetime]) -> None:
        self._store = store
        self._export = StoreExport(store)
        self._now = now
        self._full_since_log = False  # an export failed for want of space, and said so

    def _write_failed(self, exc: Exception) -> Exception:
        """``exc`` as the StorageFullError (507) it is when the disk refused the file, else as is."""
        failure = storage_failure(exc)
        if failure is None:
            return exc
        if not self._full_since_log:
            self._full_since_log = True
            log.error("an export file cannot be written in %s: %s; exports are answered 507 "
                      "until one can", self._store.path.parent, exc)
        return failure

    async def days(self, account: str | None, query: dict[str, str]) -> Response:
        """``?from=&to=`` (both optional): every day with samples or usage, and its marks.

        ``account`` None (the admin channel only): every account's days.
        """
        first, last = _day(query, "from", required=False), _day(query, "to", required=False)
        await asyncio.to_thread(self._export.barrier)
        if first is None or last is None:
            bounds = await asyncio.to_thread(self._export.bounds)
            if bounds is None:
                return Response.json({"days": [], "simulated": self._store.simulated is not None})
            first, last = first or bounds[0], last or bounds[1]
        if first > last:
            raise HttpError(400, f"from {first} is after to {last}")
        states = await asyncio.to_thread(self._export.days, account, first, last)
        simulated = self._store.simulated is not None
        return Response.json({"days": [s.to_json() for s in states], "simulated": simulated},
                             headers=[(SIMULATED_HEADER, "true" if simulated else "false")])

    async def samples(self, account: str, query: dict[str, str]) -> Response:
        """``?day=&after=``: the day's samples that arrived after ``after`` (µs), as Parquet; 204 when none."""
        day = _day(query, "day", required=True)
        assert day is not None
        after_text = query.get("after") or str(NO_MARK_US)
        if not _INT.fullmatch(after_text):
            raise HttpError(400, "Query parameter after must be an integer (µs since the epoch)")
        after = min(max(int(after_text), NO_MARK_US), MAX_US)  # DuckDB's timestamps end
        # Stamped before the barrier (see the module docstring); a sample stamped in this
        # same microsecond may be queued after it, so the cutoff stops one µs short.
        cutoff = utc_us(self._now()) - 1
        await asyncio.to_thread(self._export.barrier)
        return await self._file(lambda path: self._export.copy_samples(path, account, day, after,
                                                                       cutoff))

    async def usage(self, account: str, query: dict[str, str]) -> Response:
        """``?day=``: the day's usage rollup rows, as Parquet."""
        day = _day(query, "day", required=True)
        assert day is not None
        await asyncio.to_thread(self._export.barrier)

        def copy(path: Path) -> tuple[int, int | None]:
            return self._export.copy_usage(path, account, day), None

        # a file even with no rows: the client replaces what it had for that day
        return await self._file(copy, empty_is_204=False)

    async def _file(self, write: Callable[[Path], tuple[int, int | None]], *,
                    empty_is_204: bool = True) -> Response:
        """The file ``write`` makes in the store's folder, sent and removed.

        A full disk there (or another I/O error on write) is a 507 with Retry-After, as for
        every write of the store, logged once until an export writes again.
        """
        try:
            fd, name = tempfile.mkstemp(prefix=".export-", suffix=".parquet",
                                        dir=self._store.path.parent)
            os.close(fd)
        except OSError as exc:
            raise self._write_failed(exc) from None
        path = Path(name)
        try:
            rows, newest = await asyncio.to_thread(write, path)
            if not rows and empty_is_204:
                return Response(status=204)
            body = await asyncio.to_thread(path.read_bytes)
        except Exception as exc:
            raise self._write_failed(exc) from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        if self._full_since_log:
            log.info("export files can be written again")
            self._full_since_log = False
        headers = [(ROWS_HEADER, str(rows))]
        if newest is not None:
            headers.append((RECEIVED_MAX_HEADER, str(newest)))
        return Response(body=body, content_type=PARQUET, headers=headers)


def _query(name: str, description: str, *, required: bool, fmt: str | None = "date",
           kind: str = "string") -> dict[str, object]:
    schema: dict[str, object] = {"type": kind}
    if fmt:
        schema["format"] = fmt
    return {"name": name, "in": "query", "required": required, "schema": schema,
            "description": description}


_PARQUET_ANSWER = {
    "200": {"description": "One day's rows as a Parquet file", "content": {
        PARQUET: {"schema": {"type": "string", "format": "binary"}}}},
    "204": {"description": "Nothing new for that day"}}
_OPENAPI_DAYS = {"parameters": [
    _query("from", "First day (UTC), inclusive; default the first with samples; not after `to`",
           required=False),
    _query("to", "Last day (UTC), inclusive; default the last with samples", required=False)]}
_OPENAPI_SAMPLES = {"responses": _PARQUET_ANSWER, "parameters": [
    _query("day", "The day (UTC)", required=True),
    _query("after", "Only samples received after this instant (µs since the epoch, UTC): "
           "the X-Gpufleet-Received-Max-Us of the last file", required=False, fmt="int64",
           kind="integer")]}
_OPENAPI_USAGE = {"responses": _PARQUET_ANSWER,
                  "parameters": [_query("day", "The day (UTC)", required=True)]}


class ExportRoutes:
    def __init__(self, ctx: ApiContext) -> None:
        if ctx.store is None:
            raise ValueError("export needs a store")
        self._ctx = ctx
        self._answers = ExportAnswers(ctx.store, ctx.now)

    def register(self, router: Router) -> None:
        ctx = self._ctx
        add_route(router, ctx, "GET", "/v1/export/days", self.days, scope=READ, limit="export",
                  name="exportDays", openapi=_OPENAPI_DAYS,
                  summary="Days with samples or usage (from/to optional), each with its export marks")
        add_route(router, ctx, "GET", "/v1/export/samples", self.samples, scope=READ,
                  limit="export", name="exportSamples", openapi=_OPENAPI_SAMPLES,
                  summary="One day's raw samples that arrived after `after` (µs), as Parquet")
        add_route(router, ctx, "GET", "/v1/export/usage", self.usage, scope=READ, limit="export",
                  name="exportUsage", openapi=_OPENAPI_USAGE,
                  summary="One day's daily usage rollup, as Parquet")

    async def days(self, request: Request) -> Response:
        return await self._answers.days(request.account or "", request.query)

    async def samples(self, request: Request) -> Response:
        return await self._answers.samples(request.account or "", request.query)

    async def usage(self, request: Request) -> Response:
        return await self._answers.usage(request.account or "", request.query)
