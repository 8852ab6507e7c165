"""gpufleet's DuckDB store: keys, samples (single writer, group commit), hosts, chargeback."""

from server.store.chargeback import ReportRangeError, UsageRow
from server.store.keys import KeyError_ as UnknownKeyError
from server.store.keys import KeyNameTakenError
from server.store.schema import SCHEMA_VERSION, SchemaTooNewError
from server.store.store import MetricsStore, StoreLockedError
from server.store.writer import StoreClosedError, WriteResult

__all__ = [
    "SCHEMA_VERSION",
    "KeyNameTakenError",
    "MetricsStore",
    "ReportRangeError",
    "SchemaTooNewError",
    "StoreClosedError",
    "StoreLockedError",
    "UnknownKeyError",
    "UsageRow",
    "WriteResult",
]
