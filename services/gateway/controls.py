"""Opt-in controls, the gateway's half: a SwitchCommandRequest becomes a command on
``<root>/bt2/<bt2>/<kind>/<slave>/set`` and the reader's ``.../result`` is logged, one line each.

The served switch state never changes here: it comes only from the aggregator's state documents,
i.e. the register the reader read back (docs/mqtt.md "Controls"). The service builds this only with
``controls = true`` (it imports shared.controls and the device tables, which the gateway otherwise
does not need at start-up).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from services.gateway.entities import Catalog
from services.gateway.registry import Registry
from services.gateway.throttle import ThrottledLog
from shared.controls import command_payload, parse_result
from shared.devices import FAMILIES
from shared.mqtt import Message
from shared.payloads import PayloadError, dumps
from shared.topics import Topics

_LOGGER = logging.getLogger(__name__)

COMMAND_AHEAD: Final = 10.0  # s: the deadline given to the reader; a later write is refused as stale
RESULT_GRACE: Final = 5.0  # s past the deadline: a write begun just before it still reports back
MAX_PENDING: Final = 16  # commands awaiting a result; more are refused (each one is a BLE write)
LOG_INTERVAL: Final = 60.0  # s between two lines of one kind of refusal (a client may repeat them)
# The aggregator's id of a non-battery device (services/aggregator/devices.py: <kind>_<bt2>_<slave>).
_DEVICE_REF: Final = re.compile(r"^([a-z][a-z0-9_]{0,31})_([0-9a-f]{12})_(\d{1,3})$")

Publish = Callable[[str, bytes], bool]


@dataclass(frozen=True, slots=True)
class Target:
    """The device and control a switch entity stands for."""

    ref: str  # device id
    name: str  # device name, for log lines
    bt2: str
    kind: str
    slave: int
    key: str  # control key

    def __str__(self) -> str:
        return f"{self.name} {self.key}"


def target_of(catalog: Catalog, key: int) -> Target | str:
    """The target of a switch key in what is served, or why there is none (pure)."""
    entity = next((e for e in catalog.entities if e.key == key), None)
    if entity is None:
        return f"no entity has key {key}"
    if not entity.switch:
        return f"{entity.object_id} (key {key}) is a {entity.spec.platform}, not a switch"
    match = _DEVICE_REF.match(entity.device_ref)
    family = next((f for kind, f in FAMILIES.items() if match and kind == match[1]), None)
    if match is None or family is None or not 0 <= int(match[3]) <= 255:
        return f"{entity.object_id}: device {entity.device_ref!r} is not a <kind>_<bt2>_<slave> device"
    if family.get_control(entity.spec.key) is None:
        return f"{entity.object_id}: a {family.kind} has no control {entity.spec.key!r}"
    name = next((d.name for d in catalog.devices if d.ref == entity.device_ref), entity.device_ref)
    return Target(entity.device_ref, name, match[2], match[1], int(match[3]), entity.spec.key)


@dataclass(slots=True)
class Pending:
    target: Target
    state: bool
    timer: asyncio.TimerHandle


class Controls:
    """Commands out, results in; nothing here touches the registry's values."""

    def __init__(
        self,
        topics: Topics,
        registry: Registry,
        publish: Publish,
        *,
        owner: str,
        clock: Callable[[], float] = time.time,
        ahead: float = COMMAND_AHEAD,
        grace: float = RESULT_GRACE,
    ) -> None:
        self.topics = topics
        self.registry = registry
        self.publish = publish
        self.owner = owner  # command id prefix, unique per gateway process
        self.clock = clock
        self.ahead = ahead
        self.grace = grace
        self.pending: dict[str, Pending] = {}
        self.sent = 0
        self.refused = 0  # by the gateway itself: unknown key, too many pending, broker down
        self._seq = 0
        self._refusals = ThrottledLog(_LOGGER, LOG_INTERVAL)

    @property
    def filters(self) -> list[tuple[str, int]]:
        return [(self.topics.result_filter, 1)]

    def command(self, key: int, state: bool, peer: str) -> None:
        """A SwitchCommandRequest from ``peer``: publish it to the reader, or log why not."""
        target = target_of(self.registry.catalog, key)
        if isinstance(target, str):
            self._refuse("unknown", "ignoring a switch command from %s: %s", peer, target)
            return
        if len(self.pending) >= MAX_PENDING:
            self._refuse(
                "busy",
                "%s: switch command from %s refused: %d commands await a result",
                target,
                peer,
                MAX_PENDING,
            )
            return
        self._seq += 1
        command_id = f"{self.owner}-{self._seq}"
        body = command_payload(target.key, state, command_id, self.clock() + self.ahead)
        topic = self.topics.device_command(target.bt2, target.kind, target.slave)
        if not self.publish(topic, dumps(body)):
            self._refuse(
                "mqtt", "%s: switch command from %s not sent: no connection to the broker", target, peer
            )
            return
        self.sent += 1
        timer = asyncio.get_running_loop().call_later(self.ahead + self.grace, self._timed_out, command_id)
        self.pending[command_id] = Pending(target, state, timer)
        _LOGGER.info("%s: switching %s for %s (command %s)", target, _word(state), peer, command_id)

    def handle_message(self, message: Message) -> bool:
        """True when the message was a result topic (ours or not)."""
        where = self.topics.parse_device_result(message.topic)
        if where is None:
            return False
        if not message.payload:
            return True
        try:
            result = parse_result(message.payload)
        except PayloadError as exc:
            self._refusals.log("bad_result", "dropping a bad result on %s: %s", message.topic, exc)
            return True
        pending = self.pending.get(result.command_id or "")
        if pending is None or (pending.target.bt2, pending.target.kind, pending.target.slave) != where:
            return True  # another gateway's, or one given up on
        del self.pending[result.command_id or ""]
        pending.timer.cancel()
        if result.ok:
            _LOGGER.info("%s: %s", pending.target, result.detail)
        else:
            _LOGGER.warning("%s not switched %s: %s", pending.target, _word(pending.state), result)
        return True

    def close(self) -> None:
        for pending in self.pending.values():
            pending.timer.cancel()
        self.pending.clear()

    def _timed_out(self, command_id: str) -> None:
        pending = self.pending.pop(command_id, None)
        if pending is not None:
            _LOGGER.warning(
                "%s not switched %s: no result from the reader within %.0f s (reader down, or the broker ACL "
                "refuses .../set or .../result?); the switch shows what the device reports",
                pending.target,
                _word(pending.state),
                self.ahead + self.grace,
            )

    def _refuse(self, kind: str, msg: str, *args: object) -> None:
        self.refused += 1
        self._refusals.log(kind, msg, *args)


def _word(state: bool) -> str:
    return "on" if state else "off"
