"""A solar charge controller: PV follows the day curve, charges the bank, the load port draws it.

The load port can be switched like a real Rover's: function 6 to 0x010A (1 = on, 0 = off); 0x0120
bit 15 then reports it, and the load draws the bank only while it is on.
"""

from __future__ import annotations

import random

from shared.devices.controller import CONTROLLER, LOAD_SWITCH
from shared.registers import Value

from .base import EXC_ILLEGAL_ADDRESS, EXC_ILLEGAL_VALUE, Counters, DayCurve, SimBank, WriteRefused, clamp

STEP = 5.0  # s of simulated time per integration step


class ControllerModel:
    family = CONTROLLER

    def __init__(
        self,
        slave: int = 0xFF,
        *,
        seed: int = 0,
        pv_peak_w: float = 400.0,
        load_w: float = 24.0,
        bank: SimBank | None = None,
        start: float = 10 * 3600.0,
    ) -> None:
        self.slave = slave
        self.pv_peak_w = pv_peak_w
        self.load_w = load_w
        self.bank = bank or SimBank()
        self._sun = DayCurve(random.Random(f"{seed}:controller:{slave}"))
        self._t = start
        self._counters = Counters()
        self._pv_w = 0.0
        self.load_enabled = True  # the load port's switch (0x010A); a Rover ships with it on

    @property
    def _load_on(self) -> bool:
        # Low-voltage disconnect: the controller drops the load of an empty bank whatever the switch.
        return self.load_enabled and self.bank.soc > 0.05

    def write_register(self, register: int, value: int, t: float) -> int | WriteRefused:
        """Function 6 at ``t``: the value written (the echo), or the exception a Rover answers."""
        if register != LOAD_SWITCH.register:
            return WriteRefused(EXC_ILLEGAL_ADDRESS)
        if value not in (LOAD_SWITCH.on, LOAD_SWITCH.off):
            return WriteRefused(EXC_ILLEGAL_VALUE)
        self._advance(t)  # the load drew the bank up to now with the old setting
        self.load_enabled = value == LOAD_SWITCH.on
        return value

    def _advance(self, t: float) -> None:
        while self._t + STEP <= t:
            self._t += STEP
            volts = self.bank.voltage
            full = self.bank.soc >= 0.995
            self._pv_w = 0.0 if full else self.pv_peak_w * self._sun(self._t)
            charge_a = 0.97 * self._pv_w / volts
            load_a = self.load_w / volts if self._load_on else 0.0
            self.bank.step(charge_a - load_a, STEP)
            self._counters.add(self._t, charge_a, self._pv_w, STEP)

    def values(self, t: float) -> dict[str, Value]:
        self._advance(t)
        volts = self.bank.voltage
        pv_v = max(18.0, volts + 4.0) if self._pv_w else 0.0  # an MPPT works a few volts above the bank
        load_on = self._load_on
        c = self._counters
        return clamp(
            {
                "model": "RNG-CTRL-RVR40",
                "device_address": self.slave & 0xFF,
                "battery_soc": round(100 * self.bank.soc),
                "battery_voltage": round(volts, 1),
                "charging_current": round(max(0.0, 0.97 * self._pv_w / volts), 2),
                "controller_temperature": 20 + round(self._pv_w / 40),
                "battery_temperature": 20,
                "load_voltage": round(volts, 1) if load_on else 0.0,
                "load_current": round(self.load_w / volts, 2) if load_on else 0.0,
                "load_power": round(self.load_w) if load_on else 0,
                "pv_voltage": round(pv_v, 1),
                "pv_current": round(self._pv_w / pv_v, 2) if pv_v else 0.0,
                "pv_power": round(self._pv_w),
                "max_charging_power_today": round(c.max_w_today),
                "charging_ah_today": round(c.ah_today),
                "generation_today": round(c.wh_today),
                "charging_ah_total": round(c.ah_total),
                "generation_total": round(c.wh_total),
                "operating_days": c.day,
                "load_on": load_on,
                "charging_state": "mppt"
                if self._pv_w
                else ("floating" if self.bank.soc >= 0.995 else "deactivated"),
                "faults": 0,
                "battery_type": "lithium",
            },
            self.family,
        )
