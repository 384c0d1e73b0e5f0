"""On-board decoding of replayed frames (`boards.decoding.DecodingSink`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import torch
from torch import nn

from boards.decoding import DecodingSink
from boards.replay.runner import MemorySink
from boards.runtime import DecoderRuntime, InstalledDecoder
from schemas.counts import pack_counts

START = datetime(2012, 7, 18, 10, 0, tzinfo=UTC)


class _SumDecoder(nn.Module):
    """Logits (rest, grasp): grasp wins when the window's counts sum above 4."""

    def forward(self, x: torch.Tensor, _subject: torch.Tensor | None) -> torch.Tensor:
        total = x.sum(dim=(1, 2))  # (batch,)
        return torch.stack([torch.full_like(total, 4.0), total], dim=-1)  # (batch, 2)


def _decoder(version: str = "m1", window: int = 2, channels: int = 2) -> InstalledDecoder:
    return InstalledDecoder(
        model_version=version,
        target="global",
        classes=("rest", "grasp"),
        window=window,
        channels=channels,
        step_ms=50,
        module=_SumDecoder(),
        subject_index=None,
        mean=np.zeros(channels, dtype=np.float32),
        divisor=np.ones(channels, dtype=np.float32),
    )


def _frame(counts: list[list[int]], *, bins_before: int = 0, bin_ms: int = 50) -> dict[str, Any]:
    return {
        "board_id": "board-1",
        "subject_id": "Spike",
        "session_id": "s1",
        "event_time": START + timedelta(milliseconds=bins_before * bin_ms),
        "session_start": START,
        "metadata": {},
        "bin_ms": bin_ms,
        **pack_counts(np.asarray(counts, dtype=np.uint16)),
    }


def _outputs(sink: MemorySink) -> list[dict[str, Any]]:
    return [record for name, record in sink.records if name == "DecoderOutput"]


def test_no_output_before_a_decoder_is_installed() -> None:
    memory = MemorySink()
    decoding = DecodingSink(memory, DecoderRuntime())

    decoding.publish("SpikeFrame", _frame([[1, 1], [1, 1]]))

    assert [name for name, _ in memory.records] == ["SpikeFrame"]
    assert decoding.skipped == {"no decoder installed": 1}


def test_every_step_after_a_full_window_is_decoded() -> None:
    memory = MemorySink()
    runtime = DecoderRuntime()
    runtime.install(_decoder())
    decoding = DecodingSink(memory, runtime)

    decoding.publish("SpikeFrame", _frame([[0, 1], [0, 0], [3, 3]]))  # three 50 ms bins

    outputs = _outputs(memory)
    assert [output["step_index"] for output in outputs] == [1, 2]  # step 0 fills the window
    assert [output["command"] for output in outputs] == ["rest", "grasp"]  # sums 1, then 6
    assert outputs[1]["event_time"] == START + timedelta(milliseconds=100)
    assert abs(sum(outputs[0]["probabilities"]) - 1.0) < 1e-6
    assert outputs[0]["model_version"] == "m1"
    assert outputs[0]["classes"] == ["rest", "grasp"]
    assert decoding.decoded == 2


def test_window_continues_across_frames_and_decoder_swap() -> None:
    memory = MemorySink()
    runtime = DecoderRuntime()
    runtime.install(_decoder("m1"))
    decoding = DecodingSink(memory, runtime)
    decoding.publish("SpikeFrame", _frame([[1, 0]]))

    runtime.install(_decoder("m2"))
    decoding.publish("SpikeFrame", _frame([[1, 0]], bins_before=1))

    (output,) = _outputs(memory)
    assert (output["step_index"], output["model_version"]) == (1, "m2")


def test_frames_of_another_shape_are_skipped() -> None:
    memory = MemorySink()
    runtime = DecoderRuntime()
    runtime.install(_decoder(channels=3))
    decoding = DecodingSink(memory, runtime)

    decoding.publish("SpikeFrame", _frame([[1, 1], [1, 1]]))
    decoding.publish("SpikeFrame", _frame([[1, 1, 1]], bin_ms=1))

    assert _outputs(memory) == []
    assert decoding.skipped == {
        "2 channels, decoder 3": 1,
        "bin width 1 ms, decoder step 50 ms": 1,
    }
