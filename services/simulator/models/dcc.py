"""A DC-DC charger: the alternator charges while the engine runs (ignition), solar by day."""

from __future__ import annotations

import random

from services.simulator.physics import DAY, HOUR
from shared.devices.dcc import DCC
from shared.registers import Value

from .base import Counters, DayCurve, SimBank, clamp

STEP = 5.0
DRIVES = ((8.0, 9.0), (17.0, 18.5))  # hours of the day the engine runs


class DccModel:
    family = DCC

    def __init__(
        self,
        slave: int = 0xFF,
        *,
        seed: int = 0,
        rated_a: float = 50.0,
        pv_peak_w: float = 200.0,
        house_load_w: float = 30.0,
        bank: SimBank | None = None,
        start: float = 10 * HOUR,
    ) -> None:
        self.slave = slave
        self.rated_a = rated_a
        self.pv_peak_w = pv_peak_w
        self.house_load_w = house_load_w
        self.bank = bank or SimBank(100.0, 0.5)
        self._sun = DayCurve(random.Random(f"{seed}:dcc:{slave}"))
        self._t = start
        self._counters = Counters()
        self._alt_w = self._pv_w = 0.0

    def ignition(self, t: float) -> bool:
        hour = (t % DAY) / HOUR
        return any(a <= hour < b for a, b in DRIVES)

    def _advance(self, t: float) -> None:
        while self._t + STEP <= t:
            self._t += STEP
            volts = self.bank.voltage
            room = self.bank.soc < 0.995
            self._alt_w = min(self.rated_a * volts, 700.0) if room and self.ignition(self._t) else 0.0
            self._pv_w = self.pv_peak_w * self._sun(self._t) if room else 0.0
            out_a = 0.95 * (self._alt_w + self._pv_w) / volts
            self.bank.step(out_a - self.house_load_w / volts, STEP)
            self._counters.add(self._t, out_a, 0.95 * (self._alt_w + self._pv_w), STEP)

    def values(self, t: float) -> dict[str, Value]:
        self._advance(t)
        volts = self.bank.voltage
        alt_v = 14.2 if self.ignition(self._t) else 12.6
        pv_v = max(18.0, volts + 4.0) if self._pv_w else 0.0
        out_w = 0.95 * (self._alt_w + self._pv_w)
        if self._alt_w and self._pv_w:
            mode = "solar and alternator to house"
        elif self._alt_w:
            mode = "alternator to house"
        else:
            mode = "solar to house" if self._pv_w else "standby"
        c = self._counters
        return clamp(
            {
                "model": "RBC50D1S-G1",
                "device_address": self.slave & 0xFF,
                "battery_soc": round(100 * self.bank.soc),
                "battery_voltage": round(volts, 1),
                "charging_current": round(out_w / volts, 2),
                "controller_temperature": 22 + round(out_w / 50),
                "battery_temperature": 20,
                "alternator_voltage": alt_v,
                "alternator_current": round(self._alt_w / alt_v, 2),
                "alternator_power": round(self._alt_w),
                "solar_voltage": round(pv_v, 1),
                "solar_current": round(self._pv_w / pv_v, 2) if pv_v else 0.0,
                "solar_power": round(self._pv_w),
                "max_charging_power_today": round(c.max_w_today),
                "charging_ah_today": round(c.ah_today),
                "generation_today": round(c.wh_today),
                "charging_ah_total": round(c.ah_total),
                "generation_total": round(c.wh_total),
                "operating_days": c.day,
                "charging_state": "mppt" if out_w else "standby",
                "faults_high": 0,
                "faults_low": 0,
                "output_power": round(out_w),
                "charging_mode": mode,
                "ignition": self.ignition(self._t),
                "battery_type": "lithium",
            },
            self.family,
        )
