"""Where the bleak backends find simulated BT-2s by address."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from .bank import BankSimulator

_SIMULATORS: dict[str, BankSimulator] = {}


def register_simulator(sim: BankSimulator) -> None:
    """Make ``sim`` reachable by its address for SimBT2Client and visible to SimScanner."""
    _SIMULATORS[sim.address.upper()] = sim


def unregister_simulator(sim: BankSimulator) -> None:
    """Undo :func:`register_simulator` (no error when absent)."""
    if _SIMULATORS.get(sim.address.upper()) is sim:
        del _SIMULATORS[sim.address.upper()]


def simulator_for(address: str) -> BankSimulator | None:
    """The registered simulator at ``address`` (any case), if any."""
    return _SIMULATORS.get(address.upper())


def registered_simulators() -> list[BankSimulator]:
    """All registered simulators, in registration order."""
    return list(_SIMULATORS.values())


@contextmanager
def registered(*sims: BankSimulator) -> Iterator[tuple[BankSimulator, ...]]:
    """Register simulators for the duration of a with-block, then unregister and close them."""
    for sim in sims:
        register_simulator(sim)
    try:
        yield sims
    finally:
        for sim in sims:
            unregister_simulator(sim)
            sim.close()
