"""On-board decoding of a replay: the installed decoder runs on every model step of the frames
that a board publishes, and its outputs go out as DecoderOutput events beside the frames.

`DecodingSink` wraps the board's publisher as the sink of `boards.replay.replay`. A spike frame
whose bin width equals the decoder's step width and whose channel count equals the decoder's
input adds each of its bins, as one step, to a window of the session's latest steps. Once the
window is full, every new step is decoded with the runtime's active decoder, so a decoder that
the model subscriber swaps in during the replay is used from the next step on. Before the
first install, and for frames of another shape, nothing is decoded; `skipped` counts those
frames by reason.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import numpy as np

from boards.replay.runner import EventSink
from boards.runtime import DecoderRuntime, InstalledDecoder
from schemas.counts import unpack_counts

logger = logging.getLogger(__name__)


@dataclass
class _SessionWindow:
    steps: deque[np.ndarray]  # the latest steps, each (channels,), oldest first
    next_step: int = 0  # index of the next step within the session


@dataclass
class DecodingSink:
    """Replay sink that forwards every record to ``publisher`` and publishes a DecoderOutput
    for every decoded step."""

    publisher: EventSink
    runtime: DecoderRuntime
    decoded: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    _sessions: dict[str, _SessionWindow] = field(default_factory=dict)

    def publish(self, record_name: str, record: dict[str, Any]) -> object:
        result = self.publisher.publish(record_name, record)
        if record_name == "SpikeFrame":
            self._decode(record)
        return result

    def flush(self, timeout_s: float) -> int:
        return self.publisher.flush(timeout_s)

    def _decode(self, frame: Mapping[str, Any]) -> None:
        decoder = self.runtime.active
        if decoder is None:
            self.skipped["no decoder installed"] += 1
            return
        if frame["bin_ms"] != decoder.step_ms:
            self.skipped[f"bin width {frame['bin_ms']} ms, decoder step {decoder.step_ms} ms"] += 1
            return
        if frame["n_channels"] != decoder.channels:
            self.skipped[f"{frame['n_channels']} channels, decoder {decoder.channels}"] += 1
            return
        counts = unpack_counts(frame)  # (bins, channels)
        session = self._sessions.get(frame["session_id"])
        if session is None or session.steps.maxlen != decoder.window:
            # A decoder with another window length starts the window again.
            steps = deque(session.steps if session else (), maxlen=decoder.window)
            session = _SessionWindow(steps, session.next_step if session else 0)
            self._sessions[frame["session_id"]] = session
        for bin_index, step in enumerate(counts):
            session.steps.append(np.asarray(step, dtype=np.float32))
            step_index = session.next_step
            session.next_step += 1
            if len(session.steps) < decoder.window:
                continue
            event_time = frame["event_time"] + timedelta(milliseconds=bin_index * frame["bin_ms"])
            self._publish_output(frame, decoder, np.stack(session.steps), step_index, event_time)

    def _publish_output(
        self,
        frame: Mapping[str, Any],
        decoder: InstalledDecoder,
        window: np.ndarray,
        step_index: int,
        event_time: Any,
    ) -> None:
        probabilities = decoder.probabilities(window)  # (classes,)
        self.publisher.publish(
            "DecoderOutput",
            {
                "board_id": frame["board_id"],
                "subject_id": frame["subject_id"],
                "session_id": frame["session_id"],
                "event_time": event_time,
                "session_start": frame.get("session_start"),
                "metadata": {},
                "step_index": step_index,
                "step_ms": decoder.step_ms,
                "classes": list(decoder.classes),
                "probabilities": [float(value) for value in probabilities],
                "command": decoder.classes[int(np.argmax(probabilities))],
                "model_version": decoder.model_version,
            },
        )
        self.decoded += 1
