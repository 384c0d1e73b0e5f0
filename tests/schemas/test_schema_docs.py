"""Run the examples in the schemas package's docstrings, so they cannot go stale."""

from __future__ import annotations

import doctest
from types import ModuleType

import pytest

import schemas.codec
import schemas.counts
import schemas.exceptions


@pytest.mark.parametrize("module", [schemas.codec, schemas.counts, schemas.exceptions])
def test_docstring_examples(module: ModuleType) -> None:
    result = doctest.testmod(module)
    assert result.attempted > 0
    assert result.failed == 0
