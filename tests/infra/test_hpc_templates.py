"""Unit tests of command templates: validation of parameter values and the argument lists."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from bcratos.config import ConfigError, Settings, load_settings
from infra.hpc import InvalidParameterError, JobSpec, TemplateError, instantiate, parse_assignments

TEMPLATES: dict[str, Any] = {
    "fit": {
        "executable": sys.executable,
        "args": [
            "-m", "tool", "--dataset", "{dataset}", "--epochs={epochs}", "--model", "{model}",
            "--input", "{input}", "{{literal}}",
        ],
        "parameters": {
            "dataset": {"type": "str", "pattern": "[a-z][a-z0-9_-]{0,31}"},
            "epochs": {"type": "int", "min": 1, "max": 100, "default": 10},
            "model": {"type": "enum", "choices": ["linear", "gru"]},
            "input": {"type": "path", "base_dir": "inputs"},
        },
        "resources": {"cpus": 2, "memory_mb": 512},
    }
}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    (tmp_path / "inputs").mkdir()
    return load_settings(data_dir=tmp_path, hpc={"templates": TEMPLATES})


def _fit(settings: Settings, **overrides: Any) -> tuple[str, ...]:
    parameters = {"dataset": "day12", "model": "gru", "input": "day12.parquet", **overrides}
    return instantiate(settings, JobSpec("fit", parameters)).argv


def test_valid_instantiation_gives_exact_argv(settings: Settings) -> None:
    argv = _fit(settings, epochs="25")

    inputs = (settings.data_dir / "inputs").resolve()
    assert argv == (
        sys.executable, "-m", "tool", "--dataset", "day12", "--epochs=25", "--model", "gru",
        "--input", str(inputs / "day12.parquet"), "{literal}",
    )


def test_default_value_fills_missing_parameter(settings: Settings) -> None:
    assert "--epochs=10" in _fit(settings)


def test_command_carries_validated_values_and_resources(settings: Settings) -> None:
    command = instantiate(
        settings, JobSpec("fit", {"dataset": "a", "model": "linear", "input": "x", "epochs": 3})
    )

    assert command.parameters["epochs"] == "3"
    assert command.resources.cpus == 2
    assert command.resources.memory_mb == 512


@pytest.mark.parametrize(
    "value",
    [
        "day12; rm -rf /",
        "day12 && reboot",
        "$(id)",
        "`id`",
        "day|cat",
        "day>out",
        "day12\nsecond",
        "day12\rsecond",
        "day\0x",
        "day 12",
        "day\t12",
        "'quoted'",
        "*",
    ],
)
def test_shell_metacharacters_rejected_naming_parameter(settings: Settings, value: str) -> None:
    with pytest.raises(InvalidParameterError) as caught:
        _fit(settings, dataset=value)

    assert caught.value.parameter == "dataset"
    assert caught.value.template == "fit"
    assert repr(value) in str(caught.value)
    assert "shell metacharacters" in str(caught.value)


@pytest.mark.parametrize("value", ["--help", "-rf", "-"])
def test_option_injection_rejected(settings: Settings, value: str) -> None:
    with pytest.raises(InvalidParameterError) as caught:
        _fit(settings, dataset=value)

    assert caught.value.parameter == "dataset"
    assert "leading '-'" in str(caught.value)


def test_pattern_mismatch_names_pattern(settings: Settings) -> None:
    with pytest.raises(InvalidParameterError) as caught:
        _fit(settings, dataset="Day12")

    assert "[a-z][a-z0-9_-]{0,31}" in str(caught.value)
    assert "'Day12'" in str(caught.value)


@pytest.mark.parametrize("value", ["0", "101", "-5", "ten", "1.5", "1e3", "", " 7"])
def test_int_out_of_range_or_malformed_rejected(settings: Settings, value: str) -> None:
    with pytest.raises(InvalidParameterError) as caught:
        _fit(settings, epochs=value)

    assert caught.value.parameter == "epochs"
    assert "an integer from 1 to 100" in str(caught.value)


def test_int_accepts_python_int_but_not_bool(settings: Settings) -> None:
    assert "--epochs=100" in _fit(settings, epochs=100)
    with pytest.raises(InvalidParameterError):
        _fit(settings, epochs=True)


def test_enum_value_outside_choices_rejected(settings: Settings) -> None:
    with pytest.raises(InvalidParameterError) as caught:
        _fit(settings, model="transformer")

    assert caught.value.parameter == "model"
    assert "one of ['linear', 'gru']" in str(caught.value)


@pytest.mark.parametrize(
    "value", ["../secrets/key", "sub/../../escape", "..", "/etc/passwd", "~/x"]
)
def test_path_outside_base_rejected(settings: Settings, value: str) -> None:
    with pytest.raises(InvalidParameterError) as caught:
        _fit(settings, input=value)

    assert caught.value.parameter == "input"
    assert repr(value) in str(caught.value)


def test_absolute_path_inside_base_accepted(settings: Settings) -> None:
    inside = (settings.data_dir / "inputs" / "sub" / "file.bin").resolve()

    assert str(inside) in _fit(settings, input=str(inside))


def test_symlink_leaving_base_rejected(settings: Settings, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (settings.data_dir / "inputs" / "link").symlink_to(outside)

    with pytest.raises(InvalidParameterError) as caught:
        _fit(settings, input="link/file")

    assert "a path inside" in str(caught.value)


def test_must_exist_path_rejects_missing_file(tmp_path: Path) -> None:
    templates = {
        "read": {
            "executable": "cat",
            "args": ["{file}"],
            "parameters": {"file": {"type": "path", "base_dir": str(tmp_path), "must_exist": True}},
        }
    }
    settings = load_settings(data_dir=tmp_path, hpc={"templates": templates})
    (tmp_path / "present.txt").write_text("x")

    assert instantiate(settings, JobSpec("read", {"file": "present.txt"})).argv[1] == str(
        (tmp_path / "present.txt").resolve()
    )
    with pytest.raises(InvalidParameterError, match="that exists"):
        instantiate(settings, JobSpec("read", {"file": "absent.txt"}))


def test_undeclared_template_rejected(settings: Settings) -> None:
    with pytest.raises(TemplateError, match="template 'bash' is not declared"):
        instantiate(settings, JobSpec("bash", {"command": "id"}))


def test_unknown_parameter_rejected(settings: Settings) -> None:
    with pytest.raises(TemplateError, match=r"has no parameters \['shell'\]"):
        _fit(settings, shell="sh")


def test_missing_required_parameter_rejected(settings: Settings) -> None:
    with pytest.raises(TemplateError, match="parameter 'model' is missing"):
        instantiate(settings, JobSpec("fit", {"dataset": "a", "input": "x"}))


def test_executable_missing_from_path_rejected(tmp_path: Path) -> None:
    templates = {"ghost": {"executable": "bcratos-no-such-program", "args": []}}
    settings = load_settings(data_dir=tmp_path, hpc={"templates": templates})

    with pytest.raises(TemplateError, match="is not on PATH"):
        instantiate(settings, JobSpec("ghost"))


def test_template_with_undeclared_placeholder_rejected_at_load(tmp_path: Path) -> None:
    templates = {"bad": {"executable": "echo", "args": ["{who}"]}}

    with pytest.raises(ConfigError, match=r"undeclared parameters \['who'\]"):
        load_settings(data_dir=tmp_path, hpc={"templates": templates})


def test_template_with_relative_executable_rejected_at_load(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="relative path"):
        load_settings(
            data_dir=tmp_path, hpc={"templates": {"bad": {"executable": "bin/tool"}}}
        )


def test_unsafe_enum_choice_rejected_at_load(tmp_path: Path) -> None:
    templates = {
        "bad": {
            "executable": "echo",
            "args": ["{x}"],
            "parameters": {"x": {"type": "enum", "choices": ["a;b"]}},
        }
    }

    with pytest.raises(ConfigError, match="not a plain word"):
        load_settings(data_dir=tmp_path, hpc={"templates": templates})


def test_default_templates_instantiate(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path)

    train = instantiate(
        settings, JobSpec("train", {"dataset": "day12", "model": "gru", "target": "global"})
    )

    assert train.argv == (
        sys.executable, "-m", "bcratos.cli", "train", "--dataset", "day12", "--model", "gru",
        "--device", "cpu", "--target", "global",
    )
    assert set(settings.hpc.templates) >= {"prepare", "train", "evaluate", "announce"}


def test_parse_assignments_splits_on_first_equals() -> None:
    assert parse_assignments(["a=1", "b=x=y"]) == {"a": "1", "b": "x=y"}
    with pytest.raises(TemplateError, match="key=value"):
        parse_assignments(["novalue"])
    with pytest.raises(TemplateError, match="given twice"):
        parse_assignments(["a=1", "a=2"])
