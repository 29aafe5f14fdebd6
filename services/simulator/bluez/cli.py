"""`renogy-proxy simulate-bluez`: a private system bus with the stand-in BlueZ serving the simulator.

The first line on stdout is ``DBUS_SYSTEM_BUS_ADDRESS=<address>``; a process started with that
variable (``renogy-proxy reader`` without ``--simulate``) reads the simulated BT-2 through bleak's
own BlueZ backend. Runs until SIGTERM/SIGINT, then stops the stand-in and the bus.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from typing import TextIO

from services.simulator.bank import BankSimulator
from shared.config import Config

from .bus import ENV, PrivateSystemBus
from .standin import StandInBlueZ

_LOGGER = logging.getLogger("simulate-bluez")


def _start_sim_and_bus(config: Config) -> tuple[BankSimulator, PrivateSystemBus] | None:
    """The configured simulator and a started private bus; None (logged) when either cannot start."""
    from services.reader.simulate import simulator_for_config  # noqa: PLC0415 - the same --sim-* settings

    try:
        sim = simulator_for_config(config)
    except ValueError as exc:
        _LOGGER.error("cannot start the simulator: %s (settings simulator.*, RENOGY_SIM_*)", exc)
        return None
    try:
        bus = PrivateSystemBus()
        bus.start()
    except (OSError, RuntimeError) as exc:
        _LOGGER.error("cannot start a private D-Bus daemon: %s", exc)
        sim.close()
        return None
    return sim, bus


@contextlib.asynccontextmanager
async def _standin_running(
    config: Config, sim: BankSimulator, bus: PrivateSystemBus
) -> AsyncIterator[StandInBlueZ]:
    """The stand-in BlueZ serving ``sim`` on ``bus``; stops it, closes the bus and the simulator on exit."""
    bluez = StandInBlueZ([sim], bus_address=bus.address, adapter=config.reader.adapter)
    try:
        await bluez.start()
        yield bluez
    finally:
        await bluez.stop()
        bus.close()
        sim.close()


async def serve(
    config: Config,
    *,
    out: TextIO | None = None,
    ready: Callable[[PrivateSystemBus, StandInBlueZ], None] | None = None,
    stop: asyncio.Event | None = None,
) -> int:
    """Run the private bus and the stand-in until ``stop`` is set (or a signal arrives)."""
    out = out or sys.stdout
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    started = _start_sim_and_bus(config)
    if started is None:
        return 2
    sim, bus = started
    async with _standin_running(config, sim, bus) as bluez:
        print(f"{ENV}={bus.address}", file=out, flush=True)
        _LOGGER.info(
            "stand-in BlueZ on %s: adapter %s, BT-2 %s (%s), batteries %s, MTU %d",
            bus.address,
            config.reader.adapter,
            sim.address,
            sim.local_name,
            ",".join(map(str, sim.slaves)),
            sim.mtu,
        )
        if ready is not None:
            ready(bus, bluez)
        await stop.wait()
    return 0


async def run_stack_on_standin(
    args: argparse.Namespace, config: Config, reload: Callable[[argparse.Namespace], Config]
) -> int:
    """`renogy-proxy run --simulate-bluez`: the stand-in BlueZ in this process, the stack on top of it.

    The reader child gets the private bus as its system bus and the simulated BT-2's name, so it
    runs on bleak's BlueZ backend (not the simulator backend).
    """
    from services.supervisor import run_stack  # noqa: PLC0415

    started = _start_sim_and_bus(config)
    if started is None:
        return 2
    sim, bus = started
    async with _standin_running(config, sim, bus):
        _LOGGER.info("stand-in BlueZ on %s=%s serving BT-2 %s", ENV, bus.address, sim.local_name)
        os.environ[ENV] = bus.address
        setattr(args, "simulator.enabled", False)
        if not (config.reader.bt2_address or config.reader.bt2_name):
            setattr(args, "reader.bt2_name", sim.local_name)
        return await run_stack(args, reload(args))
