"""``gpufleet config``: every effective setting, and where it came from (flag, environment, file, default).

Secrets never print: a setting named like a secret (``*token``, ``*secret``,
``*password``, ``*api_key``) shows as ``***``, and so does the password part of a URL.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

HELP = "Print every effective setting and where it came from (flag, environment, file, default)."
EXIT_CODES = """\
  0  printed
  2  a setting is invalid (each problem is printed with where it came from)
"""
EPILOG = """\
precedence, lowest first: default, the TOML file (--config, GPUFLEET_CONFIG or
the platform config dir), GPUFLEET_* environment variables (a field's path with
__ between levels: GPUFLEET_LIMITS__MAX_BODY_BYTES), then flags.
examples/config.toml lists every setting.
"""
MASK = "***"
_SECRET_NAME = re.compile(r"(secret|password|passwd|token|api_key)$", re.IGNORECASE)
# flags `gpufleet config` takes, as serve does: flag -> setting
FLAGS = {"--host": "server.host", "--port": "server.port", "--db": "server.db_path"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None, metavar="PATH",
                        help="TOML configuration (default: GPUFLEET_CONFIG, else the platform "
                             "config dir)")
    parser.add_argument("--host", default=None, help="as gpufleet serve --host")
    parser.add_argument("--port", type=int, default=None, help="as gpufleet serve --port")
    parser.add_argument("--db", type=Path, default=None, metavar="PATH",
                        help="as gpufleet serve --db")
    parser.add_argument("--json", action="store_true",
                        help="print a JSON object: setting -> {value, source}")


def run(args: argparse.Namespace) -> int:
    from gpufleet.server.config import ConfigError, load_settings

    overrides = {"server.host": args.host, "server.port": args.port,
                 "server.db_path": str(args.db) if args.db else None}
    try:
        settings = load_settings(args.config, overrides=overrides)
    except ConfigError as exc:
        print(f"gpufleet config: {exc}", file=sys.stderr)
        return 2
    file, file_data = _config_file(args.config)
    rows = effective(settings.model_dump(mode="json"), file_data, dict(os.environ),
                     {k: v for k, v in overrides.items() if v is not None}, file)
    if args.json:
        print(json.dumps({key: {"value": value, "source": source} for key, value, source in rows},
                         indent=2))
        return 0
    where = f"{file}" if file_data is not None else f"{file} (not found: defaults apply)"
    print(f"# configuration file: {where}")
    width = max(len(key) for key, _, _ in rows)
    texts = [json.dumps(value) for _, value, _ in rows]
    value_width = min(max(len(t) for t in texts), 40)
    for (key, _, source), text in zip(rows, texts, strict=True):
        print(f"{key.ljust(width)}  {text.ljust(value_width)}  {source}")
    return 0


def _config_file(explicit: Path | None) -> tuple[Path, dict[str, Any] | None]:
    """The file load_settings read (as it chooses it) and its data, or None when there is none."""
    from gpufleet.server.config import default_config_path

    path = explicit or (Path(os.environ["GPUFLEET_CONFIG"]) if os.environ.get("GPUFLEET_CONFIG")
                        else default_config_path())
    try:
        return path, tomllib.loads(path.read_text())
    except FileNotFoundError:
        return path, None


def effective(values: dict[str, Any], file_data: dict[str, Any] | None, environ: dict[str, str],
              flags: dict[str, Any], file: Path) -> list[tuple[str, Any, str]]:
    """(setting, value shown, source) for every leaf setting, in the model's order."""
    from gpufleet.server.config import _env_sources

    from_env = _env_sources(environ)
    in_file = set(_leaves(file_data or {}, prefix="", deep=True))
    rows = []
    for key, value in _leaves(values, prefix="").items():
        if key in flags:
            flag = next((f for f, k in FLAGS.items() if k == key), "a flag")
            source = f"flag {flag}"
        elif key in from_env or any(k.startswith(key + ".") for k in from_env):
            source = f"environment {from_env.get(key) or 'GPUFLEET_' + key.upper().replace('.', '__')}"
        elif key in in_file or any(k.startswith(key + ".") for k in in_file):
            source = f"file {file}"
        else:
            source = "default"
        rows.append((key, mask(key, value), source))
    return rows


def _leaves(data: dict[str, Any], prefix: str, *, deep: bool = False) -> dict[str, Any]:
    """Dotted paths of the settings: sections are walked; a list or a mapping-valued setting
    (the rate table, keybindings, [[nodes]]) is one leaf, unless ``deep`` (a file's keys)."""
    found: dict[str, Any] = {}
    for name, value in data.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict) and (deep or _is_section(key)):
            found.update(_leaves(value, key + ".", deep=deep))
        else:
            found[key] = value
    return found


def _is_section(key: str) -> bool:
    """Whether a dotted path names a section of Settings (a model), not a mapping value."""
    from pydantic import BaseModel

    from gpufleet.server.config import Settings

    model: Any = Settings
    for part in key.split("."):
        field = model.model_fields.get(part) if isinstance(model, type) else None
        if field is None:
            return False
        model = field.annotation
    return isinstance(model, type) and issubclass(model, BaseModel)


def mask(key: str, value: Any) -> Any:
    """``value`` with secrets replaced: a secret-named setting whole, a URL's password, in lists too."""
    if value is None:
        return None
    if _SECRET_NAME.search(key.rsplit(".", 1)[-1]):
        return MASK
    if isinstance(value, str) and "@" in value and "://" in value:
        return _mask_url(value)
    if isinstance(value, list):
        return [mask(key, item) for item in value]
    if isinstance(value, dict):
        return {k: mask(f"{key}.{k}", v) for k, v in value.items()}
    return value


def _mask_url(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:{MASK}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))
