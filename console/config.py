"""Console-side settings: which nodes to watch and their operator tokens.

Tokens come from an environment variable (``token_env``) or a file
(``token_file``). A token file that group or others can read is refused: the
console would otherwise be the reason a leaked operator token went unnoticed.
A token is held in a ``Secret`` whose ``repr`` and ``str`` never show it, so it
cannot reach the screen or a log line by accident.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from gpufleet.server.client import KeyFileError, read_key_file
from gpufleet.server.config import NodeSettings, Settings

LOCAL_NODE_NAME = "local"


class ConsoleConfigError(Exception):
    """The console's node list cannot be used as configured; the message says why."""


class TokenError(ConsoleConfigError):
    """A node's token could not be loaded safely; the message names the node, never the token."""


@dataclass(frozen=True, slots=True)
class Secret:
    """A token that prints as ``'***'`` wherever it goes."""

    value: str = field(repr=False)

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"


@dataclass(frozen=True, slots=True)
class NodeTarget:
    """One node the console polls: its display name, base URL and token (if any)."""

    name: str
    url: str
    token: Secret | None = None

    @property
    def api_key(self) -> str | None:
        return self.token.value if self.token else None


def read_token_file(path: Path, *, node: str) -> str:
    """The token in ``path``; refuses a file readable by group or others."""
    try:
        return read_key_file(path)
    except KeyFileError as exc:
        raise TokenError(f"node {node}: {exc}") from None


def load_token(node: NodeSettings, environ: Mapping[str, str] | None = None) -> Secret | None:
    """The node's token from ``token_env`` or ``token_file``; None when neither is set."""
    environ = os.environ if environ is None else environ
    if node.token_env:
        value = environ.get(node.token_env, "").strip()
        if not value:
            raise TokenError(f"node {node.name}: environment variable {node.token_env} is not set")
        return Secret(value)
    if node.token_file:
        return Secret(read_token_file(node.token_file.expanduser(), node=node.name))
    return None


def node_targets(settings: Settings, environ: Mapping[str, str] | None = None) -> list[NodeTarget]:
    """Every configured ``[[nodes]]`` entry as a target, tokens loaded; duplicate names refused."""
    targets: list[NodeTarget] = []
    seen: set[str] = set()
    for node in settings.nodes:
        if node.name in seen:
            raise ConsoleConfigError(f"node {node.name}: listed twice in [[nodes]]")
        seen.add(node.name)
        targets.append(NodeTarget(node.name, node.url.rstrip("/"), load_token(node, environ)))
    return targets
