"""Cluster ids of the embedded broker's storage format."""

from __future__ import annotations

import uuid

import pytest

from infra import broker


def test_cluster_id_never_starts_with_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    # The first UUID encodes to "-" followed by 21 characters, the second to a plain id.
    draws = iter([uuid.UUID(bytes=b"\xf8" + bytes(15)), uuid.UUID(bytes=bytes(16))])
    monkeypatch.setattr(broker.uuid, "uuid4", lambda: next(draws))

    cluster_id = broker._cluster_id()

    assert cluster_id == "A" * 22
    assert not cluster_id.startswith("-")


def test_cluster_id_has_22_characters() -> None:
    assert len(broker._cluster_id()) == 22
