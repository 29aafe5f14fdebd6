"""Small commands: decode a captured frame, scan for BT-2 modules, probe the ids of a BT-2's bus."""

from __future__ import annotations

import asyncio
import binascii
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TextIO

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

if TYPE_CHECKING:
    from services.reader.bus_probe import BusProbe
    from services.reader.link import Bt2Link, Exchange


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


async def probe_bus(
    config: Config,
    *,
    ids: Sequence[int] | None = None,
    timeout: float = 0.5,
    out: TextIO | None = None,
    err: TextIO | None = None,
    on_exchange: Callable[[Exchange], None] | None = None,
) -> int:
    """Tell which kind answers at which slave id of the BT-2's bus; print the reader.devices line.

    Only reads, one at a time. Exit 0 when a device was identified, 1 when none was (or the BT-2
    could not be reached), with a hint naming the likely cause.
    """
    from services.reader import bus_probe  # noqa: PLC0415 - only for this command
    from services.reader.backends import resolve_backends  # noqa: PLC0415
    from services.reader.link import Bt2Link  # noqa: PLC0415

    out, err = out or sys.stdout, err or sys.stderr
    plan = list(ids or bus_probe.DEFAULT_IDS)
    backends = resolve_backends(config)
    try:
        device = await _find_bt2(config, backends.scanner, err)
        if device is None:
            return 1
        quiet = max(0.1, timeout / 2)  # a BT-2 answers in 70-350 ms: half a deadline of silence ends a late reply
        link = Bt2Link(
            device,
            backend=backends.client,
            connect_timeout=config.reader.connect_timeout,
            request_timeout=timeout,
            quiet_window=quiet,
            on_exchange=on_exchange,
        )
        name = device if isinstance(device, str) else device.address
        if not await _connect(link, name, err):
            return 1
        print(
            f"probing {len(plan)} slave ids on BT-2 {name}, {timeout:g} s per silent id: about "
            f"{bus_probe.silent_bus_seconds(plan, timeout, quiet):.1f} s, at most "
            f"{bus_probe.worst_case_seconds(plan, timeout, quiet):.1f} s plus reconnects",
            file=err,
        )
        started = time.monotonic()
        prober = bus_probe.BusProbe(plan)
        try:
            complete = await _walk(prober, link, name, out, err)
        finally:
            await link.disconnect()
    finally:
        if backends.simulator is not None:
            from services.simulator import unregister_simulator  # noqa: PLC0415

            unregister_simulator(backends.simulator)
            backends.simulator.close()
    print(f"probed {len(plan)} ids in {time.monotonic() - started:.1f} s", file=err)
    entries = bus_probe.config_entries(prober.findings)
    if not entries:
        print(f"nothing identified: {bus_probe.nothing_found_hint(prober.findings)}", file=err)
        return 1
    print("paste into [reader] of the configuration file, or set in the environment:", file=err)
    for line in bus_probe.config_lines(entries):
        print(line, file=out)
    configured = [f"battery:{slave}" for slave in config.reader.batteries] + list(config.reader.devices)
    if sorted(configured) != sorted(entries):
        print(f"note: the configuration now reads {','.join(configured)}", file=err)
    return 0 if complete else 1


async def _find_bt2(config: Config, scanner_backend: Any, err: TextIO) -> Any:
    """The BT-2 to probe: reader.bt2_address as given, else the first matching advertisement."""
    from services.reader.scanner import Scanner  # noqa: PLC0415

    cfg = config.reader
    if cfg.bt2_address:
        return cfg.bt2_address  # BlueZ resolves a known address itself, as the reader does
    scanner = Scanner(
        backend=scanner_backend, adapter=cfg.adapter, mode="active", on_advertisement=None, on_state=lambda *_: None
    )
    if not await scanner.start():
        print(f"error: cannot scan for the BT-2: {scanner.problem.message if scanner.problem else '?'}", file=err)
        return None
    looking_for = cfg.bt2_name or "BT-TH-*"
    print(f"looking for {looking_for} for up to {cfg.scan_timeout:.0f} s ...", file=err)
    try:
        sighting = await scanner.find_bt2(address=None, name=cfg.bt2_name, timeout=cfg.scan_timeout)
    finally:
        await scanner.stop()
    if sighting is None:
        print(
            f"error: no {looking_for} found in {cfg.scan_timeout:.0f} s: is it powered, in range and not "
            "connected to the Renogy app (or to a running reader)?",
            file=err,
        )
        return None
    return sighting.device


async def _connect(link: Bt2Link, name: str, err: TextIO) -> bool:
    from services.reader.bluez_errors import diagnose  # noqa: PLC0415
    from services.reader.link import LinkError  # noqa: PLC0415

    try:
        await link.connect()
    except LinkError as exc:
        print(f"error: cannot connect to BT-2 {name}: {exc}", file=err)
        return False
    except Exception as exc:  # bleak/BlueZ errors, explained as the reader explains them
        print(f"error: cannot connect to BT-2 {name}: {diagnose(exc, 'adapter').message}", file=err)
        return False
    return True


async def _walk(prober: BusProbe, link: Bt2Link, name: str, out: TextIO, err: TextIO) -> bool:
    """Drive the probe plan over the link; False when it stopped early (the BT-2 could not be reconnected)."""
    from services.reader.link import LinkError, LinkLost  # noqa: PLC0415
    from shared.modbus import FrameErrorKind  # noqa: PLC0415

    reported = 0
    while (step := prober.next_step()) is not None:
        if step.reconnect:
            await link.disconnect()
            if not await _connect(link, name, err):
                print(f"probing stopped at id {step.slave}: the results below are incomplete", file=err)
                return False
            prober.reconnected()
        try:
            response = await link.request(step.request)
        except LinkLost:
            prober.lost()
        except LinkError as exc:
            if exc.kind == FrameErrorKind.EXCEPTION.value:
                prober.refused()
            elif exc.kind == "timeout":
                prober.silent()
            else:
                prober.garbled(exc.kind, timed_out=exc.reconnect)
        else:
            prober.answered(response.registers, response.slave)
        for finding in prober.findings[reported:]:
            print(finding.line(), file=out if finding.kind is not None else err, flush=True)
        reported = len(prober.findings)
    return True
