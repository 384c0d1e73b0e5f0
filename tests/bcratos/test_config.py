import os
from pathlib import Path

import pytest

from bcratos.config import ConfigError, load_settings


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Drop the BCRATOS_* variables that `make test` sets, so each test sets its own."""
    for name in list(os.environ):
        if name.startswith("BCRATOS_"):
            monkeypatch.delenv(name)


def test_defaults_describe_embedded_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("BCRATOS_DATA_DIR", "BCRATOS_KAFKA__PORT", "BCRATOS_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    assert settings.kafka.embedded
    assert settings.kafka.bootstrap == "127.0.0.1:9092"
    assert settings.data_dir.name == ".bcratos"
    assert settings.lake_uri == str(settings.data_dir / "lake")
    assert settings.topic("raw.spikes") == "bcratos.raw.spikes"


def test_environment_overrides_nested_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BCRATOS_KAFKA__PORT", "19555")
    assert load_settings().kafka.bootstrap == "127.0.0.1:19555"


def test_unknown_environment_key_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BCRATOS_KAFKA__PROT", "19555")
    with pytest.raises(ConfigError, match="unknown configuration key 'kafka.prot'"):
        load_settings()


def test_malformed_value_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BCRATOS_KAFKA__PORT", "ninety")
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert "'kafka.port'" in str(raised.value)
    assert "'ninety'" in str(raised.value)


def test_out_of_range_port_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BCRATOS_KAFKA__PORT", "70000")
    with pytest.raises(ConfigError, match="kafka.port"):
        load_settings()


def test_toml_file_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BCRATOS_KAFKA__PORT", raising=False)
    config = tmp_path / "bcratos.toml"
    config.write_text('data_dir = "/srv/bcratos"\n[spark]\nmaster = "local[1]"\n')
    monkeypatch.setenv("BCRATOS_CONFIG", str(config))
    settings = load_settings()
    assert settings.data_dir == Path("/srv/bcratos")
    assert settings.spark.master == "local[1]"


def test_unknown_toml_key_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "bcratos.toml"
    config.write_text("[spark]\nmastr = 'local[1]'\n")
    monkeypatch.setenv("BCRATOS_CONFIG", str(config))
    with pytest.raises(ConfigError, match="unknown configuration key 'spark.mastr'"):
        load_settings()


def test_missing_config_file_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "absent.toml"
    monkeypatch.setenv("BCRATOS_CONFIG", str(missing))
    with pytest.raises(ConfigError, match="absent.toml"):
        load_settings()


def test_environment_wins_over_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "bcratos.toml"
    config.write_text("[kafka]\nport = 19001\n")
    monkeypatch.setenv("BCRATOS_CONFIG", str(config))
    monkeypatch.setenv("BCRATOS_KAFKA__PORT", "19002")
    assert load_settings().kafka.port == 19002


def test_non_loopback_embedded_host_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BCRATOS_KAFKA__HOST", "0.0.0.0")
    with pytest.raises(ConfigError, match="not a loopback address"):
        load_settings()


def test_secret_key_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BCRATOS_ANONYMIZATION__KEY", "s3cret-value")
    settings = load_settings()
    assert "s3cret-value" not in repr(settings)
    assert settings.anonymization.key is not None
    assert settings.anonymization.key.get_secret_value() == "s3cret-value"
