"""What ``pip install`` ships: only ``gpufleet`` at the top, and every folder the commands read."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
import zipfile
from fnmatch import fnmatch
from pathlib import Path

from gpufleet import sample_data
from gpufleet.server.fleet import default_fleet, sample_data_dir

ROOT = Path(__file__).resolve().parent.parent
SOURCE_DIRS = ("server", "console", "sample_data")


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_source_package_is_listed_under_the_gpufleet_namespace() -> None:
    setuptools = _project()["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    found = {
        "gpufleet." + ".".join(init.parent.relative_to(ROOT).parts)
        for top in SOURCE_DIRS for init in (ROOT / top).rglob("__init__.py")
    }
    assert found == listed
    assert setuptools["package-dir"] == {f"gpufleet.{d}": d for d in SOURCE_DIRS}


def test_sample_data_ships_with_its_fleet_file() -> None:
    package_data = _project()["tool"]["setuptools"]["package-data"]
    assert any(fnmatch("fleet.toml", p) for p in package_data["gpufleet.sample_data"])
    # found through the package, not through a path beside the source tree
    assert sample_data_dir() == Path(sample_data.__file__).resolve().parent
    assert (sample_data_dir() / "generate.py").is_file()
    assert len(default_fleet().nodes) >= 3


def test_every_tcss_file_the_console_loads_is_package_data() -> None:
    patterns = _project()["tool"]["setuptools"]["package-data"]["gpufleet.console"]
    for css in (ROOT / "console").rglob("*.tcss"):
        relative = css.relative_to(ROOT / "console").as_posix()
        assert any(fnmatch(relative, p) for p in patterns), f"{relative} would not be installed"


_OLD_IMPORT = re.compile(r"^\s*(from|import)\s+(server|console|sample_data)\b", re.MULTILINE)


def test_no_source_imports_the_bare_folder_names() -> None:
    # a bare `import server` still resolves from a checkout's root and would load a
    # second copy of every module beside gpufleet.server
    offenders = [
        str(path.relative_to(ROOT))
        for top in (*SOURCE_DIRS, "tests", "bench", "screenshots")
        for path in (ROOT / top).rglob("*.py")
        if "fakes/pynvml" not in path.as_posix() and _OLD_IMPORT.search(path.read_text())
    ]
    assert offenders == []


def test_the_wheel_holds_nothing_at_the_top_but_gpufleet(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path),
                    str(ROOT)], check=True, capture_output=True, timeout=240)
    (wheel,) = tmp_path.glob("gpufleet-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/", 1)[0] for name in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"gpufleet"}
    # a namespace package: no gpufleet/__init__.py to clash with another distribution's
    assert "gpufleet/__init__.py" not in names
    for needed in ("gpufleet/server/cli.py", "gpufleet/console/console.tcss",
                   "gpufleet/sample_data/fleet.toml", "gpufleet/sample_data/generate.py"):
        assert needed in names
    entry = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "gpufleet = gpufleet.server.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()
