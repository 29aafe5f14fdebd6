"""`renogy-proxy config check`: validate a configuration file and the environment without a broker.

Everything a service would refuse at start (each message names its key), plus what a service would
silently ignore: `RENOGY_*` variables that are no setting (a typo, with a did-you-mean), a bank
layout that lists batteries no reader reads. Exit 0 when nothing is wrong, 2 otherwise.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from shared.config import ENV_PREFIX, Config, ConfigError, settings

CONFIG_ENV = "RENOGY_CONFIG"
# Variables docker-compose.yml reads for itself (published port and address of our Mosquitto); they
# reach the containers through env_file, so they are known, not typos. A test keeps this complete.
COMPOSE_VARIABLES = frozenset({"RENOGY_MQTT_PORT", "RENOGY_MQTT_BIND"})
# Variables only the test suite reads (and RENOGY_RUN_FORK, read by services/supervisor.py).
TEST_VARIABLES = frozenset(
    {"RENOGY_RUN_FORK", "RENOGY_PROOF", "RENOGY_SOAK_CYCLES", "RENOGY_HA_TEST", "RENOGY_HA_VERSION", "RENOGY_HA_PYTHON"}
)


def setting_variables() -> frozenset[str]:
    return frozenset(info.env for info in settings()) | {CONFIG_ENV}


def unknown_names(environ: Mapping[str, str]) -> list[tuple[str, str]]:
    """(name, hint) for every RENOGY_* variable that no setting reads; the hint names the closest known one."""
    known = setting_variables()
    ignored = known | COMPOSE_VARIABLES | TEST_VARIABLES
    out = []
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name in ignored or name.startswith("RENOGY_DOCKER_"):
            continue
        close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]}?)" if close else " (docs/configuration.md lists every variable)"
        out.append((name, hint))
    return out


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """One message per RENOGY_* variable that no setting reads, with the closest known name."""
    return [
        f"unknown environment variable {name}: no setting reads it{hint}"
        for name, hint in unknown_names(environ)
    ]


@dataclass
class Findings:
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def layout_findings(config: Config) -> Findings:
    """Bank layout and slave ids across reader, simulator and banks."""
    from services.aggregator.banks import layout_from_config  # noqa: PLC0415

    found = Findings()
    try:
        layout = layout_from_config(config.aggregator)
    except ConfigError as exc:
        found.errors.append(str(exc))
        return found
    read = set(config.reader.batteries)
    for index, bank in enumerate(layout.banks):
        for selector in bank.members or ():
            if selector.slave_id not in read:
                found.notes.append(
                    f"aggregator.banks[{index}] ({bank.id!r}) lists battery {selector}, which reader.batteries "
                    f"{sorted(read)} does not read (fine if another reader does)"
                )
    if config.simulator.enabled:
        unread = sorted(set(config.simulator.batteries) - read)
        silent = sorted(read - set(config.simulator.batteries))
        if unread:
            found.notes.append(f"simulator.batteries {unread} are simulated but not in reader.batteries")
        if silent:
            found.errors.append(
                f"reader.batteries {silent} are not simulated (simulator.batteries "
                f"{list(config.simulator.batteries)}): they would never answer"
            )
    return found


def check(
    load: Callable[[], Config], environ: Mapping[str, str] | None = None, *, source: str | None = None
) -> tuple[int, list[str]]:
    """Run every check; ``load`` builds the Config (raising ConfigError). Returns (exit code, lines)."""
    environ = os.environ if environ is None else environ
    errors = unknown_variables(environ)
    notes: list[str] = []
    config: Config | None = None
    try:
        config = load()
    except ConfigError as exc:
        errors.append(str(exc))
    if config is not None:
        found = layout_findings(config)
        errors += found.errors
        notes += found.notes
    source = source or environ.get(CONFIG_ENV) or "no config file"
    lines = [f"error: {e}" for e in errors] + [f"note: {n}" for n in notes]
    if errors:
        lines.append(f"{len(errors)} problem(s) in the configuration ({source} + environment + command line)")
        return 2, lines
    assert config is not None
    used = sorted(name for name in environ if name in setting_variables())
    lines.append(
        f"configuration ok ({source}; environment: {', '.join(used) or 'no RENOGY_* settings'}); "
        f"reader batteries {config.reader.batteries}, broker {_redacted(config.mqtt.url)}"
    )
    return 0, lines


def _redacted(url: str) -> str:
    from services.ops import _redact_url  # noqa: PLC0415

    return _redact_url(url)
