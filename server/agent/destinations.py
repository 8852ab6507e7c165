"""One spool per destination: the server's URL, the key it is sent with, and real or simulated.

Samples spooled for one server, or under one key (and so one account), never go to
another, and simulated samples never go out on a run without ``--simulate``: each
destination spools into its own folder under the spool base, ``real-<digest>`` or
``simulated-<digest>``, the digest hashing the normalised URL and a SHA-256
fingerprint of the key. The folder's ``destination.json`` says in words what it is
for; the secret itself is never written. A run delivers its own folder only and names,
once, every other folder still holding samples, which stay where they are. Batches an
older gpufleet spooled straight into the base folder have no known destination: they
stay too, and are named the same way.

A rotated key has a new secret, so a new folder. Once the server has said which key a
secret is (``GET /v1/keys/self``: its id, the same across rotations, and its account),
the folder records that identity; a later run whose server names the same key id and
account for a new secret, at the same URL and of the same kind, delivers the old
folder too (``adoption.py``). A folder without a recorded identity, or with another,
is never sent.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gpufleet.server.agent.spool import pending_samples
from gpufleet.server.files import write_private_file

log = logging.getLogger("gpufleet.agent")

DESTINATION_FILE = "destination.json"
_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalized_url(url: str) -> str:
    """``HTTP://Host:80/`` and ``http://host`` are one destination."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    port = parts.port or _DEFAULT_PORTS.get(scheme)
    path = parts.path.rstrip("/")
    return f"{scheme}://{host}{f':{port}' if port else ''}{path}"


def key_fingerprint(key: str) -> str:
    """A short SHA-256 of the key: tells keys apart, and gives the 256-bit secret nothing away."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def destination_dir(base: Path, server: str, key: str, *, simulated: bool) -> Path:
    """The spool folder of this destination under ``base``."""
    digest = hashlib.sha256(f"{normalized_url(server)}\n{key_fingerprint(key)}".encode()).hexdigest()
    return base / f"{'simulated' if simulated else 'real'}-{digest[:16]}"


def _info(folder: Path) -> dict[str, Any] | None:
    """The folder's destination.json, or None when it has none (or it is unreadable)."""
    try:
        info = json.loads((folder / DESTINATION_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def describe(folder: Path) -> str:
    """What a spool folder is for, from its destination.json (or that it is unknown)."""
    info = _info(folder)
    if info is None or not {"simulated", "server", "key_sha256"} <= info.keys():
        return "samples of an unknown destination (an older gpufleet's spool)"
    kind = "simulated" if info["simulated"] else "real"
    what = f"{kind} samples for {info['server']} (key {info['key_sha256']}…"
    identity = recorded_identity(folder)
    if identity is not None:
        what += f", {identity[0]} of account {identity[1]!r}"
    return what + ")"


def record_identity(folder: Path, key_id: str, account: str) -> None:
    """Add the key's id and account, as the server named them, to the folder's destination.json.

    Written once: the first answer a server gave for this secret stands.
    """
    info = _info(folder)
    if info is None or "key_id" in info:
        return
    info.update(key_id=key_id, account=account)
    write_private_file(folder / DESTINATION_FILE, json.dumps(info, indent=2) + "\n")


def recorded_identity(folder: Path) -> tuple[str, str] | None:
    """(key id, account) that a server named for this folder's secret, if one has."""
    info = _info(folder) or {}
    key_id, account = info.get("key_id"), info.get("account")
    if isinstance(key_id, str) and isinstance(account, str):
        return key_id, account
    return None


def same_destination(folder: Path, server: str, *, simulated: bool) -> bool:
    """Whether ``folder`` spooled for this server URL and kind (under any secret)."""
    info = _info(folder) or {}
    prefix = "simulated-" if simulated else "real-"
    return (folder.name.startswith(prefix) and info.get("simulated") is simulated
            and info.get("server") == normalized_url(server))


def earlier_secrets(base: Path, mine: Path, server: str, *, simulated: bool) -> list[Path]:
    """Folders that may hold this key's samples under an earlier secret, still to be confirmed.

    Same URL and kind, another secret, an identity recorded, samples waiting. Whether
    they are this key's is for the server to say (``adoption.py``).
    """
    return [
        folder for folder in sorted(p for p in base.iterdir() if p.is_dir() and p != mine)
        if same_destination(folder, server, simulated=simulated)
        and recorded_identity(folder) is not None and pending_samples(folder)
    ]


def claim(folder: Path, server: str, key: str, *, simulated: bool) -> None:
    """Write the folder's destination.json (0600) the first time it is used."""
    path = folder / DESTINATION_FILE
    if path.exists():
        return
    write_private_file(path, json.dumps({"server": normalized_url(server),
                                         "key_sha256": key_fingerprint(key),
                                         "simulated": simulated}, indent=2) + "\n")


def name(folder: Path, mine: Path, samples: int, *, until: str = "") -> None:
    """Say once that ``folder``'s samples stay where they are (``until``: unless what)."""
    what = describe(folder)
    if samples == 1:
        what = what.replace("samples", "sample", 1)
    log.warning("the spool %s holds %d %s; they stay there%s: this run sends only %s",
                folder, samples, what, until, describe(mine))


def name_the_others(base: Path, mine: Path, *, besides: Iterable[Path] = ()) -> list[tuple[Path, int]]:
    """Log each other spool under ``base`` that still holds samples (once a run); they are not sent.

    Returns (folder, samples) for each. The base folder itself counts when an older
    gpufleet spooled into it directly. ``besides``: folders named later, once the server
    has said whether they hold this key's samples.
    """
    others: list[tuple[Path, int]] = []
    skip = {mine, *besides}
    candidates = [base, *sorted(p for p in base.iterdir() if p.is_dir() and p not in skip)]
    for folder in candidates:
        samples = pending_samples(folder)
        if samples:
            others.append((folder, samples))
            name(folder, mine, samples)
    return others
