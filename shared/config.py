"""Configuration: one TOML file, every key overridable by environment and command line, validated at start.

The dataclasses below are the single source of truth: each field carries its environment variable
and help text in its metadata, so loading, validation, ``diagnose`` and docs/configuration.md all
come from the same place. Precedence: defaults < TOML file < environment < command-line options.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import math
import os
import re
import tomllib
import types
import typing
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints
from urllib.parse import unquote, urlsplit

import orjson

from shared.mqtt_url import parse_url
from shared.noise_key import InvalidKeyError, decode_key

ENV_PREFIX = "RENOGY_"
# Modbus RTU unicast addresses (0 is broadcast, 248..255 reserved); the simulator and banks use the same.
SLAVE_ID_RANGE = (1, 247)
# Seconds of each phase of reader.scan_duty: BlueZ takes a moment to start and stop discovery.
SCAN_DUTY_RANGE = (0.5, 3600.0)
_UNSET: Any = object()
_MAC_RE = re.compile(r"^([0-9A-Fa-f]{2}[:-]?){5}[0-9A-Fa-f]{2}$")
_NAME_RE = re.compile(r"^[a-z0-9-]{1,31}$")
_INSTANCE_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_IFNAME_RE = re.compile(r"^[^\s/:]{1,15}$")  # Linux IFNAMSIZ - 1, no separators
_LEGACY_ALIAS_RE = re.compile(r"^[!-~]([ -~]{0,46}[!-~])?$")  # the old [device] alias: goes into object ids
DEFAULT_INSTANCE = "default"
DEFAULT_NODE_NAME = "renogy-bt-proxy"
DEFAULT_FRIENDLY_NAME = "Renogy BT Proxy"


# Subcommands that take a setting's command-line flag (services/cli.py; "config" is `config check`).
CLI_SERVICES = ("run", "reader", "aggregator", "gateway")
CLI_COMMON = (*CLI_SERVICES, "simulate-bluez", "status", "diagnose", "healthcheck", "migrate", "config")
CLI_READER = ("run", "reader", "simulate-bluez", "config")
CLI_AGGREGATOR = ("run", "aggregator", "config")
CLI_GATEWAY = ("run", "gateway", "config")


class ConfigError(ValueError):
    """A configuration value is missing, malformed or out of range; the message names the key."""


def setting(
    default: Any,
    env: str,
    help: str,
    *,
    secret: bool = False,
    choices: tuple[str, ...] | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    cli: tuple[str, ...] = (),
    commands: tuple[str, ...] = (),
    metavar: str | None = None,
    check: Callable[[Any], None] | None = None,
) -> Any:
    """A configurable key: default, environment variable and help; optionally its command-line flag.

    ``cli`` names the flag (``--no-...`` for a boolean flag that sets false, any other name on a
    boolean sets true) and ``commands`` the subcommands that take it; services/cli.py generates those
    options (type, choices, help with default and variable) and docs/configuration.md lists them.
    ``check`` validates a value that was given (ValueError with a reason; the key is put in front).
    """
    if bool(cli) != bool(commands):
        raise ValueError(f"setting {env}: cli and commands go together")
    meta = {
        "env": env,
        "help": help,
        "secret": secret,
        "choices": choices,
        "minimum": minimum,
        "maximum": maximum,
        "cli": cli,
        "commands": commands,
        "metavar": metavar,
        "check": check,
    }
    if isinstance(default, list | dict):
        return field(default_factory=default.copy, metadata=meta)
    return field(default=default, metadata=meta)


def _check_url(url: str) -> None:
    parse_url(url)


def _first_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_directory(path: Path) -> None:
    """A directory that exists or can be made: nothing in the way that is not a directory."""
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path} is a file, not a directory")
    base = _first_existing(path)
    if not base.is_dir():
        raise ValueError(f"{path} cannot be made: {base} is a file, not a directory")


def _check_input_file(path: Path) -> None:
    if path.is_dir():
        raise ValueError(f"{path} is a directory, not a file")
    if not path.exists():
        raise ValueError(f"{path} does not exist")
    if not os.access(path, os.R_OK):
        raise ValueError(f"{path} is not readable by this user")


def _check_ca_file(path: Path) -> None:
    import ssl  # noqa: PLC0415 - only when a CA file is configured

    _check_input_file(path)
    try:
        ssl.create_default_context(cafile=str(path))
    except ssl.SSLError as exc:
        raise ValueError(f"{path} holds no usable PEM certificate ({exc.reason or exc})") from None


def _check_mac(address: str) -> None:
    if not _MAC_RE.match(address):
        raise ValueError(f"{address!r} is not a MAC address")


def _check_output_file(path: Path) -> None:
    if path.is_dir():
        raise ValueError(f"{path} is a directory, not a file")
    _check_directory(path.parent)


@dataclass(frozen=True, slots=True)
class MqttConfig:
    url: str = setting(
        "mqtt://127.0.0.1:1883",
        "RENOGY_MQTT_URL",
        "Broker URL: mqtt://host:port or mqtts://host:port; mqtt://user:password@host:port sets the "
        "credentials too (percent-encode special characters)",
        cli=("--mqtt",),
        commands=CLI_COMMON,
        metavar="URL",
        check=_check_url,
    )
    username: str | None = setting(None, "RENOGY_MQTT_USERNAME", "Broker user name")
    password: str | None = setting(None, "RENOGY_MQTT_PASSWORD", "Broker password", secret=True)
    root_topic: str = setting(
        "renogy", "RENOGY_ROOT_TOPIC", "First level of every topic",
        cli=("--root-topic",),
        commands=CLI_COMMON,
        metavar="TOPIC",
    )
    ca_file: Path | None = setting(
        None, "RENOGY_MQTT_CA_FILE", "CA bundle for mqtts:// (system CAs when unset)", check=_check_ca_file
    )
    cert_file: Path | None = setting(
        None, "RENOGY_MQTT_CERT_FILE", "Client certificate for mutual TLS", check=_check_input_file
    )
    key_file: Path | None = setting(
        None, "RENOGY_MQTT_KEY_FILE", "Client key for mutual TLS", secret=True, check=_check_input_file
    )
    tls_insecure: bool = setting(
        False, "RENOGY_MQTT_TLS_INSECURE", "Skip broker certificate host-name checks"
    )
    keepalive: int = setting(
        30, "RENOGY_MQTT_KEEPALIVE", "MQTT keep-alive in seconds", minimum=5, maximum=3600
    )
    reconnect_max_delay: float = setting(
        2.0,
        "RENOGY_MQTT_RECONNECT_MAX_DELAY",
        "Cap of the reconnect backoff in seconds",
        minimum=0.1,
        maximum=300,
    )


@dataclass(frozen=True, slots=True)
class ReaderConfig:
    instance: str = setting(
        "default", "RENOGY_READER_INSTANCE", "Name of this reader in bridge topics",
        cli=("--instance",),
        commands=("reader",),
        metavar="NAME",
    )
    adapter: str = setting(
        "hci0", "RENOGY_ADAPTER", "Bluetooth adapter the reader owns",
        cli=("--adapter",),
        commands=(*CLI_READER, "scan", "probe-bus"),
        metavar="HCI",
    )
    bt2_address: str | None = setting(
        None, "RENOGY_BT2_ADDRESS", "BT-2 MAC address (skips the name scan)",
        cli=("--bt2-address",),
        commands=(*CLI_READER, "migrate", "probe-bus"),
        metavar="MAC",
    )
    bt2_name: str | None = setting(
        None, "RENOGY_BT2_NAME", "BT-2 advertised name, e.g. BT-TH-E3383D0E (first BT-TH-* found when unset)",
        cli=("--bt2-name",),
        commands=(*CLI_READER, "probe-bus"),
        metavar="NAME",
    )
    batteries: list[int] = setting(
        [48, 49, 50, 51], "RENOGY_BATTERIES", "Modbus slave ids on the BT-2's bus",
        cli=("--batteries",),
        commands=CLI_READER,
        metavar="IDS",
    )
    devices: list[str] = setting(
        [], "RENOGY_DEVICES",
        "Other devices on the BT-2's bus as kind:slave pairs (kinds battery, controller, dcc, inverter), "
        "e.g. controller:1,dcc:96; battery:<id> entries, if any, replace reader.batteries",
        cli=("--devices",),
        commands=CLI_READER,
        metavar="KIND:ID,...",
    )
    shunt_address: str | None = setting(
        None, "RENOGY_SHUNT_ADDRESS",
        "MAC address of a Renogy Smart Shunt 300 (RTMShunt300*) to read over its own BLE connection, "
        "published as renogy/bt2/<its address>/shunt/0/reading at most once per poll interval (unset: no shunt)",
        cli=("--shunt-address",),
        commands=CLI_READER,
        metavar="MAC",
        check=_check_mac,
    )
    poll_interval: float = setting(
        30.0, "RENOGY_POLL_INTERVAL", "Seconds from cycle start to cycle start (0 = back to back)", minimum=0,
        cli=("--poll-interval",),
        commands=CLI_READER,
        metavar="S",
    )
    request_timeout: float = setting(
        1.5, "RENOGY_REQUEST_TIMEOUT", "Deadline of one Modbus read in seconds", minimum=0.05, maximum=30
    )
    retries: int = setting(
        2, "RENOGY_RETRIES", "Extra attempts per read after a failure", minimum=0, maximum=10
    )
    info_interval: float = setting(
        600.0,
        "RENOGY_INFO_INTERVAL",
        "Seconds between reads of serial/model/firmware/alarms (5100 x 4, 5104 x 28)",
        minimum=0,
    )
    keep_connected: bool = setting(
        True,
        "RENOGY_KEEP_CONNECTED",
        "Hold the BT-2 connection between cycles (false lets the Renogy app in)",
    )
    connect_timeout: float = setting(
        20.0, "RENOGY_CONNECT_TIMEOUT", "Deadline of connect + notification setup in seconds", minimum=1
    )
    scan_timeout: float = setting(
        15.0, "RENOGY_SCAN_TIMEOUT", "Deadline of the BT-2 search in seconds", minimum=1
    )
    watchdog_cycles: int = setting(
        5, "RENOGY_WATCHDOG_CYCLES", "Cycles without a good reading before escalating recovery", minimum=1
    )
    adapter_reset: bool = setting(
        True, "RENOGY_ADAPTER_RESET", "Power-cycle the adapter through BlueZ when reconnecting does not help"
    )
    proxy: bool = setting(True, "RENOGY_PROXY", "Forward BLE advertisements for the Bluetooth proxy")
    proxy_slots: int = setting(
        2,
        "RENOGY_PROXY_SLOTS",
        "Active Bluetooth proxy: GATT connections Home Assistant may hold through the reader's adapter at "
        "once (the BT-2's own connection is not counted; 0 = passive proxy only)",
        minimum=0,
        maximum=7,
    )
    scan_duty: list[float] = setting(
        [],
        "RENOGY_SCAN_DUTY",
        "Scan duty cycle [active, idle] in seconds: scan for active seconds, then rest for idle seconds, "
        "so Wi-Fi gets the radio it shares with Bluetooth (Pi Zero 2 W, Pi 3; environment: 10,20); "
        "empty = scan all the time",
    )
    pause_during_reads: bool = setting(
        False,
        "RENOGY_PAUSE_DURING_READS",
        "Stop the scanner while a cycle reads the batteries and start it again after (at the latest when "
        "the cycle overruns its deadline), so the BT-2's link gets the radio",
    )
    backend: str | None = setting(
        None,
        "RENOGY_BLE_BACKEND",
        "Custom bleak client backend as module:Class (scanner: module:Class of the scanner)",
        cli=("--ble-backend",),
        commands=(*CLI_READER, "probe-bus"),
        metavar="MODULE:CLASS",
    )
    current_scale: str = setting(
        "auto",
        "RENOGY_CURRENT_SCALE",
        "Current register scale: auto (by family), 0.01 or 0.1",
        choices=("auto", "0.01", "0.1"),
    )
    capture_file: Path | None = setting(
        None,
        "RENOGY_CAPTURE_FILE",
        "Append every request/response with timing as JSON lines (for bug reports)",
        cli=("--capture",),
        commands=CLI_READER,
        metavar="FILE",
        check=_check_output_file,
    )
    outage_buffer: float = setting(
        86400.0,
        "RENOGY_OUTAGE_BUFFER",
        "Readings kept while the broker is unreachable, in seconds of polling (published in order when it "
        "is back; the oldest are dropped first; 0 = none)",
        minimum=0,
        maximum=7 * 86400,
    )


@dataclass(frozen=True, slots=True)
class SimulatorConfig:
    enabled: bool = setting(
        False, "RENOGY_SIMULATE", "Use the built-in BT-2 simulator instead of Bluetooth",
        cli=("--simulate",),
        commands=(*CLI_READER, "scan", "probe-bus"),
    )
    batteries: list[int] = setting(
        [48, 49, 50, 51], "RENOGY_SIM_BATTERIES", "Slave ids of simulated batteries",
        cli=("--sim-batteries",),
        commands=CLI_READER,
        metavar="IDS",
    )
    devices: list[str] = setting(
        [], "RENOGY_SIM_DEVICES",
        "Simulated devices as kind:slave pairs, e.g. battery:48,battery:49,controller:1,dcc:96; battery "
        "entries replace simulator.batteries, and a reader on the simulator reads exactly these unless "
        "reader.batteries or reader.devices is given",
        cli=("--sim-devices",),
        commands=(*CLI_READER, "probe-bus"),
        metavar="KIND:ID,...",
    )
    shunt: bool = setting(
        False, "RENOGY_SIM_SHUNT",
        "Simulate a Smart Shunt 300 on the battery bank (its own BLE device, RTMShunt300*, at "
        "reader.shunt_address when set); a reader on the simulator reads it",
        cli=("--sim-shunt",),
        commands=CLI_READER,
    )
    address: str = setting(
        "C4:64:E3:38:3D:0E",
        "RENOGY_SIM_ADDRESS",
        "MAC address of the simulated BT-2 (another one per simulated reader tries a second BT-2)",
        cli=("--sim-address",),
        commands=CLI_READER,
        metavar="MAC",
    )
    name: str | None = setting(
        None,
        "RENOGY_SIM_NAME",
        "Advertised name of the simulated BT-2 (unset: BT-TH- + the last 8 hex digits of its MAC)",
        cli=("--sim-name",),
        commands=CLI_READER,
        metavar="NAME",
    )
    speed: float = setting(
        1.0, "RENOGY_SIM_SPEED", "Simulated-time acceleration of the battery physics", minimum=0,
        cli=("--sim-speed",),
        commands=CLI_READER,
        metavar="X",
    )
    latency_scale: float = setting(
        1.0,
        "RENOGY_SIM_LATENCY_SCALE",
        "Multiplier of the modelled BLE/RS485 latencies (0 = instant)",
        minimum=0,
        cli=("--sim-latency-scale",),
        commands=CLI_READER,
        metavar="X",
    )
    seed: int = setting(
        0, "RENOGY_SIM_SEED", "Random seed of physics noise and faults",
        cli=("--sim-seed",),
        commands=CLI_READER,
        metavar="N",
    )
    fault_rate: float = setting(
        0.0, "RENOGY_SIM_FAULT_RATE", "Share of requests hit by an injected fault", minimum=0, maximum=1,
        cli=("--sim-fault-rate",),
        commands=CLI_READER,
        metavar="P",
    )
    mtu: int = setting(
        251,
        "RENOGY_SIM_MTU",
        "ATT MTU: 251 (one notification per reply) or 23 (20-byte chunks)",
        minimum=23,
        maximum=517,
        cli=("--sim-mtu",),
        commands=CLI_READER,
        metavar="BYTES",
    )
    truth_log: Path | None = setting(
        None, "RENOGY_SIM_TRUTH_LOG", "Write every genuine reply as JSON lines here",
        cli=("--sim-truth-log",),
        commands=CLI_READER,
        metavar="FILE",
        check=_check_output_file,
    )
    max_read_words: int = setting(
        125,
        "RENOGY_SIM_MAX_READ_WORDS",
        "Longest read a simulated pack answers; a longer one gets exception 03 (a pack that refuses the "
        "merged 5000 x 49 read)",
        minimum=1,
        maximum=125,
    )
    read_reserved: bool = setting(
        False,
        "RENOGY_SIM_READ_RESERVED",
        "Whether a simulated pack answers a read spanning the reserved register 5034 (false: exception 02, "
        "like the real pack)",
    )
    late_delay: float = setting(
        2.5,
        "RENOGY_SIM_LATE_DELAY",
        "Seconds a 'late' fault holds a reply back (absolute, not scaled; keep it above reader.request_timeout)",
        minimum=0,
    )


@dataclass(frozen=True, slots=True)
class AggregatorConfig:
    instance: str = setting(
        "default", "RENOGY_AGGREGATOR_INSTANCE", "Name of this aggregator in bridge topics",
        cli=("--instance",),
        commands=("aggregator",),
        metavar="NAME",
    )
    profile: str = setting(
        "default",
        "RENOGY_PROFILE",
        "Entity set: default (55 for 4 batteries) or extended",
        choices=("default", "extended"),
        cli=("--profile",),
        commands=CLI_AGGREGATOR,
    )
    max_gap: float | None = setting(
        None,
        "RENOGY_MAX_GAP",
        "Longest interval integrated into energy, s (default 3 x poll interval)",
        minimum=0,
    )
    stale_after: float | None = setting(
        None,
        "RENOGY_STALE_AFTER",
        "Age after which a value becomes unknown, s (default 3 x poll interval)",
        minimum=0,
    )
    save_interval: float = setting(
        300.0,
        "RENOGY_SAVE_INTERVAL",
        "Longest time between writes of the state file, s; it is written only when a counter changed "
        "(the retained device states are the second copy in between; spares SD cards)",
        minimum=1,
        maximum=86400,
    )
    forget_after: float = setting(
        7 * 86400.0,
        "RENOGY_FORGET_AFTER",
        "A battery without a reading for this long is removed from Home Assistant, s (its counter is kept)",
        minimum=60,
    )
    banks: list[dict[str, Any]] = setting(
        [],
        "RENOGY_BANKS",
        'Banks as a list of {"id", "name", "batteries": ["<bt2>:<slave>" or slave id]}; empty = one bank of all',
    )
    batteries: list[dict[str, Any]] = setting(
        [],
        "RENOGY_AGGREGATOR_BATTERIES",
        'Per-battery device ids/names as a list of {"slave_id", "bt2" (optional), "id", "name"}; '
        "gives one of two BT-2s that report the same slave id its own device",
    )


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    instance: str = setting(
        DEFAULT_INSTANCE,
        "RENOGY_GATEWAY_INSTANCE",
        "Name of this gateway in bridge topics (not default: also its own node name and MAC)",
        cli=("--instance",),
        commands=("gateway",),
        metavar="NAME",
    )
    api_port: int = setting(
        6053, "RENOGY_API_PORT", "ESPHome native API port", minimum=0, maximum=65535,
        cli=("--api-port",),
        commands=(*CLI_GATEWAY, "healthcheck"),
        metavar="PORT",
    )
    bind: str = setting("0.0.0.0", "RENOGY_API_BIND", "Address the API listens on")
    api_key: str | None = setting(
        None, "RENOGY_API_KEY", "Noise encryption key (base64 of 32 bytes; renogy-proxy keygen)", secret=True,
        cli=("--api-key",),
        commands=CLI_GATEWAY,
        metavar="KEY",
    )
    name: str = setting(
        DEFAULT_NODE_NAME,
        "RENOGY_NAME",
        "Node name: [a-z0-9-], at most 31 characters (unset: renogy-bt-proxy-<instance> for another "
        "gateway.instance)",
        cli=("--name",),
        commands=CLI_GATEWAY,
        metavar="NAME",
    )
    friendly_name: str = setting(
        DEFAULT_FRIENDLY_NAME,
        "RENOGY_FRIENDLY_NAME",
        "Name shown in Home Assistant (unset: 'Renogy BT Proxy (<instance>)' for another gateway.instance)",
    )
    mac: str | None = setting(
        None,
        "RENOGY_MAC",
        "MAC address reported to Home Assistant (default: host NIC, made distinct for another gateway.instance)",
    )
    mdns: bool = setting(
        True, "RENOGY_MDNS", "Announce _esphomelib._tcp on the LAN",
        cli=("--no-mdns",),
        commands=CLI_GATEWAY,
    )
    mdns_interface: str | None = setting(
        None,
        "RENOGY_MDNS_INTERFACE",
        "Announce only this interface's addresses (default: LAN interfaces, default route first; "
        "container bridges, veth and VPN tunnels never)",
    )
    mdns_addresses: list[str] = setting(
        [],
        "RENOGY_MDNS_ADDRESSES",
        "Addresses to announce instead of the automatic choice, first = the one Home Assistant uses "
        "(environment: comma-separated)",
    )
    max_clients: int = setting(
        16, "RENOGY_MAX_CLIENTS", "Simultaneous API connections", minimum=1, maximum=256
    )
    discovery: bool = setting(
        False,
        "RENOGY_HA_DISCOVERY",
        "Also publish Home Assistant MQTT discovery (duplicates the API entities)",
    )
    discovery_prefix: str = setting(
        "homeassistant",
        "RENOGY_HA_DISCOVERY_PREFIX",
        "Home Assistant MQTT discovery prefix (its birth topic is <prefix>/status)",
    )
    entity_naming: str = setting(
        "default",
        "RENOGY_ENTITY_NAMING",
        "Entity ids and names: default (a device per battery and bank) or legacy (one device with the "
        "object ids, names and keys of jorik41/renogy-bt, so Home Assistant keeps its entities; "
        "docs/migrating.md)",
        choices=("default", "legacy"),
        cli=("--entity-naming",),
        commands=CLI_GATEWAY,
    )
    legacy_device_name: str | None = setting(
        None,
        "RENOGY_LEGACY_DEVICE_NAME",
        "legacy naming: the old system's [device] alias in front of every object id (unset: the BT-2's "
        "name, BT-TH- + the last 8 hex digits of its MAC)",
    )


def _default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "renogy-proxy"


@dataclass(frozen=True, slots=True)
class Config:
    state_dir: Path = setting(
        _default_state_dir(), "RENOGY_STATE_DIR", "Directory for persistent state",
        cli=("--state-dir",),
        commands=CLI_COMMON,
        metavar="DIR",
        check=_check_directory,
    )
    log_level: str = setting(
        "info", "RENOGY_LOG_LEVEL", "Log level", choices=("debug", "info", "warning", "error"),
        cli=("--log-level",),
        commands=(*CLI_COMMON, "scan", "probe-bus"),
    )
    controls: bool = setting(
        False,
        "RENOGY_CONTROLS",
        "Allow writes to devices (opt-in): the gateway serves each family's switches and the reader carries "
        "them out; off, a command gets a controls_disabled result",
        cli=("--controls",),
        commands=CLI_SERVICES,
    )
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    reader: ReaderConfig = field(default_factory=ReaderConfig)
    simulator: SimulatorConfig = field(default_factory=SimulatorConfig)
    aggregator: AggregatorConfig = field(default_factory=AggregatorConfig)
    gateway: GatewayConfig = field(default_factory=GatewayConfig)

    @property
    def aggregator_max_gap(self) -> float:
        return self.aggregator.max_gap if self.aggregator.max_gap is not None else 3 * _interval(self)

    @property
    def aggregator_stale_after(self) -> float:
        return self.aggregator.stale_after if self.aggregator.stale_after is not None else 3 * _interval(self)


def _interval(config: Config) -> float:
    # The aggregator shares the reader's poll interval; back-to-back polling (0) still needs a
    # sensible horizon for gaps and staleness.
    return max(config.reader.poll_interval, 10.0)


_SECTIONS: dict[str, type] = {
    "mqtt": MqttConfig,
    "reader": ReaderConfig,
    "simulator": SimulatorConfig,
    "aggregator": AggregatorConfig,
    "gateway": GatewayConfig,
}


@dataclass(frozen=True, slots=True)
class SettingInfo:
    path: str
    env: str
    default: Any
    help: str
    secret: bool
    type_name: str
    # The value's type without Optional (str, int, float, bool, Path, list[int], ...).
    base: Any = str
    choices: tuple[str, ...] | None = None
    # The command-line flag (empty: none), the subcommands that take it and its metavar.
    cli: tuple[str, ...] = ()
    commands: tuple[str, ...] = ()
    metavar: str | None = None


def settings() -> Iterator[SettingInfo]:
    """Every configurable key, in file order."""
    for path, fld, hint in _walk():
        yield SettingInfo(
            path,
            fld.metadata["env"],
            _default_of(fld),
            fld.metadata["help"],
            fld.metadata["secret"],
            _type_name(hint),
            base=_unwrap_optional(hint)[0],
            choices=fld.metadata["choices"],
            cli=fld.metadata["cli"],
            commands=fld.metadata["commands"],
            metavar=fld.metadata["metavar"],
        )


def _walk() -> Iterator[tuple[str, dataclasses.Field[Any], Any]]:
    top_hints = get_type_hints(Config)
    for fld in dataclasses.fields(Config):
        if fld.name in _SECTIONS:
            hints = get_type_hints(_SECTIONS[fld.name])
            for sub in dataclasses.fields(_SECTIONS[fld.name]):
                yield f"{fld.name}.{sub.name}", sub, hints[sub.name]
        else:
            yield fld.name, fld, top_hints[fld.name]


def _default_of(fld: dataclasses.Field[Any]) -> Any:
    if fld.default is not dataclasses.MISSING:
        return fld.default
    if fld.default_factory is not dataclasses.MISSING:
        return fld.default_factory()
    return None  # pragma: no cover


def _type_name(hint: Any) -> str:
    base, optional = _unwrap_optional(hint)
    name = {str: "string", int: "integer", float: "number", bool: "boolean", Path: "path"}.get(base)
    if name is None:
        name = {(int,): "list of integers", (float,): "list of numbers", (str,): "list of strings"}.get(
            get_args(base), "list of tables"
        )
    return f"{name} (optional)" if optional else name


def _unwrap_optional(hint: Any) -> tuple[Any, bool]:
    if get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        return args[0], True
    return hint, False


def load_config(
    path: Path | str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build the effective configuration; raise ConfigError naming the key on any invalid value."""
    environ = os.environ if environ is None else environ
    file_values: dict[str, Any] = {}
    if path is not None:
        file_values = _read_toml(Path(path))
    raw: dict[str, dict[str, Any]] = {"": {}}
    for name in _SECTIONS:
        raw[name] = {}
    for key_path, fld, hint in _walk():
        section, _, key = key_path.rpartition(".")
        source: str | None = None
        value: Any = _UNSET
        file_section = file_values.get(section, {}) if section else file_values
        if key in file_section:
            source, value = f"{key_path} in {path}", file_section[key]
        env_name = fld.metadata["env"]
        if env_name in environ and environ[env_name] != "":
            source = f"{key_path} (environment {env_name})"
            value = _from_env(source, environ[env_name], hint)
        if overrides and key_path in overrides and overrides[key_path] is not None:
            source, value = f"{key_path} (command line)", overrides[key_path]
        if value is _UNSET:
            continue
        raw[section][key] = _validate(source or key_path, value, hint, fld.metadata)
    _check_unknown(file_values, path)
    sections = {name: cls(**raw[name]) for name, cls in _SECTIONS.items()}
    sections["mqtt"] = _url_credentials(sections["mqtt"])
    sections["gateway"] = _instance_identity(sections["gateway"], explicit=raw["gateway"].keys())
    sections["reader"], sections["simulator"] = _device_lists(
        sections["reader"], sections["simulator"], reader_given=raw["reader"].keys()
    )
    config = Config(**raw[""], **sections)
    _cross_check(config)
    return config


# Kinds that answer Modbus on a BT-2's RS485 bus (the Smart Shunt is a BLE device of its own).
BUS_KINDS = ("battery", "controller", "dcc", "inverter")


def device_pairs(key: str, entries: Collection[str]) -> list[tuple[str, int]]:
    """``["controller:1", ...]`` as (kind, slave id) pairs; ConfigError naming ``key`` for a bad entry."""
    pairs: list[tuple[str, int]] = []
    low, high = 1, 255
    for entry in entries:
        kind, sep, slave_text = str(entry).strip().partition(":")
        kind = kind.strip().lower()
        if not sep or kind not in BUS_KINDS or not slave_text.strip().isascii() or not slave_text.strip().isdigit():
            raise ConfigError(
                f"{key}: {entry!r} is not kind:slave (kinds {', '.join(BUS_KINDS)}; e.g. controller:1)"
            )
        slave = int(slave_text)
        if not low <= slave <= high:
            raise ConfigError(f"{key}: slave id {slave} of {entry!r} outside {low}..{high}")
        if (kind, slave) in pairs or any(other == slave for _, other in pairs):
            raise ConfigError(f"{key}: slave id {slave} is given twice (one bus, one device per id)")
        pairs.append((kind, slave))
    return pairs


def _device_lists(
    reader: ReaderConfig, simulator: SimulatorConfig, *, reader_given: Collection[str]
) -> tuple[ReaderConfig, SimulatorConfig]:
    """Apply the kind:slave lists: battery entries replace the battery lists; on the simulator the
    reader reads what is simulated unless told otherwise."""
    sim_pairs = device_pairs("simulator.devices", simulator.devices)
    if sim_pairs:
        sim_batteries = [slave for kind, slave in sim_pairs if kind == "battery"]
        simulator = dataclasses.replace(
            simulator,
            devices=[f"{kind}:{slave}" for kind, slave in sim_pairs],
            batteries=sim_batteries or simulator.batteries,
        )
        if simulator.enabled and not {"batteries", "devices"} & set(reader_given):
            reader = dataclasses.replace(reader, batteries=simulator.batteries, devices=list(simulator.devices))
    pairs = device_pairs("reader.devices", reader.devices)
    batteries = [slave for kind, slave in pairs if kind == "battery"]
    reader = dataclasses.replace(
        reader,
        batteries=batteries or reader.batteries,
        devices=[f"{kind}:{slave}" for kind, slave in pairs if kind != "battery"],
    )
    return reader, simulator


def other_devices(entries: Collection[str]) -> list[tuple[str, int]]:
    """The non-battery (kind, slave) pairs of an already checked reader.devices / simulator.devices."""
    return [(kind, slave) for kind, slave in device_pairs("devices", entries) if kind != "battery"]


def _url_credentials(mqtt: MqttConfig) -> MqttConfig:
    """mqtt://USER:PASSWORD@host: the URL's credentials become mqtt.username/password (percent-decoded).

    Both given and different is an error rather than a silent choice; no message shows a password.
    """
    parts = urlsplit(mqtt.url if "://" in mqtt.url else f"mqtt://{mqtt.url}")
    if parts.username is None and parts.password is None:
        return mqtt
    user = unquote(parts.username or "")
    password = None if parts.password is None else unquote(parts.password)
    if not user:
        raise ConfigError("mqtt.url: a password without a user name; write mqtt://USER:PASSWORD@HOST:PORT")
    if mqtt.username is not None and mqtt.username != user:
        raise ConfigError(
            f"mqtt.url names the user {user!r} but mqtt.username (RENOGY_MQTT_USERNAME) is {mqtt.username!r}; "
            "set the credentials in one place"
        )
    if password is not None and mqtt.password is not None and password != mqtt.password:
        raise ConfigError(
            "mqtt.url and mqtt.password (RENOGY_MQTT_PASSWORD) carry different passwords; "
            "set the credentials in one place"
        )
    return dataclasses.replace(mqtt, username=user, password=password if password is not None else mqtt.password)


def instance_node_name(instance: str, base: str = DEFAULT_NODE_NAME) -> str:
    """``<base>-<instance>`` as a valid node name (a-z, 0-9, '-', at most 31 characters)."""
    slug = re.sub(r"[^a-z0-9-]", "-", instance.lower())
    name = f"{base}-{slug}"
    if len(name) > 31:
        # Keep long instance names apart: a short hash of the full name after a truncated prefix.
        digest = hashlib.sha256(instance.encode()).hexdigest()[:4]
        name = f"{base}-{slug[: max(0, 31 - len(base) - 6)]}-{digest}"
    return name


def _instance_identity(gateway: GatewayConfig, explicit: Collection[str]) -> GatewayConfig:
    """Another gateway.instance is another device in Home Assistant, so it gets its own name and
    title unless they are set; the default instance keeps the defaults existing entries know."""
    if gateway.instance == DEFAULT_INSTANCE:
        return gateway
    name = gateway.name if "name" in explicit else instance_node_name(gateway.instance)
    friendly = gateway.friendly_name
    if "friendly_name" not in explicit:
        friendly = f"{DEFAULT_FRIENDLY_NAME} ({gateway.instance})"
    return dataclasses.replace(gateway, name=name, friendly_name=friendly)


def _read_toml(path: Path) -> dict[str, Any]:
    where = f"config file {path} (--config / RENOGY_CONFIG)"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{where} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"{where} is a directory; name the TOML file itself") from None
    except OSError as exc:
        raise ConfigError(f"{where} cannot be read: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{where} is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}); save it as UTF-8"
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where} is not valid TOML: {exc}") from None


def _check_unknown(file_values: Mapping[str, Any], path: Path | str | None) -> None:
    top = {f.name for f in dataclasses.fields(Config)}
    for key, value in file_values.items():
        if key not in top:
            raise ConfigError(f"unknown key {key!r} in {path}")
        if key in _SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"{key} in {path} must be a table ([{key}])")
            known = {f.name for f in dataclasses.fields(_SECTIONS[key])}
            for sub in value:
                if sub not in known:
                    raise ConfigError(f"unknown key {key}.{sub!r} in {path}")


def _from_env(where: str, text: str, hint: Any) -> Any:
    base, _ = _unwrap_optional(hint)
    if get_origin(base) is list:
        if get_args(base) in ((int,), (float,), (str,)):
            return [part.strip() for part in text.split(",") if part.strip()]
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise ConfigError(f"{where}: not JSON ({exc}); give a JSON list of objects, [{{...}}, ...]") from None
    return text


def _validate(where: str, value: Any, hint: Any, meta: Mapping[str, Any]) -> Any:
    base, optional = _unwrap_optional(hint)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where}: a value is required")
    try:
        result = _coerce(value, base)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if meta.get("choices") and str(result) not in meta["choices"]:
        raise ConfigError(f"{where}: {result!r} is not one of {', '.join(meta['choices'])}")
    if isinstance(result, int | float) and not isinstance(result, bool):
        low, high = meta.get("minimum"), meta.get("maximum")
        if low is not None and result < low:
            raise ConfigError(f"{where}: {result} is below the minimum {low}")
        if high is not None and result > high:
            raise ConfigError(f"{where}: {result} is above the maximum {high}")
    if meta.get("check") is not None:
        try:
            meta["check"](result)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    return result


def _coerce(value: Any, base: Any) -> Any:
    if base is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in {"1", "true", "yes", "on"}:
            return True
        if text in {"0", "false", "no", "off"}:
            return False
        raise ValueError(f"expected true or false, got {value!r}")
    if base is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"expected an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"expected an integer, got {value!r}") from None
    if base is float:
        if isinstance(value, bool):
            raise ValueError(f"expected a number, got {value!r}")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"expected a number, got {value!r}") from None
        if not math.isfinite(number):
            raise ValueError(f"expected a finite number, got {value!r}")
        return number
    if base is str:
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ValueError(f"expected a string, got {value!r}")
        return str(value)
    if base is Path:
        if not isinstance(value, str | Path):
            raise ValueError(f"expected a path, got {value!r}")
        return Path(value).expanduser()
    if get_origin(base) is list:
        if not isinstance(value, list | tuple):
            raise ValueError(f"expected a list, got {value!r}")
        if get_args(base) in ((int,), (float,), (str,)):
            return [_coerce(item, get_args(base)[0]) for item in value]
        if not all(isinstance(item, dict) for item in value):
            raise ValueError("expected a list of tables")
        return [dict(item) for item in value]
    raise TypeError(f"unsupported setting type {base!r}")  # pragma: no cover


def _cross_check(config: Config) -> None:
    gateway = config.gateway
    if not _NAME_RE.match(gateway.name):
        raise ConfigError(f"gateway.name: {gateway.name!r} must be 1-31 characters of a-z, 0-9 and '-'")
    if gateway.mac is not None and not _MAC_RE.match(gateway.mac):
        raise ConfigError(f"gateway.mac: {gateway.mac!r} is not a MAC address")
    if gateway.legacy_device_name is not None and not _LEGACY_ALIAS_RE.match(gateway.legacy_device_name):
        raise ConfigError(
            f"gateway.legacy_device_name: {gateway.legacy_device_name!r} must be 1-48 printable ASCII characters, "
            "no leading or trailing space (the old [device] alias, e.g. BT-TH-E3383D0E)"
        )
    if gateway.mdns_interface is not None and not _IFNAME_RE.match(gateway.mdns_interface):
        raise ConfigError(f"gateway.mdns_interface: {gateway.mdns_interface!r} is not an interface name")
    for address in gateway.mdns_addresses:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise ConfigError(f"gateway.mdns_addresses: {address!r} is not an IP address") from None
    if config.reader.bt2_address is not None and not _MAC_RE.match(config.reader.bt2_address):
        raise ConfigError(f"reader.bt2_address: {config.reader.bt2_address!r} is not a MAC address")
    if not re.match(r"^([0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2}$", config.simulator.address):
        raise ConfigError(
            f"simulator.address: {config.simulator.address!r} is not a MAC address (AA:BB:CC:DD:EE:FF)"
        )
    if config.simulator.name is not None and not 1 <= len(config.simulator.name.encode()) <= 29:
        raise ConfigError(
            f"simulator.name: {config.simulator.name!r} must be 1-29 bytes (it goes into an advertisement)"
        )
    for key, ids in (
        ("reader.batteries", config.reader.batteries),
        ("simulator.batteries", config.simulator.batteries),
    ):
        if not ids:
            raise ConfigError(f"{key}: at least one slave id is required")
        low, high = SLAVE_ID_RANGE
        for slave in ids:
            if not low <= slave <= high:
                raise ConfigError(f"{key}: slave id {slave} outside {low}..{high}")
        if len(set(ids)) != len(ids):
            raise ConfigError(f"{key}: duplicate slave ids in {ids}")
    for key, ids, entries in (
        ("reader.devices", config.reader.batteries, config.reader.devices),
        ("simulator.devices", config.simulator.batteries, config.simulator.devices),
    ):
        taken = sorted({slave for _, slave in other_devices(entries)} & set(ids))
        if taken:
            raise ConfigError(f"{key}: slave id {taken[0]} is also a battery's (one bus, one device per id)")
    for key, name in (
        ("reader.instance", config.reader.instance),
        ("aggregator.instance", config.aggregator.instance),
        ("gateway.instance", config.gateway.instance),
    ):
        if not _INSTANCE_RE.match(name):
            raise ConfigError(f"{key}: {name!r} must be letters, digits, '_' or '-'")
    if not re.match(r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$", config.mqtt.root_topic):
        raise ConfigError(
            f"mqtt.root_topic: {config.mqtt.root_topic!r} must be topic levels without wildcards"
        )
    if not re.match(r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$", config.gateway.discovery_prefix):
        raise ConfigError(
            f"gateway.discovery_prefix: {config.gateway.discovery_prefix!r} must be topic levels without wildcards"
        )
    duty = config.reader.scan_duty
    if duty and (len(duty) != 2 or not all(SCAN_DUTY_RANGE[0] <= part <= SCAN_DUTY_RANGE[1] for part in duty)):
        raise ConfigError(
            f"reader.scan_duty: {duty} must be [active, idle], each {SCAN_DUTY_RANGE[0]:g} to "
            f"{SCAN_DUTY_RANGE[1]:g} seconds (e.g. [10, 20]), or [] to scan all the time"
        )
    if config.reader.backend is not None and ":" not in config.reader.backend:
        raise ConfigError(f"reader.backend: {config.reader.backend!r} must be module:Class")
    _check_client_cert(config.mqtt)
    if config.gateway.api_key is not None:
        try:
            decode_key(config.gateway.api_key)
        except InvalidKeyError as exc:
            raise ConfigError(f"gateway.api_key: {exc}") from None


def _check_client_cert(mqtt: MqttConfig) -> None:
    """Mutual TLS: the certificate and its key must load together (paho would raise at connect)."""
    if mqtt.cert_file is None:
        if mqtt.key_file is not None:
            raise ConfigError("mqtt.key_file is set without mqtt.cert_file (RENOGY_MQTT_CERT_FILE)")
        return
    import ssl  # noqa: PLC0415 - only when a client certificate is configured

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    key = None if mqtt.key_file is None else str(mqtt.key_file)
    try:
        # A callable password: an encrypted key fails here instead of prompting on the terminal.
        context.load_cert_chain(str(mqtt.cert_file), key, password=lambda: b"")
    except ssl.SSLError as exc:
        raise ConfigError(
            f"mqtt.cert_file / mqtt.key_file: {mqtt.cert_file} and {mqtt.key_file or 'its key'} do not load as a "
            f"client certificate and unencrypted key ({exc.reason or exc})"
        ) from None


def effective(config: Config, *, mask_secrets: bool = True) -> dict[str, Any]:
    """The configuration as a plain nested dict, secrets masked (for ``diagnose``)."""
    out: dict[str, Any] = {}
    for key_path, fld, _ in _walk():
        section, _, key = key_path.rpartition(".")
        value = getattr(getattr(config, section), key) if section else getattr(config, key)
        if isinstance(value, Path):
            value = str(value)
        if mask_secrets and fld.metadata["secret"] and value:
            value = "***"
        (out.setdefault(section, {}) if section else out)[key] = value
    return out


def env_for(overrides: Mapping[str, Any]) -> dict[str, str]:
    """Environment variables that carry these key-path overrides to a child process."""
    by_path = {path: fld for path, fld, _ in _walk()}
    env: dict[str, str] = {}
    for key_path, value in overrides.items():
        if value is None:
            continue
        name = by_path[key_path].metadata["env"]
        if isinstance(value, bool):
            env[name] = "true" if value else "false"
        elif isinstance(value, list) and all(isinstance(v, int | float | str) for v in value):
            env[name] = ",".join(str(v) for v in value)
        elif isinstance(value, list | dict):
            env[name] = orjson.dumps(value).decode()
        else:
            env[name] = str(value)
    return env
