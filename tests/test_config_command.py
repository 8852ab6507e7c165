"""gpufleet config: every effective setting, its source, secrets masked."""

from __future__ import annotations

import json
from pathlib import Path

from gpufleet.server.cli import main
from gpufleet.server.commands.config import mask


def _settings(capsys, *argv: str) -> dict[str, dict]:
    assert main(["config", "--json", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def test_each_setting_says_whether_a_flag_the_environment_the_file_or_the_default_set_it(
        tmp_path: Path, capsys, monkeypatch) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[server]\nport = 9100\naccount = "acme"\n[pricing.gpu_rates_usd]\nA100 = 3.0\n'
                      '[[nodes]]\nname = "gpu-1"\nurl = "https://ops:s3cret@gpu-1:8765"\n')
    monkeypatch.setenv("GPUFLEET_LIMITS__MAX_BODY_BYTES", "2048")
    monkeypatch.setenv("GPUFLEET_PORT", "9200")
    shown = _settings(capsys, "--config", str(config), "--host", "0.0.0.0")
    assert shown["server.host"] == {"value": "0.0.0.0", "source": "flag --host"}
    assert shown["server.port"] == {"value": 9200, "source": "environment GPUFLEET_PORT"}
    assert shown["limits.max_body_bytes"] == {
        "value": 2048, "source": "environment GPUFLEET_LIMITS__MAX_BODY_BYTES"}
    assert shown["server.account"] == {"value": "acme", "source": f"file {config}"}
    assert shown["pricing.gpu_rates_usd"]["value"]["A100"] == 3.0
    assert shown["pricing.gpu_rates_usd"]["value"]["H100"] == 3.5  # laid over the defaults
    assert shown["limits.max_connections"] == {"value": 1024, "source": "default"}
    assert shown["nodes"]["value"][0]["url"] == "https://ops:***@gpu-1:8765"
    assert "s3cret" not in json.dumps(shown)
    # every leaf of the model is listed: a section's fields one by one
    assert "rate_limits.ingest.requests" in shown and "metrics.access" in shown


def test_the_table_names_the_file_and_a_bad_setting_is_exit_2(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "none.toml"
    assert main(["config", "--config", str(missing)]) == 2
    assert "no such configuration file" in capsys.readouterr().err
    config = tmp_path / "c.toml"
    config.write_text("[server]\nport = 'x'\n")
    assert main(["config", "--config", str(config)]) == 2
    assert "server.port" in capsys.readouterr().err
    config.write_text("[server]\nport = 9100\n")
    assert main(["config", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"# configuration file: {config}\n")
    line = next(row for row in out.splitlines() if row.startswith("server.port "))
    assert line.split() == ["server.port", "9100", "file", str(config)]


def test_secret_named_settings_and_url_passwords_never_print() -> None:
    assert mask("agent.api_token", "gf_abc") == "***"
    assert mask("x.password", "pw") == "***"
    assert mask("agent.server", "https://u:pw@h:1/p") == "https://u:***@h:1/p"
    assert mask("agent.server", "https://h:1/p") == "https://h:1/p"
    assert mask("agent.key_file", "/etc/k") == "/etc/k"  # a path to a secret is not one
    assert mask("nodes", [{"token": "t", "url": "http://a:b@c"}]) == [{"token": "***", "url": "http://a:***@c"}]
