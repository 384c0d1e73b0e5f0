"""Tests of the package's public names, imported as users import them."""

from __future__ import annotations

import importlib


def test_package_is_not_test_folder() -> None:
    # pytest's default "prepend" import mode puts tests/ on sys.path, where the folder
    # tests/schemas passes for a namespace package named schemas. A regular package on any
    # other sys.path entry wins over it, so the pytest setting pythonpath = ["."] prevents this.
    package = importlib.import_module("schemas")
    assert package.__file__ is not None
    assert package.__file__.endswith("schemas/__init__.py")


def test_package_exports_public_api() -> None:
    package = importlib.import_module("schemas")
    codec = importlib.import_module("schemas.codec")
    assert package.encode is codec.encode
    assert package.decode is codec.decode
    missing = [name for name in package.__all__ if not hasattr(package, name)]
    assert missing == []
