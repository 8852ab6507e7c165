"""examples/config.toml: loads, states every default truly, and names every setting gpufleet has.

Generic on purpose: a setting added to the Settings model (server/config.py) without an
entry in the example fails here, whoever adds it.
"""

from __future__ import annotations

import tomllib
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from gpufleet.server.config import Settings, load_settings

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "config.toml"
ENABLE = "#> "


def _enabled(text: str) -> str:
    """The example with every "#> " line (settings without a default, list entries) switched on."""
    return "\n".join(line[len(ENABLE):] if line.startswith(ENABLE)
                     else "" if line.strip() == "#>" else line for line in text.splitlines())


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The model a field holds, directly or as the items of a list (``list[NodeSettings]``)."""
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every setting's dotted path; a list of tables contributes its items' fields."""
    found = []
    for name, field in model.model_fields.items():
        inner = _model_of(field.annotation)
        if inner is not None:
            found += _paths(inner, f"{prefix}{name}.")
        else:
            found.append(f"{prefix}{name}")
    return found


def _present(data: Any, path: list[str]) -> bool:
    if not path:
        return True
    if isinstance(data, list):
        return any(_present(item, path) for item in data)
    return isinstance(data, dict) and path[0] in data and _present(data[path[0]], path[1:])


def test_the_example_as_shipped_loads_and_is_exactly_the_defaults() -> None:
    assert load_settings(EXAMPLE, environ={}) == Settings()


def test_with_every_optional_line_enabled_it_loads_and_names_every_setting(tmp_path: Path) -> None:
    text = _enabled(EXAMPLE.read_text())
    enabled = tmp_path / "config.toml"
    enabled.write_text(text)
    settings = load_settings(enabled, environ={})
    assert settings.runtimes and settings.nodes and settings.agent.rules
    data = tomllib.loads(text)
    missing = [path for path in _paths(Settings) if not _present(data, path.split("."))]
    assert missing == [], f"settings missing from examples/config.toml: {missing}"


def test_the_walk_sees_nested_sections_and_list_items() -> None:
    paths = _paths(Settings)
    assert {"limits.max_body_bytes", "rate_limits.ingest.per_s", "runtimes.grace_s",
            "agent.rules.team_id", "nodes.token_file", "metrics.access"} <= set(paths)
