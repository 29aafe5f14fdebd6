"""Seedable, rate-controlled fault injection for requests and connection attempts."""

from __future__ import annotations

import logging
import random
from collections import Counter, deque
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

_LOGGER = logging.getLogger(__name__)


class FaultKind(StrEnum):
    """Everything the simulator can break on purpose."""

    # request level: applied to the reply of one Modbus request
    BAD_CRC = "bad_crc"
    TRUNCATED = "truncated"
    DROPPED = "dropped"
    LATE = "late"
    WRONG_SLAVE = "wrong_slave"
    EXCEPTION = "exception"
    GARBAGE = "garbage"
    DISCONNECT = "disconnect"
    # connection level: applied in connect() / start_notify()
    CONNECT_FAIL = "connect_fail"
    HANG = "hang"
    ADAPTER_GONE = "adapter_gone"


REQUEST_FAULTS: Final = frozenset(
    {
        FaultKind.BAD_CRC,
        FaultKind.TRUNCATED,
        FaultKind.DROPPED,
        FaultKind.LATE,
        FaultKind.WRONG_SLAVE,
        FaultKind.EXCEPTION,
        FaultKind.GARBAGE,
        FaultKind.DISCONNECT,
    }
)
CONNECT_FAULTS: Final = frozenset({FaultKind.CONNECT_FAIL, FaultKind.HANG, FaultKind.ADAPTER_GONE})
ALL_FAULT_KINDS: Final = REQUEST_FAULTS | CONNECT_FAULTS

# Where a connection-level fault strikes and how it looks.
HANG_IN_CONNECT: Final = "connect"
HANG_IN_START_NOTIFY: Final = "start_notify"
ADAPTER_NO_DBUS: Final = "no_dbus"
ADAPTER_NO_BLUEZ: Final = "no_bluez"
_VARIANTS: Final[dict[FaultKind, tuple[str, ...]]] = {
    FaultKind.HANG: (HANG_IN_CONNECT, HANG_IN_START_NOTIFY),
    FaultKind.ADAPTER_GONE: (ADAPTER_NO_DBUS, ADAPTER_NO_BLUEZ),
}


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault decision; ``variant`` picks the flavour of hang and adapter_gone."""

    kind: FaultKind
    variant: str = ""


class FaultInjector:
    """Decides which request or connection attempt fails, randomly at ``rate`` or as queued by tests.

    ``rate`` and ``kinds`` may be changed at run time. Request faults are drawn only for requests
    that would be answered, so a queued fault is never wasted on a silent slave id.
    """

    def __init__(
        self, rate: float = 0.0, kinds: frozenset[FaultKind] = ALL_FAULT_KINDS, seed: int = 0
    ) -> None:
        self.rate = rate
        self.kinds = frozenset(FaultKind(k) for k in kinds)
        self.rng = random.Random(f"{seed}:faults")
        self.counts: Counter[FaultKind] = Counter()
        self._forced_request: deque[Fault] = deque()
        self._forced_connect: deque[Fault] = deque()

    def inject_next(self, kind: FaultKind | str, count: int = 1, *, variant: str | None = None) -> None:
        """Hit the next ``count`` answered requests (or connect attempts) with ``kind``."""
        fault_kind = FaultKind(kind)
        allowed = _VARIANTS.get(fault_kind, ("",))
        chosen = allowed[0] if variant is None else variant
        if chosen not in allowed:
            raise ValueError(f"variant {variant!r} not one of {allowed} for {fault_kind}")
        queue = self._forced_request if fault_kind in REQUEST_FAULTS else self._forced_connect
        queue.extend(Fault(fault_kind, chosen) for _ in range(count))

    @property
    def pending(self) -> int:
        """Queued faults not yet applied."""
        return len(self._forced_request) + len(self._forced_connect)

    def clear(self) -> None:
        """Forget queued faults (counts are kept)."""
        self._forced_request.clear()
        self._forced_connect.clear()

    def next_request_fault(self) -> Fault | None:
        """The fault for the request being answered now, if any."""
        return self._draw(self._forced_request, REQUEST_FAULTS)

    def next_connect_fault(self) -> Fault | None:
        """The fault for the connection attempt starting now, if any."""
        return self._draw(self._forced_connect, CONNECT_FAULTS)

    def _draw(self, forced: deque[Fault], level: frozenset[FaultKind]) -> Fault | None:
        if forced:
            fault = forced.popleft()
        else:
            enabled = sorted(self.kinds & level)
            if not enabled or self.rate <= 0.0 or self.rng.random() >= self.rate:
                return None
            kind = self.rng.choice(enabled)
            variants = _VARIANTS.get(kind, ("",))
            fault = Fault(kind, self.rng.choice(variants))
        self.counts[fault.kind] += 1
        _LOGGER.debug("injecting fault %s %s", fault.kind, fault.variant)
        return fault
