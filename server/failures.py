"""Failures of the server's storage that clients can act on: retry later, elsewhere or never.

Raised by the store (which knows DuckDB) and mapped to statuses by ``http.errors`` (which
must not): this module imports nothing of either.
"""

from __future__ import annotations


class StorageFullError(OSError):
    """The store could not write: its disk is full (or another I/O error on write).

    Nothing of the write was kept; the same request may be sent again once space is back
    (HTTP 507 with ``Retry-After``).
    """


class RollupBehindError(RuntimeError):
    """The usage rollup cannot be brought up to date now, so a report would be stale (503)."""
