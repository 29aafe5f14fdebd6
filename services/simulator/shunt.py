"""A simulated Renogy Smart Shunt 300: its own connectable BLE device, advertising ``RTMShunt300…``.

Notify-only like the real one: once a central subscribes to ``c411`` it gets one 110-byte live frame
(:meth:`ShuntModel.notification`) every ``notify_interval`` (~1 s). Reached through the simulator's
scanner and :class:`~services.simulator.devices.SimPeripheralClient` like the other peripherals
(``register_peripheral``). The frames measure the simulated battery bank (:func:`simulated_shunt`:
pack voltage, the packs' summed current, their state of charge).

Faults: :meth:`ShuntPeripheral.send_garbage` (the next frames have a wrong header),
:meth:`ShuntPeripheral.stop_notifying` (connected and subscribed, but silent until the link is dropped:
a wedged notifier that a reconnect cures), and those of every peripheral (``faults``, ``drop_link``).
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from bleak.uuids import normalize_uuid_16

from shared.devices.shunt import LIVE_HEADER, NOTIFY_UUID, PAYLOAD_LENGTH

from .bank import BankSimulator
from .config import SIM_SHUNT_ADDRESS
from .devices import CharSpec, ServiceSpec, SimPeripheral
from .models.shunt import BankState, ShuntModel

# The service holding c411 is the simulator's choice (the reader looks up the characteristic only).
SHUNT_SERVICE_UUID: Final = "0000c011-0000-1000-8000-00805f9b34fb"
NOTIFY_HANDLE: Final = 0x0012


def shunt_name(address: str) -> str:
    """``RTMShunt300`` plus the last two address bytes, like the real ``RTMShunt300<serial>`` names."""
    return "RTMShunt300" + address.replace(":", "").upper()[-4:]


@dataclass
class ShuntPeripheral(SimPeripheral):
    """The shunt as a peripheral; ``sim_time()`` is the simulated time its frames are taken at."""

    model: ShuntModel = field(default_factory=ShuntModel)
    sim_time: Callable[[], float] = time.monotonic
    garbage: int = 0  # frames still to be sent with a wrong header
    silent: bool = False
    # Every frame sent: (time.monotonic(), payload), newest last, for truth checks.
    sent: deque[tuple[float, bytes]] = field(default_factory=lambda: deque(maxlen=256))

    def send_garbage(self, frames: int = 1) -> None:
        self.garbage += frames

    def stop_notifying(self) -> None:
        """Stay connected and subscribed but send nothing until the link goes down."""
        self.silent = True
        self.update_stream()

    def _wants_stream(self) -> bool:
        return not self.silent and self.subscribed(self.char_by_uuid(NOTIFY_UUID))

    def _next_value(self) -> tuple[CharSpec, bytes]:
        char = self.char_by_uuid(NOTIFY_UUID)
        if self.garbage:
            self.garbage -= 1
            rng = random.Random(self.notifications_sent)
            value = b"\x42\x00" + bytes(rng.randrange(256) for _ in range(PAYLOAD_LENGTH - 2))
            assert not value.startswith(LIVE_HEADER)
        else:
            value = self.model.notification(self.sim_time())
        self.sent.append((time.monotonic(), value))
        self.values[char.handle] = value
        return char, value

    def disconnected(self) -> None:
        self.silent = False  # the wedged notifier is cured by the reconnect
        super().disconnected()


def shunt_peripheral(
    model: ShuntModel,
    address: str = SIM_SHUNT_ADDRESS,
    *,
    sim_time: Callable[[], float] = time.monotonic,
    **kwargs: Any,
) -> ShuntPeripheral:
    kwargs.setdefault("notify_interval", 1.0)
    services = [
        ServiceSpec(
            0x0001, normalize_uuid_16(0x1800), [CharSpec(0x0003, normalize_uuid_16(0x2A00), ["read"])]
        ),
        ServiceSpec(
            0x0010, SHUNT_SERVICE_UUID, [CharSpec(NOTIFY_HANDLE, NOTIFY_UUID, ["notify"], cccd=0x0013)]
        ),
    ]
    name = shunt_name(address)
    services[0].chars[0].value = name.encode()
    return ShuntPeripheral(address, name, services, kind="shunt", model=model, sim_time=sim_time, **kwargs)


def bank_measure(sim: BankSimulator) -> Callable[[float], BankState]:
    """What a shunt on the simulated battery bank measures: its packs are in parallel."""

    def measure(t: float) -> BankState:
        packs = [sim.physics.reading(slave, t) for slave in sim.slaves]
        voltage = sum(p.voltage for p in packs) / len(packs)
        capacity = sum(p.capacity for p in packs)
        return BankState(voltage, sum(p.current for p in packs), sum(p.remaining for p in packs) / capacity)

    return measure


def simulated_shunt(sim: BankSimulator, address: str = SIM_SHUNT_ADDRESS, **kwargs: Any) -> ShuntPeripheral:
    """A shunt on ``sim``'s battery bank, with the simulator's latency scale (register it to use it)."""
    kwargs.setdefault("latency_scale", sim.latency_scale)
    kwargs.setdefault("timing", sim.timing)
    kwargs.setdefault("notify_interval", max(0.02, 1.0 * sim.latency_scale))
    model = ShuntModel(measure=bank_measure(sim))
    return shunt_peripheral(model, address, sim_time=sim.sim_time, **kwargs)
