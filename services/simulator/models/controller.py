"""A solar charge controller: PV follows the day curve, charges the bank, the load port draws it.

The load port can be switched like a real Rover's: function 6 to 0x010A (1 = on, 0 = off); 0x0120
bit 15 then reports it, and the load draws the bank only while it is on.
"""

from __future__ import annotations

from services.simulator.physics import BankPhysics
from shared.devices.controller import CONTROLLER, LOAD_SWITCH
from shared.registers import Value

from .base import EXC_ILLEGAL_ADDRESS, EXC_ILLEGAL_VALUE, Charger, SimBank, WriteRefused, clamp

LOW_VOLTAGE_DISCONNECT = 0.05  # SOC below which the controller drops its load whatever the switch


class ControllerModel(Charger):
    family = CONTROLLER
    model_name = "RNG-CTRL-RVR40"
    efficiency = 0.97
    idle_state = "deactivated"
    replaces_solar = True

    def __init__(
        self,
        slave: int = 0xFF,
        *,
        seed: int = 0,
        pv_peak_w: float = 400.0,
        load_w: float = 24.0,
        bank: SimBank | None = None,
        start: float = 10 * 3600.0,
        physics: BankPhysics | None = None,
    ) -> None:
        self.pv_peak_w = pv_peak_w
        self.load_w = load_w
        self.load_enabled = True  # the load port's switch (0x010A); a Rover ships with it on
        super().__init__(slave, seed, bank or SimBank(), start, physics)

    def _load_on(self, soc: float) -> bool:
        return self.load_enabled and soc > LOW_VOLTAGE_DISCONNECT

    def available(self, t: float, volts: float) -> dict[str, float]:
        return {"pv": self.pv_peak_w * self._sun(t)}

    def draw_w(self, soc: float) -> float:
        return self.load_w if self._load_on(soc) else 0.0

    def write_register(self, register: int, value: int, t: float) -> int | WriteRefused:
        """Function 6 at ``t``: the value written (the echo), or the exception a Rover answers."""
        if register != LOAD_SWITCH.register:
            return WriteRefused(EXC_ILLEGAL_ADDRESS)
        if value not in (LOAD_SWITCH.on, LOAD_SWITCH.off):
            return WriteRefused(EXC_ILLEGAL_VALUE)
        self._advance(t)  # the load drew the bank up to now with the old setting
        self.load_enabled = value == LOAD_SWITCH.on
        return value

    def values(self, t: float) -> dict[str, Value]:
        volts, soc, temperature = self._bank(t)
        pv_w = self._inputs.get("pv", 0.0)
        pv_v = max(18.0, volts + 4.0) if pv_w else 0.0  # an MPPT works a few volts above the bank
        load_on = self._load_on(soc)
        return clamp(
            {
                **self.battery_values(volts, soc, temperature),
                "controller_temperature": 20 + round(10 * pv_w / max(self.pv_peak_w, 1.0)),
                "load_voltage": round(volts, 1) if load_on else 0.0,
                "load_current": round(self._draw_a / self._frame, 2) if load_on else 0.0,
                "load_power": round(self.load_w) if load_on else 0,
                "pv_voltage": round(pv_v, 1),
                "pv_current": round(pv_w / pv_v, 2) if pv_v else 0.0,
                "pv_power": round(pv_w),
                "load_on": load_on,
                "faults": 0,
            },
            self.family,
        )
