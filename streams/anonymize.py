"""Anonymization of validated raw events into their ``anon.*`` counterparts.

- Subject, board and session ids become keyed pseudonyms: the first 20 hex digits (80 bits)
  of an HMAC-SHA256 with a secret key. Each kind of id has its own domain, so one string used
  as a subject id and as a board id gets two unrelated pseudonyms. The key id travels in its
  own field, so keys can be rotated.
- Metadata entries are kept, pseudonymized, shifted or dropped by a declared policy. A field
  that the policy does not name is dropped.
- The absolute event time becomes ``t_session_us``, microseconds since the session start, and
  ``session_day``, the day of the session start shifted by a secret offset per subject. The
  offset is the same for every session of a subject, so the order of days and the gaps
  between them survive, while the real dates do not. The session start is the raw record's
  ``session_start`` where the board sends one, else the first event time of the session that
  the `SessionClock` saw.

The payload (spike counts, pressures, probabilities and so on) passes unchanged.

NOTE: free-text payload fields (``label``, ``command``, ``model_version``, ``classes``,
``channel_ids``) are copied as they are. A board must not put identifiers into them.

>>> from datetime import UTC, datetime
>>> anonymizer = Anonymizer(Pseudonymizer(b"k" * 32, "k1"))
>>> name, anon = anonymizer.anonymize("BehaviorEvent", {
...     "board_id": "rig-2", "subject_id": "Jango", "session_id": "2014-12-03", "seq": 5,
...     "event_time": datetime(2014, 12, 3, 16, 30, tzinfo=UTC), "schema_version": 1,
...     "metadata": {"source_file": "Jango_20141203.mat", "task": "wrist_force"},
...     "kind": "go_cue", "trial_id": 1, "label": None, "value": None})
>>> name, anon["t_session_us"], anon["metadata"], anon["key_id"]
('AnonBehaviorEvent', 0, {'task': 'wrist_force'}, 'k1')
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import stat
from collections import Counter, OrderedDict
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, NoReturn

from bcratos.config import AnonymizationSettings
from streams.exceptions import (
    AnonymizationError,
    AnonymizationKeyError,
    MetadataPolicyError,
    StateError,
)

logger = logging.getLogger(__name__)

MIN_KEY_BYTES: Final = 16
PSEUDONYM_HEX_CHARS: Final = 20  # 80 bits of the HMAC-SHA256 digest
MAX_DAY_OFFSET: Final = 3650  # the secret day offset of a subject lies in [-3650, +3650]
SESSION_CLOCK_FORMAT_VERSION: Final = 1

KEY_ENV: Final = "BCRATOS_ANONYMIZATION__KEY"
KEY_FILE_ENV: Final = "BCRATOS_ANONYMIZATION__KEY_FILE"
KEY_ID_ENV: Final = "BCRATOS_ANONYMIZATION__KEY_ID"

_KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_SCHEME: Final = b"bcratos-pseudonym-v1"
_PSEUDONYM_CACHE_SIZE: Final = 65_536

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US: Final = timedelta(microseconds=1)
_US_PER_DAY: Final = 86_400_000_000


# ---------------------------------------------------------------------------------------------
# Keys and pseudonyms


class Pseudonymizer:
    """Keyed pseudonyms of subject, board and session ids, and the day offset of a subject.

    The key is kept only inside an HMAC object. `repr` and `str` show the key id alone, and
    pickling raises `TypeError`.
    """

    __slots__ = ("_key_id", "_hmac", "_cache")

    def __init__(self, key: bytes, key_id: str) -> None:
        """Raise `AnonymizationKeyError` for a key under 16 bytes or an invalid key id."""
        if len(key) < MIN_KEY_BYTES:
            raise AnonymizationKeyError(
                f"pseudonymization key too short: expected at least {MIN_KEY_BYTES} bytes, "
                f"received {len(key)} bytes"
            )
        _check_key_id(key_id)
        self._key_id = key_id
        self._hmac = hmac.new(key, digestmod=hashlib.sha256)
        # NOTE: the cache maps raw ids to pseudonyms in memory, which is why it is never exported.
        self._cache: dict[tuple[str, ...], bytes] = {}

    @property
    def key_id(self) -> str:
        """Identifier of the key, stored beside every pseudonym."""
        return self._key_id

    def subject(self, subject_id: str) -> str:
        """Return the pseudonym of a subject id."""
        return self._digest("subject", subject_id).hex()[:PSEUDONYM_HEX_CHARS]

    def board(self, board_id: str) -> str:
        """Return the pseudonym of a board id."""
        return self._digest("board", board_id).hex()[:PSEUDONYM_HEX_CHARS]

    def session(self, subject_id: str, session_id: str) -> str:
        """Return the pseudonym of a session of a subject.

        The subject id takes part because session ids such as ``2024-05-02-am`` are often
        reused across subjects. Events of one session from several boards share a pseudonym.
        """
        return self._digest("session", subject_id, session_id).hex()[:PSEUDONYM_HEX_CHARS]

    def metadata_value(self, field: str, value: str) -> str:
        """Return the pseudonym of a metadata value, in a separate domain for each field."""
        return self._digest("metadata", field, value).hex()[:PSEUDONYM_HEX_CHARS]

    def day_offset(self, subject_id: str) -> int:
        """Return the secret day offset of a subject, from -3650 to +3650 days."""
        digest = self._digest("day_offset", subject_id)
        span = 2 * MAX_DAY_OFFSET + 1
        return int.from_bytes(digest[:8], "big") % span - MAX_DAY_OFFSET

    def __repr__(self) -> str:
        return f"Pseudonymizer(key_id={self._key_id!r})"

    def __reduce__(self) -> NoReturn:
        raise TypeError(
            "a Pseudonymizer cannot be pickled because it contains the pseudonymization key; "
            "create one in each process with load_key"
        )

    def _digest(self, *parts: str) -> bytes:
        cached = self._cache.get(parts)
        if cached is not None:
            return cached

        # Length prefixes keep ("ab", "c") and ("a", "bc") apart.
        message = bytearray(_SCHEME)
        for part in parts:
            encoded = part.encode("utf-8")
            message += len(encoded).to_bytes(4, "big")
            message += encoded
        mac = self._hmac.copy()
        mac.update(message)
        digest = mac.digest()

        if len(self._cache) >= _PSEUDONYM_CACHE_SIZE:
            self._cache.clear()
        self._cache[parts] = digest
        return digest


def load_key(settings: AnonymizationSettings) -> tuple[bytes, str]:
    """Return the pseudonymization key and key id from the ``anonymization`` settings.

    The key is the UTF-8 bytes of ``key`` or the bytes of ``key_file``, without one trailing
    newline. Exactly one of the two must be set. Raises `AnonymizationKeyError`, naming the
    setting, for a missing, ambiguous, empty, short or unreadable key and for an invalid key
    id. The message never contains the key.
    """
    if settings.key is not None and settings.key_file is not None:
        raise AnonymizationKeyError(
            f"both {KEY_ENV} (anonymization.key) and {KEY_FILE_ENV} (anonymization.key_file) "
            "are set: expected exactly one; prefer the key file"
        )

    if settings.key is not None:
        source = f"{KEY_ENV} (anonymization.key)"
        key = settings.key.get_secret_value().encode("utf-8")
    elif settings.key_file is not None:
        source = f"{KEY_FILE_ENV}={settings.key_file} (anonymization.key_file)"
        key = _read_key_file(settings.key_file, source)
    else:
        raise AnonymizationKeyError(
            f"missing pseudonymization key: set {KEY_FILE_ENV} (anonymization.key_file) to a "
            f"file of at least {MIN_KEY_BYTES} random bytes, for example one written by "
            f"`head -c 32 /dev/urandom`, or set {KEY_ENV} (anonymization.key)"
        )

    if not key:
        raise AnonymizationKeyError(
            f"empty pseudonymization key in {source}: expected at least {MIN_KEY_BYTES} bytes"
        )
    if len(key) < MIN_KEY_BYTES:
        raise AnonymizationKeyError(
            f"pseudonymization key in {source} is too short: expected at least "
            f"{MIN_KEY_BYTES} bytes, received {len(key)} bytes"
        )
    _check_key_id(settings.key_id)
    return key, settings.key_id


def _read_key_file(path: Path, source: str) -> bytes:
    try:
        key = path.read_bytes()
        mode = path.stat().st_mode
    except OSError as exc:
        raise AnonymizationKeyError(
            f"cannot read the pseudonymization key file {source}: {exc.strerror or exc}; "
            "expected a readable file holding the key"
        ) from exc

    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning(
            "pseudonymization key file %s is accessible to group or others (mode %o); "
            "restrict it with chmod 600",
            path,
            stat.S_IMODE(mode),
        )
    if key.endswith(b"\n"):
        key = key[:-2] if key.endswith(b"\r\n") else key[:-1]
    return key


def _check_key_id(key_id: str) -> None:
    if not _KEY_ID.fullmatch(key_id):
        raise AnonymizationKeyError(
            f"invalid key id in {KEY_ID_ENV} (anonymization.key_id): expected 1 to 64 "
            f"characters from A-Z, a-z, 0-9, '.', '_' and '-', received {key_id!r}"
        )


# ---------------------------------------------------------------------------------------------
# Metadata policy


class FieldAction(StrEnum):
    """Action of the anonymizer on one metadata entry."""

    KEEP = "keep"  # copied unchanged
    PSEUDONYMIZE = "pseudonymize"  # replaced by a keyed pseudonym of the value
    SHIFT = "shift"  # an ISO 8601 date or date-time, replaced by its shifted day number
    DROP = "drop"  # left out


_KEEP = FieldAction.KEEP
_PSEUDONYMIZE = FieldAction.PSEUDONYMIZE
_SHIFT = FieldAction.SHIFT
_DROP = FieldAction.DROP

DEFAULT_METADATA_POLICY: Final[Mapping[str, FieldAction]] = MappingProxyType(
    {
        # Entries written by the recording replay readers (boards.replay).
        "source_kind": _KEEP,  # reader name, such as limblab_binned
        "source_struct": _KEEP,  # MATLAB struct name, binnedData or train_data
        "source_file": _DROP,  # file name, with the animal's name and the recording date
        "source_folder": _DROP,  # folder name of a multi-file dataset
        "mat_header": _DROP,  # MATLAB header text, with the file creation date and platform
        "copyright": _KEEP,  # the iCub grasp dataset may be shared only with its notice intact
        "meta.filename": _DROP,  # original path, naming the operator's desktop folder
        "meta.datetime": _DROP,  # recording start in local time, which event times carry shifted
        "meta.duration": _KEEP,  # recording length in seconds
        "meta.lab": _DROP,  # recording rig number of the lab
        "meta.bdf_info": _DROP,  # converter version text with its date
        "nev.file_type": _KEEP,  # NEURALEV or BREVENTS
        "nev.spec": _KEEP,  # NEV specification version
        "nev.timestamp_resolution_hz": _KEEP,
        "nev.application": _KEEP,  # program that wrote the NEV file
        "nev.time_origin": _SHIFT,  # recording start, ISO 8601
        "nev.comment": _DROP,  # free text
        # Entries that boards commonly send.
        "task": _KEEP,
        "species": _KEEP,
        "array": _KEEP,  # electrode array model
        "channel_map": _KEEP,
        "site": _PSEUDONYMIZE,  # recording site: linkable across sessions, not readable
        "recording_start": _SHIFT,
        "file_name": _DROP,
        "operator": _DROP,
        "implant_serial": _DROP,
        "notes": _DROP,
    }
)
"""Declared action of each known metadata field. Every other field is dropped."""


class MetadataPolicy:
    """Action of each metadata field: the declared defaults with optional overrides.

    ``overrides`` is a table such as ``{"notes": "keep", "rig": "pseudonymize"}``, for example
    one read from TOML. A field that neither names is dropped.
    """

    def __init__(
        self,
        overrides: Mapping[str, str] | None = None,
        *,
        declared: Mapping[str, FieldAction] = DEFAULT_METADATA_POLICY,
    ) -> None:
        """Raise `MetadataPolicyError` for an override that names no `FieldAction`."""
        actions = dict(declared)
        for name, action in (overrides or {}).items():
            actions[name] = _parse_action(name, action)
        self.actions: Mapping[str, FieldAction] = MappingProxyType(actions)

    def action_for(self, field: str) -> FieldAction:
        """Return the action of `field`, `FieldAction.DROP` for a field the policy lacks."""
        return self.actions.get(field, FieldAction.DROP)

    def __repr__(self) -> str:
        return f"MetadataPolicy({dict(self.actions)!r})"


def _parse_action(field: str, action: Any) -> FieldAction:
    try:
        return FieldAction(action)
    except ValueError:
        raise MetadataPolicyError(
            f"invalid action for metadata field {field!r}: expected one of "
            f"{', '.join(FieldAction)}, received {action!r}"
        ) from None


def shifted_day(value: str, day_offset: int) -> int | None:
    """Return the day number of an ISO 8601 date or date-time, plus `day_offset`.

    The day number counts days since 1970-01-01 in UTC, and a date-time without a time zone
    counts as UTC. Returns None for a value that is not ISO 8601.
    """
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        try:
            day = date.fromisoformat(value)
        except ValueError:
            return None
        return day.toordinal() - _EPOCH.date().toordinal() + day_offset
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _ONE_US // _US_PER_DAY + day_offset


# ---------------------------------------------------------------------------------------------
# Session clock


class SessionClock:
    """Start time of each session: the board's declared start, or the first event seen.

    Sessions are keyed by their pseudonym, so the state contains no raw identifier. The clock
    keeps the `max_sessions` sessions used most recently and drops older ones.

    NOTE: without a declared start, the start is the first event seen, not the earliest. All
    record types of such a session must share one clock, or spike frames and behaviour events
    of one session get different origins. `max_sessions` is a guess at the number of sessions
    active at once.
    """

    def __init__(self, *, max_sessions: int = 65_536) -> None:
        """Create an empty clock that keeps at most `max_sessions` sessions."""
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be >= 1, received {max_sessions!r}")
        self.max_sessions = max_sessions
        self._starts_us: OrderedDict[str, int] = OrderedDict()

    def start_us(self, session: str, event_time_us: int) -> int:
        """Return the start of `session` in microseconds since the Unix epoch.

        The first call for a session records `event_time_us` as its start.
        """
        start = self._starts_us.get(session)
        if start is not None:
            self._starts_us.move_to_end(session)
            return start

        self._starts_us[session] = event_time_us
        if len(self._starts_us) > self.max_sessions:
            self._starts_us.popitem(last=False)
        return event_time_us

    def declare_start(self, session: str, start_us: int) -> None:
        """Record `start_us` as the start of `session`, replacing a start seen before.

        A board that sends ``session_start`` declares the start. Later events of the session
        without one then share its origin.
        """
        self._starts_us[session] = start_us
        self._starts_us.move_to_end(session)
        if len(self._starts_us) > self.max_sessions:
            self._starts_us.popitem(last=False)

    def export_state(self) -> dict[str, Any]:
        """Return the session starts as plain dicts and ints, least recently used first."""
        return {"version": SESSION_CLOCK_FORMAT_VERSION, "sessions": dict(self._starts_us)}

    def import_state(self, state: Mapping[str, Any]) -> None:
        """Replace the session starts with `export_state` output.

        Raises `StateError` for a malformed state or another format version.
        """
        version = state.get("version")
        if version != SESSION_CLOCK_FORMAT_VERSION:
            raise StateError(
                f"unsupported session clock state version: expected "
                f"{SESSION_CLOCK_FORMAT_VERSION}, received {version!r}"
            )
        sessions = state.get("sessions", {})
        if not isinstance(sessions, Mapping):
            raise StateError(
                "malformed session clock state at sessions: expected a mapping, "
                f"received {type(sessions).__name__}"
            )
        starts: OrderedDict[str, int] = OrderedDict()
        for session, start in sessions.items():
            if isinstance(start, bool) or not isinstance(start, int):
                raise StateError(
                    f"malformed session clock state at sessions.{session}: expected "
                    f"microseconds since the Unix epoch, received {start!r}"
                )
            starts[str(session)] = start
        while len(starts) > self.max_sessions:
            starts.popitem(last=False)
        self._starts_us = starts

    def __len__(self) -> int:
        return len(self._starts_us)


# ---------------------------------------------------------------------------------------------
# Records

ANON_RECORD_NAMES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "SpikeFrame": "AnonSpikeFrame",
        "BehaviorEvent": "AnonBehaviorEvent",
        "EskinFrame": "AnonEskinFrame",
        "DecoderOutput": "AnonDecoderOutput",
    }
)
"""Anonymized record name of each raw record name."""

# Raw fields that the anonymizer replaces. `seq` is copied, `schema_version` is set again by
# the codec for the anonymized schema.
_COMMON_FIELDS: Final = frozenset(
    {
        "board_id",
        "subject_id",
        "session_id",
        "seq",
        "event_time",
        "session_start",
        "schema_version",
        "metadata",
    }
)

PAYLOAD_FIELDS: Final[Mapping[str, frozenset[str]]] = MappingProxyType(
    {
        "SpikeFrame": frozenset(
            {"bin_ms", "n_bins", "n_channels", "dtype", "counts", "channel_ids", "threshold_rms"}
        ),
        "BehaviorEvent": frozenset({"kind", "trial_id", "label", "value"}),
        "EskinFrame": frozenset(
            {
                "n_taxels",
                "pressures",
                "pressure_unit",
                "contact_centroid",
                "total_force_n",
                "joint_positions",
                "label",
            }
        ),
        "DecoderOutput": frozenset(
            {"step_index", "step_ms", "classes", "probabilities", "command", "model_version"}
        ),
    }
)
"""Raw fields of each record copied unchanged. A raw field that is in neither set is an error,
so a field added to a raw schema cannot reach the anonymized topics before it is declared."""


class Anonymizer:
    """Converter of raw board events into anonymized records for the ``anon.*`` topics."""

    def __init__(
        self,
        pseudonymizer: Pseudonymizer,
        policy: MetadataPolicy | None = None,
        clock: SessionClock | None = None,
    ) -> None:
        """Create an anonymizer; the policy defaults to `DEFAULT_METADATA_POLICY` alone."""
        self.pseudonymizer = pseudonymizer
        self.policy = policy if policy is not None else MetadataPolicy()
        self.clock = clock if clock is not None else SessionClock()
        self.counters: Counter[str] = Counter()  # metadata entries by what happened to them
        self._undeclared_logged: set[str] = set()

    def anonymize(self, record_name: str, record: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        """Return the anonymized record name and record of one raw event.

        Steps: 1. find the anonymized record and check the raw fields, 2. pseudonymize the
        ids, 3. replace the event time by session time and shifted day, 4. apply the metadata
        policy, 5. copy the payload. Raises `AnonymizationError` for a record name without an
        anonymized counterpart, a field that is not declared and a naive event or session
        start time.
        """
        # 1. Record name and fields.
        anon_name = ANON_RECORD_NAMES.get(record_name)
        if anon_name is None:
            raise AnonymizationError(
                f"no anonymized record for {record_name!r}: expected one of "
                f"{', '.join(ANON_RECORD_NAMES)}"
            )
        payload_fields = PAYLOAD_FIELDS[record_name]
        undeclared = record.keys() - _COMMON_FIELDS - payload_fields
        if undeclared:
            raise AnonymizationError(
                f"{record_name} has fields that the anonymizer does not declare: "
                f"{sorted(undeclared)}; add each to PAYLOAD_FIELDS or drop it before anonymizing"
            )

        # 2. Pseudonyms.
        pseudonymizer = self.pseudonymizer
        subject_id = record["subject_id"]
        session = pseudonymizer.session(subject_id, record["session_id"])
        day_offset = pseudonymizer.day_offset(subject_id)

        # 3. Session time and day.
        event_time_us = _epoch_us(record["event_time"], record_name, "event_time")
        declared_start = record.get("session_start")
        if declared_start is None:
            start_us = self.clock.start_us(session, event_time_us)
        else:
            start_us = _epoch_us(declared_start, record_name, "session_start")
            self.clock.declare_start(session, start_us)
        anon: dict[str, Any] = {
            "subject_pseudonym": pseudonymizer.subject(subject_id),
            "board_pseudonym": pseudonymizer.board(record["board_id"]),
            "session_pseudonym": session,
            "key_id": pseudonymizer.key_id,
            "seq": record["seq"],
            "session_day": start_us // _US_PER_DAY + day_offset,
            "t_session_us": event_time_us - start_us,
        }

        # 4. Metadata.
        anon["metadata"] = self._apply_policy(record.get("metadata") or {}, day_offset)

        # 5. Payload.
        for name in payload_fields:
            if name in record:
                anon[name] = record[name]
        return anon_name, anon

    def _apply_policy(self, metadata: Mapping[str, str], day_offset: int) -> dict[str, str]:
        result: dict[str, str] = {}
        for name, value in metadata.items():
            action = self.policy.action_for(name)
            if action is FieldAction.KEEP:
                result[name] = value
            elif action is FieldAction.PSEUDONYMIZE:
                result[name] = self.pseudonymizer.metadata_value(name, value)
            elif action is FieldAction.SHIFT:
                day = shifted_day(value, day_offset)
                if day is None:
                    self.counters["metadata_shift_unparsed"] += 1
                else:
                    result[name] = str(day)
            else:
                self._count_dropped(name)
        return result

    def _count_dropped(self, name: str) -> None:
        if name in self.policy.actions:
            self.counters["metadata_dropped"] += 1
            return
        self.counters["metadata_undeclared"] += 1
        # Log each undeclared field name once. Names, unlike values, are not identifying.
        if name not in self._undeclared_logged and len(self._undeclared_logged) < 100:
            self._undeclared_logged.add(name)
            logger.warning(
                "metadata field %r has no declared policy and is dropped; declare it in the "
                "anonymization metadata policy to keep it",
                name,
            )


def _epoch_us(moment: datetime | int, record_name: str, field: str) -> int:
    """Return an aware datetime or an integer of microseconds as microseconds since the epoch."""
    if isinstance(moment, datetime):
        if moment.utcoffset() is None:
            raise AnonymizationError(
                f"{record_name} {field} is a naive datetime: expected an aware UTC datetime "
                "or microseconds since the Unix epoch"
            )
        return (moment - _EPOCH) // _ONE_US
    return int(moment)
