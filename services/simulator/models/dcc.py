"""A DC-DC charger: the alternator charges while the engine runs (ignition), solar by day."""

from __future__ import annotations

from services.simulator.physics import DAY, HOUR, BankPhysics
from shared.devices.dcc import DCC
from shared.registers import Value

from .base import Charger, SimBank, clamp

DRIVES = ((8.0, 9.0), (17.0, 18.5))  # hours of the day the engine runs
ALTERNATOR_MAX_W = 700.0


class DccModel(Charger):
    family = DCC
    model_name = "RBC50D1S-G1"
    efficiency = 0.95
    idle_state = "standby"

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
        physics: BankPhysics | None = None,
    ) -> None:
        self.rated_a = rated_a
        self.pv_peak_w = pv_peak_w
        # Its own bank's house; on the battery physics the house is the profile's load.
        self.house_load_w = 0.0 if physics is not None else house_load_w
        super().__init__(slave, seed, bank or SimBank(100.0, 0.5), start, physics)

    def ignition(self, t: float) -> bool:
        hour = (t % DAY) / HOUR
        return any(a <= hour < b for a, b in DRIVES)

    def available(self, t: float, volts: float) -> dict[str, float]:
        alternator = min(self.rated_a * volts, ALTERNATOR_MAX_W) if self.ignition(t) else 0.0
        return {"alternator": alternator, "solar": self.pv_peak_w * self._sun(t)}

    def draw_w(self, soc: float) -> float:
        return self.house_load_w

    def generated_w(self) -> float:
        return self._out_w

    def values(self, t: float) -> dict[str, Value]:
        volts, soc, temperature = self._bank(t)
        alt_w, pv_w = self._inputs.get("alternator", 0.0), self._inputs.get("solar", 0.0)
        alt_v = 14.2 if self.ignition(self._t) else 12.6
        pv_v = max(18.0, volts + 4.0) if pv_w else 0.0
        out_w = self.efficiency * (alt_w + pv_w)
        if alt_w and pv_w:
            mode = "solar and alternator to house"
        elif alt_w:
            mode = "alternator to house"
        else:
            mode = "solar to house" if pv_w else "standby"
        return clamp(
            {
                **self.battery_values(volts, soc, temperature),
                "controller_temperature": 22 + round(out_w / 50),
                "alternator_voltage": alt_v,
                "alternator_current": round(alt_w / alt_v, 2),
                "alternator_power": round(alt_w),
                "solar_voltage": round(pv_v, 1),
                "solar_current": round(pv_w / pv_v, 2) if pv_v else 0.0,
                "solar_power": round(pv_w),
                "faults_high": 0,
                "faults_low": 0,
                "output_power": round(out_w),
                "charging_mode": mode,
                "ignition": self.ignition(self._t),
            },
            self.family,
        )
