"""Run the docstring examples of the model signing, gate and announcement modules."""

from __future__ import annotations

import doctest
from types import ModuleType

import pytest

import schemas.artifacts
import training.announce
import training.gate


@pytest.mark.parametrize("module", [schemas.artifacts, training.gate, training.announce])
def test_docstring_examples(module: ModuleType) -> None:
    result = doctest.testmod(module)
    assert result.attempted > 0
    assert result.failed == 0
