"""BlueZ adapter operations over D-Bus: read its address, power-cycle it (with deadlines)."""

from __future__ import annotations

import asyncio
import logging

_LOGGER = logging.getLogger(__name__)
TIMEOUT = 10.0


async def _set_powered(bus: object, path: str, powered: bool) -> None:
    from dbus_fast import Message, Variant  # noqa: PLC0415 - Linux only

    reply = await bus.call(  # type: ignore[attr-defined]
        Message(
            destination="org.bluez",
            path=path,
            interface="org.freedesktop.DBus.Properties",
            member="Set",
            signature="ssv",
            body=["org.bluez.Adapter1", "Powered", Variant("b", powered)],
        )
    )
    if reply.message_type.name == "ERROR":
        raise OSError(f"{reply.error_name}: {reply.body}")


async def power_cycle(adapter: str) -> bool:
    """Power the adapter off and on through BlueZ; False (logged) when that is not possible."""
    try:
        from dbus_fast import BusType  # noqa: PLC0415
        from dbus_fast.aio import MessageBus  # noqa: PLC0415

        async with asyncio.timeout(TIMEOUT):
            bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
            try:
                path = f"/org/bluez/{adapter}"
                await _set_powered(bus, path, False)
                await asyncio.sleep(1.0)  # the controller needs a moment before it powers up again
                await _set_powered(bus, path, True)
            finally:
                bus.disconnect()
    except Exception as exc:
        _LOGGER.error(
            "could not power-cycle adapter %s through BlueZ: %r (in docker this needs the host "
            "D-Bus socket; permission comes from the bluetooth D-Bus policy)",
            adapter,
            exc,
        )
        return False
    _LOGGER.warning("power-cycled Bluetooth adapter %s", adapter)
    return True


async def adapter_address(adapter: str) -> str | None:
    """The adapter's MAC (BlueZ Adapter1.Address), or None when BlueZ is unreachable."""
    try:
        from dbus_fast import BusType, Message  # noqa: PLC0415
        from dbus_fast.aio import MessageBus  # noqa: PLC0415

        async with asyncio.timeout(TIMEOUT):
            bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
            try:
                reply = await bus.call(
                    Message(
                        destination="org.bluez",
                        path=f"/org/bluez/{adapter}",
                        interface="org.freedesktop.DBus.Properties",
                        member="Get",
                        signature="ss",
                        body=["org.bluez.Adapter1", "Address"],
                    )
                )
            finally:
                bus.disconnect()
    except Exception as exc:
        _LOGGER.debug("adapter address unavailable: %r", exc)
        return None
    if reply is None or reply.message_type.name == "ERROR" or not reply.body:
        return None
    return str(reply.body[0].value).upper()
