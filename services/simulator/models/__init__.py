"""Simulated devices, one model per family (pure classes over simulated time, no I/O).

``MODELS[kind]`` builds a model; :func:`read` answers a Modbus read (start, count) with registers or
an exception code, :func:`write` a write-single-register (function 6); the shunt is notify-only
(:meth:`ShuntModel.notification`). The controller and DC-DC charger are :class:`Charger` s: on their
own :class:`SimBank`, or wired to the battery physics when batteries share their bus.
"""

from __future__ import annotations

from .base import (
    EXC_ILLEGAL_ADDRESS,
    EXC_ILLEGAL_FUNCTION,
    Charger,
    DayCurve,
    DeviceModel,
    SimBank,
    WriteRefused,
    answer_read,
)
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


def write(model: DeviceModel, register: int, value: int, t: float) -> int | WriteRefused:
    """Function 6 at ``t``: the value written (a real device echoes it), or the exception code as
    :class:`WriteRefused` (an int alone could not tell the value 2 from exception 02).

    Only a family's control registers are writable (0x010A on a controller); any other register
    answers 02 (illegal data address), a value the register does not take 03, the shunt 01.
    """
    if isinstance(model, ShuntModel):
        return WriteRefused(EXC_ILLEGAL_FUNCTION)
    if isinstance(model, ControllerModel):
        return model.write_register(register, value, t)
    return WriteRefused(EXC_ILLEGAL_ADDRESS)  # batteries, DC-DC chargers, inverters: nothing writable


__all__ = [
    "BatteryModel",
    "Charger",
    "ControllerModel",
    "DayCurve",
    "DccModel",
    "DeviceModel",
    "InverterModel",
    "ShuntModel",
    "SimBank",
    "WriteRefused",
    "answer_read",
    "read",
    "write",
]
