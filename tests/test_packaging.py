"""What a plain (non-editable) ``pip install`` ships: every folder the commands read at run time."""

from __future__ import annotations

import tomllib
from fnmatch import fnmatch
from pathlib import Path

import sample_data
from server.fleet import default_fleet, sample_data_dir

ROOT = Path(__file__).resolve().parent.parent


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_sample_data_is_a_shipped_package_with_its_fleet_file() -> None:
    setuptools = _project()["tool"]["setuptools"]
    include = setuptools["packages"]["find"]["include"]
    for package in ("server", "console", "sample_data"):
        assert any(fnmatch(package, pattern) for pattern in include), package
    package_data = setuptools["package-data"]
    assert any(fnmatch("fleet.toml", p) for p in package_data["sample_data"])
    assert any(fnmatch("app.tcss", p) for p in package_data["console"])
    # found through the package, not through a path beside the source tree
    assert sample_data_dir() == Path(sample_data.__file__).resolve().parent
    assert (sample_data_dir() / "generate.py").is_file()
    assert len(default_fleet().nodes) >= 3


def test_every_tcss_file_the_console_loads_is_package_data() -> None:
    patterns = _project()["tool"]["setuptools"]["package-data"]["console"]
    for css in (ROOT / "console").rglob("*.tcss"):
        relative = css.relative_to(ROOT / "console").as_posix()
        assert any(fnmatch(relative, p) for p in patterns), f"{relative} would not be installed"
