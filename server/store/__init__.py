"""gpufleet's DuckDB store: keys, samples (single writer, group commit), hosts, chargeback."""

from gpufleet.server.store.chargeback import ReportRangeError, UsageRow
from gpufleet.server.store.keys import KeyAlreadyRevokedError, KeyNameTakenError, StaleSecretError
from gpufleet.server.store.keys import KeyError_ as UnknownKeyError
from gpufleet.server.store.schema import SCHEMA_VERSION, SchemaTooNewError
from gpufleet.server.store.store import MetricsStore, StoreLockedError
from gpufleet.server.store.writer import StoreClosedError, WriteResult

__all__ = [
    "SCHEMA_VERSION",
    "KeyAlreadyRevokedError",
    "KeyNameTakenError",
    "MetricsStore",
    "ReportRangeError",
    "SchemaTooNewError",
    "StaleSecretError",
    "StoreClosedError",
    "StoreLockedError",
    "UnknownKeyError",
    "UsageRow",
    "WriteResult",
]
