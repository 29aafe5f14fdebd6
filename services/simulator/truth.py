"""Records the true value behind every reply the simulator delivers, so tests can audit a reader."""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from shared.modbus import BROADCAST_SLAVE
from shared.registers import Value

_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TruthRecord:
    """A genuine reply delivered intact: the frame and the values it encodes."""

    wall_time: float
    sim_time: float
    slave: int
    start: int
    words: int
    frame: bytes
    values: dict[str, Value] = field(default_factory=dict)
    request_slave: int | None = None
    exception: int | None = None

    def to_json(self) -> dict[str, Any]:
        """Plain data for the JSON-lines log."""
        return {
            "type": "truth",
            "wall_time": self.wall_time,
            "sim_time": self.sim_time,
            "slave": self.slave,
            "request_slave": self.request_slave,
            "start": self.start,
            "words": self.words,
            "frame": self.frame.hex(),
            "exception": self.exception,
            "values": self.values,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TruthRecord:
        """Inverse of :meth:`to_json`."""
        return cls(
            wall_time=float(data["wall_time"]),
            sim_time=float(data["sim_time"]),
            slave=int(data["slave"]),
            start=int(data["start"]),
            words=int(data["words"]),
            frame=bytes.fromhex(data["frame"]),
            values=dict(data.get("values") or {}),
            request_slave=data.get("request_slave"),
            exception=data.get("exception"),
        )


@dataclass(frozen=True, slots=True)
class FaultRecord:
    """Something the simulator delivered (or withheld) on purpose or by bus collision."""

    kind: str
    wall_time: float
    sim_time: float
    slave: int | None = None
    start: int | None = None
    words: int | None = None
    frame: bytes | None = None
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        """Plain data for the JSON-lines log."""
        return {
            "type": "fault",
            "kind": self.kind,
            "wall_time": self.wall_time,
            "sim_time": self.sim_time,
            "slave": self.slave,
            "start": self.start,
            "words": self.words,
            "frame": None if self.frame is None else self.frame.hex(),
            "detail": self.detail,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FaultRecord:
        """Inverse of :meth:`to_json`."""
        frame = data.get("frame")
        return cls(
            kind=str(data["kind"]),
            wall_time=float(data["wall_time"]),
            sim_time=float(data["sim_time"]),
            slave=data.get("slave"),
            start=data.get("start"),
            words=data.get("words"),
            frame=None if frame is None else bytes.fromhex(frame),
            detail=str(data.get("detail", "")),
        )


def _value_key(value: Value | bool) -> Hashable:
    return tuple(value) if isinstance(value, list) else value


class _Lru:
    """A bounded set that forgets the oldest entries first."""

    __slots__ = ("_items", "_limit")

    def __init__(self, limit: int) -> None:
        self._items: OrderedDict[Hashable, None] = OrderedDict()
        self._limit = limit

    def add(self, key: Hashable) -> None:
        self._items[key] = None
        self._items.move_to_end(key)
        while len(self._items) > self._limit:
            self._items.popitem(last=False)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        self._items.clear()


class TruthRecorder:
    """In-memory (bounded) and optional JSON-lines record of genuine replies and of faults.

    ``enabled`` switches the in-memory record off for long soaks; the log file, when given, is
    written either way and flushed per line so another process can audit it while it grows.
    """

    def __init__(
        self, *, enabled: bool = True, max_records: int = 10_000, log_path: Path | None = None
    ) -> None:
        self.enabled = enabled
        self.max_records = max_records
        self.records: deque[TruthRecord] = deque(maxlen=max_records)
        self.faults: deque[FaultRecord] = deque(maxlen=max_records)
        self.delivered = 0
        self._latest: dict[tuple[int, int], TruthRecord] = {}
        # Frames and field values stay known longer than the record list: they repeat a lot.
        self._frames = _Lru(4 * max_records)
        self._values = _Lru(16 * max_records)
        self.log_path = log_path
        self._log: IO[str] | None = None
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = log_path.open("a", encoding="utf-8")

    def record(self, record: TruthRecord) -> None:
        """Remember a genuine reply that has just been delivered intact."""
        self.delivered += 1
        if self.enabled:
            self.records.append(record)
            self._latest[(record.slave, record.start)] = record
            self._frames.add((record.slave, record.start, record.frame))
            for name, value in record.values.items():
                self._values.add((record.slave, name, _value_key(value)))
        self._write(record.to_json())

    def record_fault(self, fault: FaultRecord) -> None:
        """Remember a fault (never counted as truth)."""
        if self.enabled:
            self.faults.append(fault)
        self._write(fault.to_json())

    def is_genuine(self, slave: int, start: int, frame: bytes | bytearray) -> bool:
        """Was exactly this frame delivered intact as the reply to a read of ``slave`` at ``start``?

        ``slave`` 0xFF (broadcast) matches the id the answering battery put in the frame.
        """
        frame = bytes(frame)
        if slave == BROADCAST_SLAVE and frame:
            slave = frame[0]
        return (slave, start, frame) in self._frames

    def is_true_value(self, slave: int, name: str, value: Value | bool) -> bool:
        """Did any genuine reply of ``slave`` carry ``value`` for field ``name``?"""
        return (slave, name, _value_key(value)) in self._values

    def latest(self, slave: int, start: int) -> TruthRecord | None:
        """The newest genuine reply of ``slave`` to a read starting at ``start``."""
        return self._latest.get((slave, start))

    def for_slave(self, slave: int) -> Iterator[TruthRecord]:
        """Remembered records of one battery, oldest first."""
        return (r for r in self.records if r.slave == slave)

    def clear(self) -> None:
        """Forget everything held in memory."""
        self.records.clear()
        self.faults.clear()
        self._latest.clear()
        self._frames.clear()
        self._values.clear()

    def close(self) -> None:
        """Close the log file."""
        if self._log is not None:
            self._log.close()
            self._log = None

    def _write(self, data: dict[str, Any]) -> None:
        if self._log is None:
            return
        data.setdefault("logged_at", time.time())
        self._log.write(json.dumps(data, separators=(",", ":")) + "\n")
        self._log.flush()

    @classmethod
    def load(cls, path: Path, *, max_records: int = 1_000_000) -> TruthRecorder:
        """Rebuild a recorder from a JSON-lines log (to audit a simulator running in another process)."""
        recorder = cls(enabled=True, max_records=max_records)
        with path.open(encoding="utf-8") as log:
            for line in log:
                if not line.strip():
                    continue
                try:
                    data = json.loads(line)
                except json.JSONDecodeError:
                    _LOGGER.warning("skipping a torn line in %s", path)
                    continue
                if data.get("type") == "truth":
                    recorder.record(TruthRecord.from_json(data))
                elif data.get("type") == "fault":
                    recorder.record_fault(FaultRecord.from_json(data))
        return recorder
