from pathlib import Path

import pytest

from boards.spool import Spool, SpoolError


def _fill(spool: Spool, count: int, start: int = 0) -> None:
    for number in range(start, start + count):
        spool.append("bcratos.raw.spikes", b"board-1", f"event-{number}".encode())


def test_entries_read_back_in_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    _fill(spool, 5)
    values = [entry.value for entry in spool.pending()]
    assert values == [f"event-{n}".encode() for n in range(5)]
    assert [entry.index for entry in spool.pending()] == list(range(5))
    assert {entry.topic for entry in spool.pending()} == {"bcratos.raw.spikes"}
    assert {entry.key for entry in spool.pending()} == {b"board-1"}


def test_ack_hides_entries_and_persists(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    _fill(spool, 10)
    spool.ack(4)
    assert len(spool) == 6
    spool.close()

    reopened = Spool(tmp_path)
    assert reopened.acked_index == 4
    assert reopened.next_index == 10
    assert [entry.value for entry in reopened.pending()][0] == b"event-4"


def test_pending_from_start_with_limit(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_bytes=64)
    _fill(spool, 30)
    window = list(spool.pending(12, limit=7))
    assert [entry.index for entry in window] == list(range(12, 19))
    assert window[0].value == b"event-12"


def test_segments_roll_and_drop(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_bytes=64)
    _fill(spool, 30)
    segments_before = len(list(tmp_path.glob("*.seg")))
    assert segments_before > 3
    spool.ack(25)
    assert len(list(tmp_path.glob("*.seg"))) < segments_before
    assert [entry.index for entry in spool.pending()] == list(range(25, 30))


def test_torn_tail_truncated(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    _fill(spool, 3)
    spool.close()
    segment = next(tmp_path.glob("*.seg"))
    with segment.open("ab") as handle:
        handle.write(b"\x20\x00\x00\x00\x01\x02")  # header of an entry whose body never arrived

    reopened = Spool(tmp_path)
    assert reopened.next_index == 3
    reopened.append("t", b"k", b"after")
    assert [entry.value for entry in reopened.pending()][-1] == b"after"


def test_restart_continues_indexes(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    _fill(spool, 3)
    spool.close()
    reopened = Spool(tmp_path)
    assert reopened.append("t", b"k", b"v") == 3


def test_ack_beyond_end_rejected(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    _fill(spool, 2)
    with pytest.raises(SpoolError, match="only 2 entries"):
        spool.ack(5)


def test_corrupt_middle_segment_rejected(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_bytes=64)
    _fill(spool, 20)
    spool.close()
    first = sorted(tmp_path.glob("*.seg"))[0]
    data = bytearray(first.read_bytes())
    data[10] ^= 0xFF
    first.write_bytes(bytes(data))
    with pytest.raises(SpoolError, match="corrupt"):
        list(Spool(tmp_path, segment_bytes=64).pending())
