"""An inverter-charger on a 48 V bank: AC output follows a household load curve, PV charges by day."""

from __future__ import annotations

import math
import random

from services.simulator.physics import DAY, HOUR
from shared.devices.inverter import INVERTER
from shared.registers import Value

from .base import DayCurve, SimBank, clamp

STEP = 5.0


class InverterModel:
    family = INVERTER

    def __init__(
        self,
        slave: int = 0x20,
        *,
        seed: int = 0,
        ac_volts: float = 120.0,
        hertz: float = 60.0,
        base_load_w: float = 150.0,
        pv_peak_w: float = 1_500.0,
        bank: SimBank | None = None,
        start: float = 10 * HOUR,
    ) -> None:
        self.slave = slave
        self.ac_volts = ac_volts
        self.hertz = hertz
        self.base_load_w = base_load_w
        self.pv_peak_w = pv_peak_w
        self.bank = bank or SimBank(200.0, 0.6, cells=16)
        self._sun = DayCurve(random.Random(f"{seed}:inverter:{slave}"))
        self._t = start
        self._load_w = self._pv_w = 0.0

    def load(self, t: float) -> float:
        hour = (t % DAY) / HOUR
        evening = max(0.0, math.sin(math.pi * (hour - 17.0) / 6.0)) if 17.0 < hour < 23.0 else 0.0
        return self.base_load_w * (1.0 + 3.0 * evening)

    def _advance(self, t: float) -> None:
        while self._t + STEP <= t:
            self._t += STEP
            volts = self.bank.voltage
            self._load_w = self.load(self._t) if self.bank.soc > 0.05 else 0.0
            self._pv_w = self.pv_peak_w * self._sun(self._t) if self.bank.soc < 0.995 else 0.0
            self.bank.step((0.96 * self._pv_w - self._load_w / 0.92) / volts, STEP)

    def values(self, t: float) -> dict[str, Value]:
        self._advance(t)
        volts = self.bank.voltage
        out_a = self._load_w / self.ac_volts
        pv_v = 80.0 if self._pv_w else 0.0
        charging_w = max(0.0, 0.96 * self._pv_w - self._load_w / 0.92)
        return clamp(
            {
                "input_voltage": 0.0,
                "input_current": 0.0,
                "output_voltage": self.ac_volts,
                "output_current": round(out_a, 2),
                "output_frequency": self.hertz,
                "battery_voltage": round(volts, 1),
                "temperature": round(30.0 + self._load_w / 100, 1),
                "input_frequency": 0.0,
                "device_address": self.slave,
                "model": "RIV4835CSH1S",
                "battery_soc": round(100 * self.bank.soc),
                # + = discharging on this family (renogy-ble's RIV4835CSH1S captures)
                "charging_current": round(-self.bank.current, 1),
                "pv_voltage": pv_v,
                "pv_current": round(self._pv_w / pv_v, 1) if pv_v else 0.0,
                "pv_power": round(self._pv_w),
                "charging_state": "constant current" if charging_w else "deactivated",
                "charging_power": round(charging_w),
                "load_current": round(out_a, 1),
                "load_active_power": round(self._load_w),
                "load_apparent_power": round(self._load_w * 1.1),
                "line_charging_current": 0.0,
                "load_percentage": round(100 * self._load_w / 3_500),
            },
            self.family,
        )
