"""Wire the built-in BT-2 simulator into the reader as its bleak backends."""

from __future__ import annotations

from services.reader.backends import Backends
from services.simulator import BankSimulator, SimBT2Client, SimConfig, SimScanner, register_simulator
from services.simulator.devices import SimPeripheralClient
from shared.config import Config, other_devices

# A locally administered address for the simulated adapter, so Home Assistant sees a distinct scanner.
SIM_ADAPTER_ADDRESS = "02:52:4E:47:59:01"


def simulator_for_config(config: Config) -> BankSimulator:
    sim_cfg = config.simulator
    return BankSimulator.from_config(
        SimConfig(
            batteries=tuple(sim_cfg.batteries),
            address=sim_cfg.address,
            name=sim_cfg.name,
            mtu=sim_cfg.mtu,
            speed=sim_cfg.speed,
            latency_scale=sim_cfg.latency_scale,
            seed=sim_cfg.seed,
            fault_rate=sim_cfg.fault_rate,
            truth_log=sim_cfg.truth_log,
            late_delay=sim_cfg.late_delay,
            max_read_words=sim_cfg.max_read_words,
            read_reserved=sim_cfg.read_reserved,
            devices=tuple(other_devices(sim_cfg.devices)),
            # A long-running demo must not grow memory; the optional truth log keeps everything.
            record_truth=False,
        )
    )


def simulator_backends(config: Config) -> Backends:
    """Backends for a reader running on the simulator (registered so the backend can find it)."""
    sim = simulator_for_config(config)
    register_simulator(sim)
    return Backends(SimBT2Client, SimScanner, SIM_ADAPTER_ADDRESS, sim, proxy_client=SimPeripheralClient)


def start_default_simulator(config: Config | None = None) -> tuple[BankSimulator, type[SimScanner]]:
    """The configured (or a default) simulator for `renogy-proxy scan --simulate`."""
    sim = simulator_for_config(config) if config is not None else BankSimulator.from_config(SimConfig())
    register_simulator(sim)
    return sim, SimScanner
