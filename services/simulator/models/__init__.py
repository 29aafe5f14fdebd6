"""Simulated devices, one model per family (pure classes over simulated time, no I/O).

``MODELS[kind]`` builds a model; :func:`read` answers a Modbus read (start, count) with registers or
an exception code; the shunt is notify-only (:meth:`ShuntModel.notification`).
"""

from __future__ import annotations

from .base import DayCurve, DeviceModel, SimBank, answer_read
from .battery import BatteryModel
from .controller import ControllerModel
from .dcc import DccModel
from .inverter import InverterModel
from .shunt import ShuntModel


def read(model: DeviceModel, start: int, count: int, t: float) -> list[int] | int:
    """Registers for ``start`` x ``count`` at ``t``, or a Modbus exception code (02 = unmapped)."""
    if isinstance(model, BatteryModel):
        return model.answer_read(start, count, t)
    if isinstance(model, ShuntModel):
        return 0x01  # notify-only: it answers no Modbus function
    return answer_read(model, start, count, t)


__all__ = [
    "BatteryModel",
    "ControllerModel",
    "DayCurve",
    "DccModel",
    "DeviceModel",
    "InverterModel",
    "ShuntModel",
    "SimBank",
    "answer_read",
    "read",
]
