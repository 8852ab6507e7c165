"""Settings load from TOML, then GPUFLEET_* environment variables, then flags."""

from pathlib import Path

import pytest

from gpufleet.server.config import ConfigError, Limits, load_settings


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_are_the_documented_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))  # no user config file
    settings = load_settings(environ={})
    assert settings.rate_limits.ingest.requests == 100
    assert settings.rate_limits.ingest.per_s == 60
    assert settings.rate_limits.key_rotation.requests == 5
    assert settings.rate_limits.key_rotation.per_s == 3600
    assert settings.limits.max_header_bytes == 16 * 1024
    assert settings.server.host == "127.0.0.1"


def test_toml_then_env_then_overrides(tmp_path: Path) -> None:
    file = write(
        tmp_path / "config.toml",
        """
[server]
port = 9100
host = "0.0.0.0"

[limits]
max_body_bytes = 1024

[[nodes]]
name = "gpu-a"
url = "http://10.0.0.5:8765"
token_env = "GPU_A_TOKEN"
""",
    )
    settings = load_settings(
        file,
        environ={"GPUFLEET_PORT": "9200", "GPUFLEET_LIMITS__HANDLER_TIMEOUT_S": "2.5"},
        overrides={"server.host": "127.0.0.2", "server.db_path": None},
    )
    assert settings.server.port == 9200  # env beats file
    assert settings.server.host == "127.0.0.2"  # flags beat everything
    assert settings.limits.max_body_bytes == 1024
    assert settings.limits.handler_timeout_s == 2.5
    assert settings.nodes[0].name == "gpu-a"
    assert settings.nodes[0].token_env == "GPU_A_TOKEN"


def test_unknown_key_is_an_error_naming_the_file(tmp_path: Path) -> None:
    file = write(tmp_path / "config.toml", "[server]\nprot = 1\n")
    with pytest.raises(ConfigError, match=r"config\.toml"):
        load_settings(file, environ={})


def test_errors_name_the_file_and_key_one_line_each_without_pydantic_internals(
        tmp_path: Path) -> None:
    file = write(tmp_path / "config.toml",
                 '[server]\nprot = 1\nport = "x"\n[[runtimes]]\ntype = "vllm"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(file, environ={})
    assert sorted(str(caught.value).splitlines()) == sorted([
        f"{file}: server.prot: unknown setting",
        f"{file}: server.port: Input should be a valid integer, unable to parse string as an integer",
        f"{file}: runtimes.0.type: Input should be 'ollama', 'triton', 'process' or 'simulated'",
    ])
    for internal in ("validation error", "type=", "input_value", "errors.pydantic.dev"):
        assert internal not in str(caught.value)


def test_errors_from_environment_variables_name_the_variable_not_the_file(tmp_path: Path) -> None:
    file = write(tmp_path / "config.toml", "[server]\nport = 9000\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(file, environ={"GPUFLEET_PORT": "nine", "GPUFLEET_LIMITS__MAX_BODYBYTES": "1"})
    lines = str(caught.value).splitlines()
    assert sorted(lines) == [
        "environment variable GPUFLEET_LIMITS__MAX_BODYBYTES: limits.max_bodybytes: unknown setting",
        "environment variable GPUFLEET_PORT: server.port: Input should be a valid integer, "
        "unable to parse string as an integer",
    ]
    assert str(file) not in str(caught.value)
    with pytest.raises(ConfigError, match=r"^environment variable GPUFLEET_SERVER__PORT__X: "):
        load_settings(file, environ={"GPUFLEET_SERVER__PORT__X": "1"})
    with pytest.raises(ConfigError, match=r"^environment variable GPUFLEET_NOPE__X: nope: unknown setting$"):
        load_settings(file, environ={"GPUFLEET_NOPE__X": "1"})


def test_a_missing_file_from_gpufleet_config_names_the_variable(tmp_path: Path) -> None:
    missing = tmp_path / "gone.toml"
    with pytest.raises(ConfigError, match=r"gone\.toml \(from GPUFLEET_CONFIG\): no such"):
        load_settings(environ={"GPUFLEET_CONFIG": str(missing)})


def test_bad_command_line_overrides_are_named_as_such(tmp_path: Path) -> None:
    file = write(tmp_path / "config.toml", "")
    with pytest.raises(ConfigError, match=r"^command line: server\.port: Input should be a valid integer"):
        load_settings(file, environ={}, overrides={"server.port": "x"})


def test_malformed_toml_is_an_error(tmp_path: Path) -> None:
    file = write(tmp_path / "config.toml", "[server\n")
    with pytest.raises(ConfigError, match=r"config\.toml"):
        load_settings(file, environ={})


def test_explicit_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_settings(tmp_path / "nope.toml", environ={})


def test_settings_are_frozen() -> None:
    limits = Limits()
    with pytest.raises(ValueError):
        limits.max_body_bytes = 1  # type: ignore[misc]


def test_limits_that_would_break_every_request_are_refused(tmp_path: Path) -> None:
    file = write(tmp_path / "config.toml", "[limits]\nmax_connections = 0\nmax_header_bytes = 0\n"
                                          "[rate_limits.ingest]\nrequests = 0\nper_s = 60\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(file, environ={"GPUFLEET_LIMITS__HANDLER_TIMEOUT_S": "-5"})
    assert sorted(str(caught.value).splitlines()) == sorted([
        f"{file}: limits.max_connections: Input should be greater than or equal to 1",
        f"{file}: limits.max_header_bytes: Input should be greater than or equal to 1024",
        f"{file}: rate_limits.ingest.requests: Input should be greater than or equal to 1",
        "environment variable GPUFLEET_LIMITS__HANDLER_TIMEOUT_S: limits.handler_timeout_s: "
        "Input should be greater than 0",
    ])


def test_incomplete_runtimes_are_refused_in_plain_words(tmp_path: Path) -> None:
    file = write(tmp_path / "config.toml",
                 '[[runtimes]]\ntype = "ollama"\n'
                 '[[runtimes]]\ntype = "triton"\nurl = "127.0.0.1:8000"\n'
                 '[[runtimes]]\ntype = "process"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(file, environ={})
    assert str(caught.value).splitlines() == [
        f"{file}: runtimes.0: an ollama runtime needs a url (e.g. http://127.0.0.1:11434)",
        f"{file}: runtimes.1: url must start with http:// or https://, not '127.0.0.1:8000'",
        f"{file}: runtimes.2: a process runtime needs process_names or users (it would match nothing)",
    ]


def test_a_configured_gpu_rate_changes_that_architecture_only(tmp_path: Path) -> None:
    from gpufleet.server.config import DEFAULT_GPU_RATES_USD

    file = write(tmp_path / "config.toml", "[pricing.gpu_rates_usd]\nA100 = 3.0\nMI300X = 4.25\n")
    rates = load_settings(file, environ={}).pricing.gpu_rates_usd
    assert rates == {**DEFAULT_GPU_RATES_USD, "A100": 3.0, "MI300X": 4.25}
    assert rates["H100"] == 3.50  # a default the file did not mention
    bad = write(tmp_path / "bad.toml", "[pricing.gpu_rates_usd]\nT4 = -1\n")
    with pytest.raises(ConfigError, match=r"pricing\.gpu_rates_usd\.T4: Input should be greater than or equal to 0"):
        load_settings(bad, environ={})


def test_one_field_of_a_rate_limit_is_laid_over_its_default(tmp_path: Path) -> None:
    settings = load_settings(environ={"GPUFLEET_RATE_LIMITS__INGEST__REQUESTS": "5",
                                      "GPUFLEET_CONFIG": str(write(tmp_path / "c.toml",
                                                       "[rate_limits.heartbeat]\nper_s = 30\n"))})
    assert (settings.rate_limits.ingest.requests, settings.rate_limits.ingest.per_s) == (5, 60)
    assert (settings.rate_limits.heartbeat.requests, settings.rate_limits.heartbeat.per_s) == (60, 30)
    assert settings.rate_limits.chargeback.requests == 60
    with pytest.raises(ConfigError, match=r"^environment variable GPUFLEET_RATE_LIMITS__INGEST__PER_S: "
                                          r"rate_limits\.ingest\.per_s: "):
        load_settings(environ={"GPUFLEET_RATE_LIMITS__INGEST__PER_S": "0",
                               "GPUFLEET_CONFIG": str(tmp_path / "c.toml")})
