"""Small commands: decode a captured frame, scan for BT-2 modules."""

from __future__ import annotations

import asyncio
import binascii
import sys
from typing import Any

from shared import registers
from shared.config import Config
from shared.modbus import (
    BROADCAST_SLAVE,
    READ_HOLDING_REGISTERS,
    FrameError,
    ReadRequest,
    ReadResponse,
    ResponseAssembler,
)


def _unhex(frame_hex: str) -> bytes:
    try:
        return binascii.unhexlify("".join(frame_hex.split()).removeprefix("0x"))
    except (binascii.Error, ValueError):
        raise ValueError("the frame is not valid hex") from None


def decode_frame(
    register: int, frame_hex: str, *, slave: int | None = None, family: str = "bt2", kind: str = "battery"
) -> dict[str, Any]:
    """Decode a whole response frame as the reader would; ValueError says why a frame is bad.

    ``kind`` names the device family (battery, controller, dcc, inverter, shunt); ``family`` is the
    battery variant. A shunt's HEX is one notification payload (it answers no Modbus read).
    """
    if kind != "battery":
        return _decode_device_frame(kind, register, frame_hex, slave=slave)
    response = _read_response(register, frame_hex, slave)
    words = len(response.registers)
    fam = registers.Family(family)
    try:
        values = registers.decode_block(register, response.registers, family=fam)
    except registers.BlockError as exc:
        raise ValueError(f"{exc}: is this the reply to another register?") from None
    if not values:
        raise ValueError(f"no mapped field starts inside {register}..{register + words - 1}")
    # As the reader does: a sensor outside its range is null (named in the warnings), the rest stays.
    warnings = registers.screen_sensors(values)
    warnings += registers.consistency_warnings(register, words, values)
    result: dict[str, Any] = {"slave_id": response.slave, "register": register, "words": words, **values}
    try:
        registers.check_plausible(values)
    except registers.BlockError as exc:
        result["implausible"] = str(exc)
    if warnings:
        result["warnings"] = warnings
    return result


def _decode_device_frame(kind: str, register: int, frame_hex: str, *, slave: int | None) -> dict[str, Any]:
    from shared.devices import BlockError, decode, family, problems  # noqa: PLC0415 - only for this command

    fam = family(kind)  # ValueError names the known kinds
    if fam.transport == "notify":
        payload = _unhex(frame_hex)
        if len(payload) % 2:
            raise ValueError(f"a {kind} notification has an even number of bytes, got {len(payload)}")
        words = [int.from_bytes(payload[i : i + 2], "big") for i in range(0, len(payload), 2)]
        response_slave: int | None = None
    else:
        response = _read_response(register, frame_hex, slave)
        words, response_slave = list(response.registers), response.slave
    try:
        values, dropped = decode(fam, 0 if fam.transport == "notify" else register, words)
    except BlockError as exc:
        raise ValueError(f"{exc}: is this the reply to another register or another kind?") from None
    result: dict[str, Any] = {"kind": kind, "register": register, "words": len(words)}
    if response_slave is not None:
        result["slave_id"] = response_slave
    result.update(values)
    found = problems(fam, values)
    if found:
        result["problems"] = found
    if dropped:
        result["warnings"] = dropped
    return result


def _read_response(register: int, frame_hex: str, slave: int | None) -> ReadResponse:
    frame = _unhex(frame_hex)
    if len(frame) < 5:
        raise ValueError(f"a frame has at least 5 bytes, got {len(frame)}")
    words = frame[2] // 2 if frame[1] == READ_HOLDING_REGISTERS and frame[2] and frame[2] % 2 == 0 else 1
    request = ReadRequest(BROADCAST_SLAVE if slave is None else slave, register, min(words, 125))
    events = ResponseAssembler(request).feed(frame)
    response = next((e for e in events if isinstance(e, ReadResponse)), None)
    if response is None:
        errors = [str(e) for e in events if isinstance(e, FrameError)] or ["incomplete frame"]
        raise ValueError("; ".join(errors))
    if len(response.frame) != len(frame):
        raise ValueError(f"{len(frame) - len(response.frame)} extra bytes after the frame")
    return response


async def scan(timeout: float, adapter: str, *, simulate: bool = False, config: Config | None = None) -> int:
    """Print every BT-2 (and Renogy Pro pack) seen within timeout (the configured simulator with ``simulate``)."""
    from services.reader.scanner import Scanner  # noqa: PLC0415

    backend = None
    sim = None
    if simulate:
        from services.reader.simulate import start_default_simulator  # noqa: PLC0415

        sim, backend = start_default_simulator(config)
    scanner = Scanner(
        backend=backend,
        adapter=adapter,
        mode="active",
        on_advertisement=None,
        on_state=lambda state, mode: None,
    )
    if not await scanner.start():
        return 1
    where = "the simulator" if simulate else adapter
    print(f"scanning {timeout:.0f} s on {where} ...", file=sys.stderr)
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    reported: set[str] = set()
    while (left := end - loop.time()) > 0:
        await asyncio.sleep(min(1.0, left))  # the scan window itself, not a stand-in for a condition
        for address, sighting in sorted(scanner.bt2_sightings.items()):
            if address not in reported:
                reported.add(address)
                print(f"  found {address} {sighting.name} (rssi {sighting.rssi} dBm)", file=sys.stderr)
        if end - loop.time() > 0.5:
            print(f"  {end - loop.time():.0f} s left, {len(reported)} BT-2 found", file=sys.stderr)
    await scanner.stop()
    if sim is not None:
        sim.close()
    if not scanner.bt2_sightings:
        print("no BT-2 found: is it powered, in range and not connected to the Renogy app?", file=sys.stderr)
        return 1
    for address, sighting in sorted(scanner.bt2_sightings.items()):
        print(f"{address}  {sighting.name:<20} rssi {sighting.rssi} dBm")
    return 0
