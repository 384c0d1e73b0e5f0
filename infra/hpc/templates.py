"""Instantiation of command templates: the only way an HPC job gets a command.

A job names a template declared in ``hpc.templates`` and gives values for its parameters. Each
value is checked against the parameter's declaration and against rules that hold for every
parameter: no shell metacharacters, whitespace, control characters, NUL or newlines, and no
leading dash that a program could read as an option. The result is an argument list. No backend
builds a shell string from it: the local backend passes it to ``subprocess``, the Slurm backend
to a launcher through a JSON file, and the HEAppE backend sends only the validated values.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Final

from bcratos.config import (
    TEMPLATE_PLACEHOLDER,
    EnumParameter,
    IntParameter,
    PathParameter,
    ResourceSettings,
    Settings,
    StrParameter,
    TemplateSettings,
)
from infra.hpc.exceptions import InvalidParameterError, TemplateError

SHELL_METACHARACTERS: Final = frozenset(";&|<>$`\\'\"()*?[]{}!#~^")
"""Characters that a shell gives a meaning to; rejected in every parameter value."""

_INTEGER = re.compile(r"[+-]?[0-9]{1,18}")
_SAFE_VALUE = (
    "a value without shell metacharacters, whitespace, control characters or a leading '-'"
)

ParameterValue = str | int


@dataclass(frozen=True)
class JobSpec:
    """A request to run one declared template with parameter values."""

    template: str
    parameters: Mapping[str, ParameterValue] = field(default_factory=dict)


@dataclass(frozen=True)
class Command:
    """A validated template instance, ready for a backend."""

    template: str
    argv: tuple[str, ...]
    """Executable first; run as a list, never through a shell."""
    parameters: Mapping[str, str]
    """Every parameter's validated value as it appears in ``argv``."""
    resources: ResourceSettings


def instantiate(settings: Settings, job: JobSpec) -> Command:
    """Validate ``job`` against its template and return the command to run.

    Raises ``TemplateError`` for an undeclared template, an unknown or missing parameter, or an
    executable that cannot be found, and ``InvalidParameterError`` for a rejected value.
    """
    template = _declared_template(settings, job.template)

    unknown = sorted(job.parameters.keys() - template.parameters.keys())
    if unknown:
        raise TemplateError(
            f"template {job.template!r} has no parameters {unknown}; "
            f"declared: {sorted(template.parameters)}"
        )

    values: dict[str, str] = {}
    for name, declaration in template.parameters.items():
        raw = job.parameters.get(name, declaration.default)
        if raw is None:
            raise TemplateError(
                f"template {job.template!r}: parameter {name!r} is missing and has no default"
            )
        values[name] = validate_value(settings, job.template, name, declaration, raw)

    argv = [_resolve_executable(job.template, template.executable)]
    argv.extend(_substitute(argument, values) for argument in template.args)
    return Command(
        template=job.template, argv=tuple(argv), parameters=values, resources=template.resources
    )


def validate_value(
    settings: Settings,
    template: str,
    name: str,
    declaration: StrParameter | IntParameter | EnumParameter | PathParameter,
    value: object,
) -> str:
    """Return ``value`` as the text that goes into the command, or raise
    ``InvalidParameterError`` naming the template, the parameter and what was expected."""
    check = _CHECKS[type(declaration)]
    return check(_Context(settings, template, name, value), declaration)


def parse_assignments(assignments: list[str]) -> dict[str, str]:
    """Turn command-line ``key=value`` words into a parameter mapping."""
    parameters: dict[str, str] = {}
    for assignment in assignments:
        key, separator, value = assignment.partition("=")
        if not separator or not key:
            raise TemplateError(f"parameter {assignment!r} is not of the form key=value")
        if key in parameters:
            raise TemplateError(f"parameter {key!r} is given twice")
        parameters[key] = value
    return parameters


@dataclass(frozen=True)
class _Context:
    settings: Settings
    template: str
    name: str
    value: object

    def reject(self, expected: str) -> InvalidParameterError:
        return InvalidParameterError(self.template, self.name, self.value, expected)

    def text(self) -> str:
        """Return the value when it is text that passes the checks shared by every type."""
        if not isinstance(self.value, str):
            raise self.reject(f"text, not {type(self.value).__name__}")
        if not self.value:
            raise self.reject("a non-empty value")
        if any(_unsafe(character) for character in self.value) or self.value.startswith("-"):
            raise self.reject(_SAFE_VALUE)
        return self.value


def _unsafe(character: str) -> bool:
    return (
        character in SHELL_METACHARACTERS or character.isspace() or not character.isprintable()
    )


def _check_str(context: _Context, declaration: StrParameter) -> str:
    text = context.text()
    if not re.fullmatch(declaration.pattern, text):
        raise context.reject(f"a value matching {declaration.pattern!r}")
    return text


def _check_int(context: _Context, declaration: IntParameter) -> str:
    expected = _describe_range(declaration)
    value = context.value
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise context.reject(expected)
    if isinstance(value, str):
        if not _INTEGER.fullmatch(value):
            raise context.reject(expected)
        value = int(value)
    if declaration.min is not None and value < declaration.min:
        raise context.reject(expected)
    if declaration.max is not None and value > declaration.max:
        raise context.reject(expected)
    return str(value)


def _check_enum(context: _Context, declaration: EnumParameter) -> str:
    if context.value not in declaration.choices:
        raise context.reject(f"one of {declaration.choices}")
    return context.text()


def _check_path(context: _Context, declaration: PathParameter) -> str:
    base = base_directory(context.settings, declaration)
    expected = f"a path inside {str(base)!r}" + (" that exists" if declaration.must_exist else "")
    text = context.text()
    if ".." in PurePosixPath(text).parts:
        raise context.reject(f"{expected}, without '..' components")

    candidate = Path(text) if os.path.isabs(text) else base / text
    # resolve() follows symbolic links, so a link that points out of the base is rejected too.
    resolved = candidate.resolve(strict=False)
    if not resolved.is_relative_to(base):
        raise context.reject(expected)
    if declaration.must_exist and not resolved.exists():
        raise context.reject(expected)
    return str(resolved)


_CHECKS: Final[dict[type, Callable[[_Context, Any], str]]] = {
    StrParameter: _check_str,
    IntParameter: _check_int,
    EnumParameter: _check_enum,
    PathParameter: _check_path,
}


def base_directory(settings: Settings, declaration: PathParameter) -> Path:
    """Return the absolute folder a path parameter is confined to."""
    base = declaration.base_dir
    if not base.is_absolute():
        base = settings.data_dir / base
    return base.resolve(strict=False)


def _describe_range(declaration: IntParameter) -> str:
    low, high = declaration.min, declaration.max
    if low is not None and high is not None:
        return f"an integer from {low} to {high}"
    if low is not None:
        return f"an integer of at least {low}"
    if high is not None:
        return f"an integer of at most {high}"
    return "an integer"


def _declared_template(settings: Settings, name: str) -> TemplateSettings:
    template = settings.hpc.templates.get(name)
    if template is None:
        raise TemplateError(
            f"template {name!r} is not declared; declared templates: "
            f"{sorted(settings.hpc.templates)} (add it under [hpc.templates.{name}])"
        )
    return template


def _resolve_executable(template: str, executable: str) -> str:
    # NOTE: the lookup happens on the submitting machine, so a Slurm or HEAppE cluster must
    # install the program at the same absolute path (a shared software folder, for example).
    if os.path.isabs(executable):
        if not os.access(executable, os.X_OK):
            raise TemplateError(
                f"template {template!r}: executable {executable!r} does not exist or is not "
                "executable"
            )
        return executable
    found = shutil.which(executable)
    if found is None:
        raise TemplateError(
            f"template {template!r}: executable {executable!r} is not on PATH; "
            "give its absolute path in the template"
        )
    return found


def _substitute(argument: str, values: Mapping[str, str]) -> str:
    def replacement(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return match.group(0)[0]
        return values[name]

    return TEMPLATE_PLACEHOLDER.sub(replacement, argument)
