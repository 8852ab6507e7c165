"""API keys: random secrets stored only as SHA-256 hashes, scoped, per account.

A secret is ``gf_`` + 32 random bytes (url-safe base64), far beyond brute
force, so a plain SHA-256 is the right hash (a slow password hash would only
cost every request time). Lookup is by hash; the hash is then compared in
constant time. ``last_used_at`` is kept in memory and written at most once a
minute, so authentication never costs a write.

A rotation keeps the key: its id, name, account and scopes stay, its secret is
replaced in place (the old one stops at once), and ``key_rotations`` remembers
when and which prefix was retired. Scripts that name a key by id or name keep
working across rotations.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb

from gpufleet.server.schemas import KeyCreated, KeyInfo, KeyRotation, text_problem
from gpufleet.server.store.timeutil import from_db, to_db
from gpufleet.server.store.writer import StoreWriter

SECRET_PREFIX = "gf_"
SCOPES: frozenset[str] = frozenset({"operator", "ingest", "read"})
LAST_USED_FLUSH = timedelta(seconds=60)
_PREFIX_CHARS = 8  # "gf_" + 5 characters: enough to recognise a key, useless to guess it
MAX_NAME_CHARS = 128  # a key's name and account
_COLUMNS = "id, name, account, scopes, prefix, created_at, last_used_at, revoked_at"


class KeyError_(LookupError):
    """No key has that id or name (in that account)."""


class KeyNameTakenError(ValueError):
    """An active key of that account already has that name."""


class KeyAlreadyRevokedError(ValueError):
    """The key was revoked before; revoking it again changes nothing."""


class StaleSecretError(LookupError):
    """The secret a rotation was asked with is no longer the key's (rotated or revoked since)."""


def check_name(what: str, value: str) -> str:
    """``value`` as a key's name or account: 1 to MAX_NAME_CHARS printable characters.

    Printable: no NUL, no lone surrogate (the store cannot hold it), no control
    characters (names are written to logs and tables).
    """
    if not value.strip():
        raise ValueError(f"a key needs {'a' if what == 'name' else 'an'} {what}")
    if len(value) > MAX_NAME_CHARS or not value.isprintable() or text_problem(value):
        raise ValueError(f"a key's {what} must be at most {MAX_NAME_CHARS} printable characters")
    return value


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def validate_scopes(scopes: Iterable[str]) -> list[str]:
    wanted = [s.strip() for s in scopes if s.strip()]
    unknown = sorted(set(wanted) - SCOPES)
    if unknown or not wanted:
        problem = f"unknown scope(s): {', '.join(unknown)}" if unknown else "a key needs at least one scope"
        raise ValueError(problem + "; scopes are operator, ingest, read")
    return sorted(set(wanted), key=["operator", "ingest", "read"].index)


def _info(row: tuple[Any, ...], rotations: list[KeyRotation] | None = None) -> KeyInfo:
    key_id, name, account, scopes, prefix, created, used, revoked = row
    return KeyInfo(
        id=key_id, name=name, account=account, scopes=list(scopes), prefix=prefix,
        created_at=from_db(created), last_used_at=from_db(used), revoked_at=from_db(revoked),
        rotations=rotations or [],
    )


def _rotations(con: duckdb.DuckDBPyConnection, key_ids: list[str]) -> dict[str, list[KeyRotation]]:
    """Each key's rotations, oldest first."""
    if not key_ids:
        return {}
    rows = con.execute("""SELECT key_id, rotated_at, old_prefix FROM key_rotations
                          WHERE key_id IN (SELECT unnest(?)) ORDER BY rotated_at""",
                       [key_ids]).fetchall()
    found: dict[str, list[KeyRotation]] = {}
    for key_id, at, prefix in rows:
        found.setdefault(key_id, []).append(KeyRotation(rotated_at=from_db(at), old_prefix=prefix))
    return found


def _read(con: duckdb.DuckDBPyConnection, key_id: str) -> KeyInfo:
    row = con.execute(f"SELECT {_COLUMNS} FROM api_keys WHERE id = ?", [key_id]).fetchone()
    return _info(row, _rotations(con, [key_id]).get(key_id, []))


class KeyStore:
    """Create, list, revoke, rotate and authenticate keys; writes go through the writer."""

    def __init__(self, writer: StoreWriter, cursor_factory: Any) -> None:
        self._writer = writer
        self._cursor = cursor_factory
        self._cache: dict[str, KeyInfo | None] = {}
        # Bumped by every invalidation: a lookup that started before one must not cache
        # what it read, or a key revoked meanwhile would be served from the cache forever.
        self._generation = 0
        self._used: dict[str, datetime] = {}
        self._last_flush = datetime.now(UTC)
        self._lock = threading.Lock()

    def create(self, name: str, scopes: Iterable[str], account: str) -> KeyCreated:
        scope_list = validate_scopes(scopes)
        check_name("name", name)
        check_name("account", account)
        return self._writer.call(lambda con: self._insert(con, name, scope_list, account, None))

    def _insert(self, con: duckdb.DuckDBPyConnection, name: str, scopes: list[str], account: str,
                replaces: str | None) -> KeyCreated:
        taken = con.execute(
            "SELECT count(*) FROM api_keys WHERE account = ? AND name = ? AND revoked_at IS NULL AND id IS DISTINCT FROM ?",
            [account, name, replaces],
        ).fetchone()[0]
        if taken:
            raise KeyNameTakenError(f"account {account!r} already has an active key named {name!r}")
        now = datetime.now(UTC)
        con.execute(
            "INSERT INTO accounts VALUES (?, ?) ON CONFLICT DO NOTHING", [account, to_db(now)]
        )
        secret = new_secret()
        key_id = "key_" + uuid.uuid4().hex[:12]
        con.execute(
            "INSERT INTO api_keys VALUES (?, ?, ?, ?, ?, ?, ?, NULL, NULL)",
            [key_id, account, name, scopes, secret[:_PREFIX_CHARS], hash_secret(secret), to_db(now)],
        )
        row = con.execute(f"SELECT {_COLUMNS} FROM api_keys WHERE id = ?", [key_id]).fetchone()
        return KeyCreated(key=secret, info=_info(row))

    def list(self, account: str | None = None, *, include_revoked: bool = True) -> list[KeyInfo]:
        sql = f"SELECT {_COLUMNS} FROM api_keys WHERE (? IS NULL OR account = ?)"
        if not include_revoked:
            sql += " AND revoked_at IS NULL"
        with self._cursor() as cur:
            rows = cur.execute(sql + " ORDER BY account, created_at", [account, account]).fetchall()
            history = _rotations(cur, [r[0] for r in rows])
        infos = [_info(r, history.get(r[0], [])) for r in rows]
        with self._lock:  # show in-memory use times not flushed yet
            return [
                i.model_copy(update={"last_used_at": self._used[i.id]}) if i.id in self._used else i
                for i in infos
            ]

    def _find(self, con: duckdb.DuckDBPyConnection, id_or_name: str, account: str | None) -> tuple[Any, ...]:
        if text_problem(id_or_name) or (account is not None and text_problem(account)):
            raise KeyError_(f"no key {id_or_name!r}")  # no stored key or account holds such text
        rows = con.execute(
            f"""SELECT {_COLUMNS} FROM api_keys
                WHERE (id = ? OR name = ?) AND (? IS NULL OR account = ?)
                ORDER BY revoked_at IS NOT NULL, created_at DESC""",
            [id_or_name, id_or_name, account, account],
        ).fetchall()
        if not rows:
            raise KeyError_(f"no key {id_or_name!r}" + (f" in account {account!r}" if account else ""))
        by_id = [r for r in rows if r[0] == id_or_name]
        active = [r for r in rows if r[7] is None]
        if not by_id and len({r[2] for r in active}) > 1:
            raise KeyError_(f"several accounts have a key named {id_or_name!r}; give --account or the key id")
        return (by_id or active or rows)[0]

    def revoke(self, id_or_name: str, account: str | None = None) -> KeyInfo:
        """Revoke a key now; KeyAlreadyRevokedError (saying when) if it was revoked before."""

        def revoke(con: duckdb.DuckDBPyConnection) -> KeyInfo:
            row = self._find(con, id_or_name, account)
            if row[7] is not None:
                raise KeyAlreadyRevokedError(
                    f"key {row[0]} ({row[1]!r}, account {row[2]!r}) was already revoked at "
                    f"{from_db(row[7]).strftime('%Y-%m-%d %H:%M:%S')} UTC; nothing changed")
            con.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ?",
                        [to_db(datetime.now(UTC)), row[0]])
            return _read(con, row[0])

        info = self._writer.call(revoke)
        self._forget(info.id)
        return info

    def rotate(self, key_id: str, account: str | None = None, *,
               presented_secret: str | None = None) -> KeyCreated:
        """A new secret for the same key (id, name, scopes, account); the old secret stops now.

        ``presented_secret``: the secret the caller proved itself with (the API's rotation).
        The rotation then happens only while it is still the key's, in the same transaction:
        two rotations sent with one secret (a retry, two processes sharing a key) give one
        new secret and a StaleSecretError, never two secrets of which only the last works.
        """

        def rotate(con: duckdb.DuckDBPyConnection) -> KeyCreated:
            row = self._find(con, key_id, account)
            if row[7] is not None:
                if presented_secret is not None:
                    raise StaleSecretError(f"key {row[1]!r} was revoked")
                raise KeyError_(f"key {row[1]!r} is revoked; create a new one")
            if presented_secret is not None:
                stored = con.execute("SELECT secret_sha256 FROM api_keys WHERE id = ?",
                                     [row[0]]).fetchone()[0]
                if not hmac.compare_digest(stored, hash_secret(presented_secret)):
                    raise StaleSecretError(f"key {row[1]!r} was rotated since")
            secret = new_secret()
            con.execute("INSERT INTO key_rotations VALUES (?, ?, ?)",
                        [row[0], to_db(datetime.now(UTC)), row[4]])
            con.execute("UPDATE api_keys SET secret_sha256 = ?, prefix = ? WHERE id = ?",
                        [hash_secret(secret), secret[:_PREFIX_CHARS], row[0]])
            return KeyCreated(key=secret, info=_read(con, row[0]))

        created = self._writer.call(rotate)
        self._forget(created.info.id)
        return created

    @property
    def generation(self) -> int:
        """How many invalidations so far; callers caching ``authenticate`` compare it."""
        with self._lock:
            return self._generation

    def _forget(self, key_id: str) -> None:
        with self._lock:
            self._generation += 1
            for digest, info in list(self._cache.items()):
                if info is None or info.id == key_id or info.name == key_id:
                    del self._cache[digest]

    def authenticate(self, secret: str) -> KeyInfo | None:
        """The active key with this secret, or None. Cached; revocation here clears the cache."""
        if not secret or not secret.startswith(SECRET_PREFIX):
            return None
        digest = hash_secret(secret)
        with self._lock:
            cached = self._cache.get(digest, False)
            started = self._generation
        if cached is False:
            cached = self._lookup(digest)
            with self._lock:
                if self._generation == started:  # no revocation or rotation since the read
                    if len(self._cache) > 10_000:  # unknown secrets must not grow memory forever
                        self._cache.clear()
                    self._cache[digest] = cached
        if cached is not None:
            self._touch(cached.id)
        return cached

    def _lookup(self, digest: str) -> KeyInfo | None:
        """The active key stored with this hash, read now (not cached)."""
        with self._cursor() as cur:
            row = cur.execute(
                f"SELECT {_COLUMNS}, secret_sha256 FROM api_keys WHERE secret_sha256 = ?", [digest]
            ).fetchone()
        if row and hmac.compare_digest(row[-1], digest) and row[7] is None:
            return _info(row[:-1])
        return None

    def _touch(self, key_id: str) -> None:
        now = datetime.now(UTC)
        with self._lock:
            self._used[key_id] = now
            if now - self._last_flush < LAST_USED_FLUSH:
                return
            self._last_flush = now
        self._writer.post(self.flush_last_used)

    def flush_last_used(self, con: duckdb.DuckDBPyConnection) -> None:
        """Write the remembered use times (on the writer thread)."""
        with self._lock:
            used, self._used = self._used, {}
        for key_id, at in used.items():
            con.execute(
                "UPDATE api_keys SET last_used_at = greatest(coalesce(last_used_at, ?), ?) WHERE id = ?",
                [to_db(at), to_db(at), key_id],
            )
