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
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
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


def describe(folder: Path) -> str:
    """What a spool folder is for, from its destination.json (or that it is unknown)."""
    try:
        info = json.loads((folder / DESTINATION_FILE).read_text(encoding="utf-8"))
        kind = "simulated" if info["simulated"] else "real"
        return f"{kind} samples for {info['server']} (key {info['key_sha256']}…)"
    except (OSError, ValueError, KeyError, TypeError):
        return "samples of an unknown destination (an older gpufleet's spool)"


def claim(folder: Path, server: str, key: str, *, simulated: bool) -> None:
    """Write the folder's destination.json (0600) the first time it is used."""
    path = folder / DESTINATION_FILE
    if path.exists():
        return
    write_private_file(path, json.dumps({"server": normalized_url(server),
                                         "key_sha256": key_fingerprint(key),
                                         "simulated": simulated}, indent=2) + "\n")


def name_the_others(base: Path, mine: Path) -> list[tuple[Path, int]]:
    """Log each other spool under ``base`` that still holds samples (once a run); they are not sent.

    Returns (folder, samples) for each. The base folder itself counts when an older
    gpufleet spooled into it directly.
    """
    others: list[tuple[Path, int]] = []
    candidates = [base, *sorted(p for p in base.iterdir() if p.is_dir() and p != mine)]
    for folder in candidates:
        samples = pending_samples(folder)
        if samples:
            others.append((folder, samples))
            what = describe(folder)
            if samples == 1:
                what = what.replace("samples", "sample", 1)
            log.warning("the spool %s holds %d %s; they stay there: this run sends only %s",
                        folder, samples, what, describe(mine))
    return others
