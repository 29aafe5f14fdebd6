"""bleak scanner backend hearing simulated BT-2s and neighbours: ``BleakScanner(backend=SimScanner)``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from bleak.backends.scanner import AdvertisementDataCallback, BaseBleakScanner

from .adverts import Neighbourhood, SimAdvertisement, bt2_advertisement
from .bank import BankSimulator
from .devices import SimPeripheral, registered_peripherals
from .registry import registered_simulators

_LOGGER = logging.getLogger(__name__)

MIN_ADVERT_INTERVAL: Final = 0.02
PADDED_NAME_SHARE: Final = 0.25  # share of BT-2 adverts whose name carries trailing spaces
_IDLE_POLL: Final = 0.05


def advert_interval(sim: BankSimulator) -> float:
    """Seconds between a BT-2's advertisements: the configured interval times latency_scale, floored."""
    return max(MIN_ADVERT_INTERVAL, sim.config.advert_interval * sim.latency_scale)


@dataclass
class _Source:
    """One advertising device and when it is next heard."""

    key: str
    interval_factor: float
    make: Callable[[int], SimAdvertisement | None]
    base_rssi: int
    details: Any = None
    next_due: float = 0.0


@dataclass
class _SimNeighbourhood:
    """Everything heard around one simulated BT-2."""

    sim: BankSimulator
    sources: list[_Source] = field(default_factory=list)


def _rssi(rng: random.Random, base: int) -> int:
    return max(-100, min(-20, round(base + rng.gauss(0.0, 2.5))))


def _bt2_source(sim: BankSimulator, rng: random.Random) -> _Source:
    def make(rssi: int) -> SimAdvertisement | None:
        if sim.central is not None:
            return None  # a BT-2 holding a link does not advertise
        padding = 4 if rng.random() < PADDED_NAME_SHARE else 0
        return bt2_advertisement(sim.address, rssi, padding=padding, name=sim.local_name)

    return _Source(sim.address, 1.0, make, rng.randint(-80, -58), details=sim)


def simulated_sources(sim: BankSimulator) -> list[_Source]:
    """The advertising devices a simulator brings: its BT-2 plus, if configured, three neighbours."""
    rng = random.Random(f"{sim.config.seed}:{sim.address}:adverts")
    sources = [_bt2_source(sim, rng)]
    if sim.config.other_devices:
        hood = Neighbourhood(sim.config.seed, sim.address)
        sources += [
            _Source(
                hood.thermometer_address,
                2.0,
                lambda rssi: hood.thermometer(rssi, sim.physics.ambient(sim.sim_time())),
                rng.randint(-85, -60),
            ),
            _Source(hood.beacon_address, 1.0, hood.beacon, rng.randint(-90, -65)),
            _Source(hood.phone_address, 3.0, hood.phone, rng.randint(-95, -70)),
        ]
    return sources


def advertisements(sim: BankSimulator, *, rssi_seed: int = 0) -> list[SimAdvertisement]:
    """One advertisement of every device around ``sim`` (the BT-2 omitted while it holds a link)."""
    rng = random.Random(rssi_seed)
    out = []
    for source in simulated_sources(sim):
        advert = source.make(_rssi(rng, source.base_rssi))
        if advert is not None:
            out.append(advert)
    return out


class SimScanner(BaseBleakScanner):
    """Emits the advertisements of registered simulators (or of ``simulators=``) while started."""

    def __init__(
        self,
        detection_callback: AdvertisementDataCallback | None,
        service_uuids: list[str] | None,
        scanning_mode: str = "active",
        *,
        simulators: Iterable[BankSimulator] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(detection_callback, service_uuids)
        self._fixed = None if simulators is None else list(simulators)
        self._task: asyncio.Task[None] | None = None
        self._hoods: dict[int, _SimNeighbourhood] = {}
        self._rng = random.Random("scanner")
        self._peripherals: dict[int, tuple[SimPeripheral, _Source]] = {}
        self.emitted: deque[SimAdvertisement] = deque(maxlen=1_000)

    async def start(self) -> None:
        """Start hearing advertisements (the first round is emitted at once)."""
        if self._task is not None:
            return
        self.seen_devices = {}
        self._task = asyncio.create_task(self._run(), name="sim-scanner")

    async def stop(self) -> None:
        """Stop hearing advertisements."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _neighbourhoods(self) -> list[_SimNeighbourhood]:
        sims = self._fixed if self._fixed is not None else registered_simulators()
        hoods = []
        for sim in sims:
            hood = self._hoods.get(id(sim))
            if hood is None or hood.sim is not sim:
                hood = self._hoods[id(sim)] = _SimNeighbourhood(sim, simulated_sources(sim))
            hoods.append(hood)
        return hoods

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            next_due = now + _IDLE_POLL
            for hood in self._neighbourhoods():
                interval = advert_interval(hood.sim)
                for source in hood.sources:
                    if source.next_due <= now:
                        self._emit(source)
                        source.next_due = now + interval * source.interval_factor
                    next_due = min(next_due, source.next_due)
            for peripheral, source in self._peripheral_sources():
                if source.next_due <= now:
                    self._emit(source)
                    source.next_due = now + max(MIN_ADVERT_INTERVAL, peripheral.advert_interval)
                next_due = min(next_due, source.next_due)
            await asyncio.sleep(max(0.0, next_due - loop.time()))

    def _peripheral_sources(self) -> list[tuple[SimPeripheral, _Source]]:
        """Registered connectable peripherals (services.simulator.devices), unless ``simulators=`` was given."""
        if self._fixed is not None:
            return []
        out = []
        for peripheral in registered_peripherals():
            entry = self._peripherals.get(id(peripheral))
            if entry is None or entry[0] is not peripheral:
                source = _Source(
                    peripheral.address, 1.0, peripheral.advertisement, peripheral.rssi, peripheral
                )
                entry = self._peripherals[id(peripheral)] = (peripheral, source)
            out.append(entry)
        return out

    def _emit(self, source: _Source) -> None:
        advert = source.make(_rssi(self._rng, source.base_rssi))
        if advert is None:
            return
        adv = advert.advertisement_data()
        if not self.is_allowed_uuid(adv.service_uuids):
            return
        self.emitted.append(advert)
        device = self.create_or_update_device(
            advert.address, advert.address, advert.local_name, source.details, adv
        )
        try:
            self.call_detection_callbacks(device, adv)
        except Exception:
            _LOGGER.exception("detection callback failed")
