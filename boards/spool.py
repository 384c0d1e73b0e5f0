"""On-disk spool of a board: an append-only log of encoded events not yet acknowledged by Kafka.

Every event a board publishes is appended here before it is handed to the producer, and the
spool's acknowledged position moves forward only when Kafka confirms delivery. A link outage, a
full producer queue or a restart of the board process therefore loses nothing: what is past the
acknowledged position is sent again, in the original order.

Layout under the spool folder:

- ``<first index>.seg``: segment files of entries ``length (u32) | crc32 (u32) | payload``, where
  the payload is ``topic length (u16) | topic | key length (u16) | key | value``. Entry indexes
  are global and consecutive; a segment name is the index of its first entry.
- ``acked``: the index of the first entry that Kafka has not acknowledged.

A torn entry at the end of the last segment (a crash during a write) fails its CRC check and is
truncated when the spool opens; it was never acknowledged, so its event was never reported as
published.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

logger = logging.getLogger(__name__)

_HEADER = struct.Struct("<II")
_SHORT = struct.Struct("<H")
SEGMENT_SUFFIX = ".seg"
DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024


class SpoolError(RuntimeError):
    """The spool folder is unreadable or corrupt beyond a torn last entry."""


@dataclass(frozen=True)
class SpoolEntry:
    """One spooled event."""

    index: int
    topic: str
    key: bytes
    value: bytes


class Spool:
    """Append-only, crash-safe log of events with an acknowledged position."""

    def __init__(self, directory: Path, *, segment_bytes: int = DEFAULT_SEGMENT_BYTES) -> None:
        self.directory = directory
        self.segment_bytes = segment_bytes
        directory.mkdir(parents=True, exist_ok=True)
        self._acked_file = directory / "acked"
        self._acked = self._read_acked()
        self._segments = self._scan_segments()
        # Byte offset of every entry of each segment, so reads start where they are needed.
        self._positions: dict[int, array[int]] = {}
        self._next_index = self._recover_tail()
        self._writer = self._open_writer()

    @property
    def acked_index(self) -> int:
        """Index of the first entry Kafka has not acknowledged."""
        return self._acked

    @property
    def next_index(self) -> int:
        """Index the next appended entry gets."""
        return self._next_index

    def __len__(self) -> int:
        """Number of entries not yet acknowledged."""
        return self._next_index - self._acked

    def append(self, topic: str, key: bytes, value: bytes) -> int:
        """Append one event and return its index."""
        topic_bytes = topic.encode()
        payload = b"".join(
            (_SHORT.pack(len(topic_bytes)), topic_bytes, _SHORT.pack(len(key)), key, value)
        )
        if self._writer.tell() >= self.segment_bytes:
            self._roll()
        segment_start = max(self._segments)
        self._positions.setdefault(segment_start, array("Q")).append(self._writer.tell())
        # One unbuffered write per entry: a killed process loses no entry it returned from.
        self._writer.write(_HEADER.pack(len(payload), zlib.crc32(payload)) + payload)
        index = self._next_index
        self._next_index += 1
        return index

    def sync(self) -> None:
        """Force appended entries to disk (they already survive a crash of this process)."""
        os.fsync(self._writer.fileno())

    def ack(self, index: int) -> None:
        """Record that every entry below ``index`` is acknowledged; drop finished segments."""
        if index <= self._acked:
            return
        if index > self._next_index:
            raise SpoolError(
                f"cannot acknowledge spool entry {index} in {self.directory}: only "
                f"{self._next_index} entries were appended"
            )
        self._acked = index
        temporary = self._acked_file.with_suffix(".tmp")
        temporary.write_text(f"{index}\n")
        os.replace(temporary, self._acked_file)
        self._drop_acked_segments()

    def pending(self, start: int | None = None, limit: int | None = None) -> Iterator[SpoolEntry]:
        """Yield up to ``limit`` entries from ``start`` (default: the acknowledged position)."""
        first = max(self._acked if start is None else start, self._acked)
        remaining = self._next_index - first if limit is None else limit
        for segment_start, path in self._segment_list():
            if remaining <= 0:
                return
            end = self._segment_end(segment_start)
            if end <= first:
                continue
            offsets = self._segment_positions(segment_start, path)
            skip = max(0, first - segment_start)
            count = min(remaining, end - segment_start - skip)
            with path.open("rb") as handle:
                handle.seek(offsets[skip])
                for position in range(skip, skip + count):
                    yield self._read_entry(handle, segment_start + position, path)
            remaining -= count

    def close(self) -> None:
        """Flush and close the current segment."""
        if not self._writer.closed:
            self.sync()
            self._writer.close()

    # Internal steps.

    def _read_acked(self) -> int:
        try:
            return int(self._acked_file.read_text().strip())
        except FileNotFoundError:
            return 0
        except ValueError as exc:
            raise SpoolError(
                f"spool position file {self._acked_file} is corrupt; expected one integer"
            ) from exc

    def _scan_segments(self) -> dict[int, Path]:
        segments = {}
        for path in self.directory.glob(f"*{SEGMENT_SUFFIX}"):
            try:
                segments[int(path.stem)] = path
            except ValueError as exc:
                raise SpoolError(f"unexpected file {path} in spool {self.directory}") from exc
        return segments

    def _segment_list(self) -> list[tuple[int, Path]]:
        return sorted(self._segments.items())

    def _segment_end(self, segment_start: int) -> int:
        later = [start for start in self._segments if start > segment_start]
        return min(later) if later else self._next_index

    def _recover_tail(self) -> int:
        if not self._segments:
            return self._acked
        last_start, last_path = self._segment_list()[-1]
        data = last_path.read_bytes()
        offsets = array("Q")
        valid_bytes = 0
        for _, end in _entries(data):
            offsets.append(valid_bytes)
            valid_bytes = end
        count = len(offsets)
        self._positions[last_start] = offsets
        if valid_bytes < len(data):
            logger.warning(
                "truncating a torn entry of %d bytes at the end of spool segment %s",
                len(data) - valid_bytes,
                last_path,
            )
            with last_path.open("r+b") as handle:
                handle.truncate(valid_bytes)
        return last_start + count

    def _open_writer(self) -> BinaryIO:
        if not self._segments:
            path = self.directory / f"{self._next_index:020d}{SEGMENT_SUFFIX}"
            self._segments[self._next_index] = path
        _, path = self._segment_list()[-1]
        return path.open("ab", buffering=0)

    def _roll(self) -> None:
        self.sync()
        self._writer.close()
        path = self.directory / f"{self._next_index:020d}{SEGMENT_SUFFIX}"
        self._segments[self._next_index] = path
        self._writer = path.open("ab", buffering=0)

    def _drop_acked_segments(self) -> None:
        starts = sorted(self._segments)
        for start, following in zip(starts, starts[1:], strict=False):
            if following <= self._acked:
                self._segments.pop(start).unlink(missing_ok=True)
                self._positions.pop(start, None)

    def _segment_positions(self, segment_start: int, path: Path) -> array[int]:
        if segment_start not in self._positions:
            data = path.read_bytes()
            offsets = array("Q")
            position = 0
            for _, end in _entries(data):
                offsets.append(position)
                position = end
            if position < len(data):
                raise SpoolError(
                    f"spool segment {path} is corrupt at byte {position} of {len(data)}; "
                    "entries after it cannot be read"
                )
            self._positions[segment_start] = offsets
        return self._positions[segment_start]

    @staticmethod
    def _read_entry(handle: BinaryIO, index: int, path: Path) -> SpoolEntry:
        header = handle.read(_HEADER.size)
        length, checksum = _HEADER.unpack(header)
        payload = handle.read(length)
        if len(payload) != length or zlib.crc32(payload) != checksum:
            raise SpoolError(f"spool entry {index} in {path} is corrupt")
        topic_length = _SHORT.unpack_from(payload, 0)[0]
        topic = payload[2 : 2 + topic_length].decode()
        key_start = 2 + topic_length
        key_length = _SHORT.unpack_from(payload, key_start)[0]
        key = payload[key_start + 2 : key_start + 2 + key_length]
        value = payload[key_start + 2 + key_length :]
        return SpoolEntry(index, topic, key, value)


def _entries(data: bytes) -> Iterator[tuple[bytes, int]]:
    """Yield (payload, end offset) of each complete, intact entry of a segment."""
    position = 0
    while position + _HEADER.size <= len(data):
        length, checksum = _HEADER.unpack_from(data, position)
        start = position + _HEADER.size
        end = start + length
        if end > len(data):
            return
        payload = data[start:end]
        if zlib.crc32(payload) != checksum:
            return
        yield payload, end
        position = end
