"""Replay of real recordings as board events, without Kafka.

``open_recording`` detects a file's kind and reads it into a ``Recording``, whose ``events()``
yields SpikeFrame, BehaviorEvent and EskinFrame records in event-time order. ``replay``
publishes the events of several recordings to any ``EventSink``, as fast as possible or paced
by event time.

Example, with a sink that keeps records in memory::

    from boards.replay import MemorySink, open_recording, replay

    recording = open_recording("Spike_07-18-12_WF_001.mat", board_id="b1", subject_id="s1")
    result = replay([recording], MemorySink(), speed=None)
    print(recording.report.summary(), result.published)
"""

from boards.replay.detect import READERS, detect_kind, open_recording
from boards.replay.errors import RecordingFormatError
from boards.replay.events import (
    DEFAULT_BINS_PER_FRAME,
    UNDATED_START_TIME,
    BoardEvent,
    ReplayOptions,
    ReplayReport,
)
from boards.replay.recording import Recording
from boards.replay.runner import (
    BoardRoutingSink,
    EventSink,
    EventSource,
    MemorySink,
    ReplayResult,
    replay,
)

__all__ = [
    "DEFAULT_BINS_PER_FRAME",
    "READERS",
    "UNDATED_START_TIME",
    "BoardEvent",
    "BoardRoutingSink",
    "EventSink",
    "EventSource",
    "MemorySink",
    "Recording",
    "RecordingFormatError",
    "ReplayOptions",
    "ReplayReport",
    "ReplayResult",
    "detect_kind",
    "open_recording",
    "replay",
]
