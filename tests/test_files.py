"""Secret files are 0600 from the first byte, whatever the umask, and replaced whole."""

import os
import stat
from pathlib import Path

from gpufleet.server.files import write_private_file


def test_private_file_is_owner_only_even_under_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        target = tmp_path / "sub" / "token"
        write_private_file(target, "gf_secret\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert stat.S_IMODE(target.parent.stat().st_mode) == 0o700
    assert target.read_text() == "gf_secret\n"


def test_private_file_replaces_the_old_contents_whole(tmp_path: Path) -> None:
    target = tmp_path / "discovery.json"
    target.write_text("old and much longer contents")
    target.chmod(0o644)
    write_private_file(target, "new")
    assert target.read_text() == "new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["discovery.json"]  # no temp file left
