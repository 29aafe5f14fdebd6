"""`renogy-proxy migrate`: from the old system (jorik41/renogy-bt) to this one.

* ``migrate config.ini`` turns the old INI file into the equivalent TOML file, with a comment for every
  old option that has no counterpart here (and why);
* ``migrate --energy energy_totals.json`` imports the old energy totals into the aggregator's state
  file, through the same store the aggregator uses (atomic replace). Counters only go up: when one of
  ours is already higher than the old total, nothing is written.

docs/migrating.md walks through the whole switch.
"""

from __future__ import annotations

import configparser
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from services.aggregator.banks import layout_from_config
from services.aggregator.energy import MAX_COUNTER_WH
from services.aggregator.store import StateStore
from shared.config import SCAN_DUTY_RANGE, Config
from shared.noise_key import InvalidKeyError, decode_key
from shared.topics import bt2_id

_MAC = re.compile(r"^([0-9A-Fa-f]{2}[:-]?){5}[0-9A-Fa-f]{2}$")
_NODE_NAME = re.compile(r"^[a-z0-9-]{1,31}$")
_ALIAS_KEY = re.compile(r"^(?P<alias>.+)_(?P<slave>\d{1,3})$")


class MigrateError(ValueError):
    """The old file cannot be converted or imported; the message says why and what to do."""


# --- config.ini -> TOML -------------------------------------------------------------------------------


@dataclass
class _Converted:
    values: dict[str, dict[str, Any]] = field(default_factory=dict)
    origin: dict[tuple[str, str], str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def set(self, path: str, value: Any, origin: str) -> None:
        section, key = path.split(".")
        self.values.setdefault(section, {})[key] = value
        self.origin[(section, key)] = origin

    def note(self, section: str, option: str, value: str, why: str) -> None:
        self.notes.append(f"[{section}] {option} = {value}: {why}")


_NO_COUNTERPART: dict[tuple[str, str], str] = {
    ("device", "energy_file"): "the totals live in the aggregator's state file; import them with "
    "`renogy-proxy migrate --energy energy_totals.json`",
    ("data", "enable_polling"): "the reader always polls (every reader.poll_interval)",
    ("data", "temperature_unit"): "temperatures are published in °C; Home Assistant shows them in the unit "
    "of its unit system (the temperature device class converts), so history carries on",
    ("data", "fields"): "the entity set is fixed (aggregator.profile); legacy naming serves the old default "
    "set of 8 sensors per battery and 23 for the bank",
    ("data", "poll_after_proxy_cycle"): "no coupling of reads to the proxy's scan cycle",
    ("data", "poll_cycle_dwell_seconds"): "no coupling of reads to the proxy's scan cycle",
    ("data", "poll_cycle_timeout_seconds"): "no coupling of reads to the proxy's scan cycle",
    ("data", "renogy_read_timeout_seconds"): "every BLE call has its own deadline (reader.request_timeout, "
    "reader.connect_timeout)",
    ("mqtt", "enabled"): "MQTT is how our services talk to each other: always on",
    ("mqtt", "topic"): "readings and device states are published under mqtt.root_topic (renogy/...); "
    "see docs/mqtt.md",
    ("mqtt", "homeassistant_discovery"): "Home Assistant gets the batteries over the ESPHome API; "
    "gateway.discovery = true would add MQTT entities under other ids (the old MQTT entities are not "
    "continued; remove them in Home Assistant)",
    ("home_assistant_proxy", "enabled"): "the gateway is always on",
    ("home_assistant_proxy", "use_native_api"): "the ESPHome native API is the only way",
    ("home_assistant_proxy", "with_renogy_client"): "the reader always reads the batteries; "
    "reader.proxy (default true) forwards advertisements",
    ("home_assistant_proxy", "esphome_sensors"): "the gateway always serves the batteries' entities",
    ("home_assistant_proxy", "renogy_poll_mode"): "one mode: a cycle every reader.poll_interval",
    ("home_assistant_proxy", "scan_mode"): "the scanner follows the mode Home Assistant asks for",
    ("home_assistant_proxy", "airtime_settle_seconds"): "no counterpart",
    ("home_assistant_proxy", "airtime_window_seconds"): "no counterpart",
    ("home_assistant_proxy", "health_check_interval"): "the reader's watchdog (reader.watchdog_cycles, "
    "reader.adapter_reset) replaces the advertisement-gap monitor",
    ("home_assistant_proxy", "health_check_threshold"): "see reader.watchdog_cycles",
    ("home_assistant_proxy", "health_reset_adapter"): "see reader.adapter_reset",
    ("home_assistant_proxy", "health_reset_limit"): "see reader.watchdog_cycles",
}
_HTTP_PROXY = ("host", "port", "ssl", "endpoint", "fallback_endpoints", "source", "token", "access_token")
_KEY_OPTIONS = ("api_key", "encryption_key", "noise_psk", "api_encryption_key")


def convert_config(text: str, source: str = "config.ini") -> str:
    """The TOML equivalent of an old config.ini (MigrateError when it is not one)."""
    parser = configparser.ConfigParser(inline_comment_prefixes=("#", ";"), interpolation=None)
    try:
        parser.read_string(text, source)
    except configparser.Error as exc:
        raise MigrateError(f"{source} is not an INI file: {exc}") from None
    if not parser.has_section("device"):
        raise MigrateError(f"{source} has no [device] section: not a config.ini of jorik41/renogy-bt")
    out = _Converted()
    handled: set[tuple[str, str]] = set()

    def get(section: str, option: str) -> str | None:
        if not parser.has_option(section, option):
            return None
        handled.add((section, option))
        value = parser.get(section, option).strip()
        return value or None

    _device(out, get)
    _data_and_schedule(out, get)
    _mqtt(out, get, parser)
    _proxy(out, get)
    for section in parser.sections():
        for option, value in parser.items(section):
            if (section, option) in handled:
                continue
            if (section, option) in _NO_COUNTERPART:
                out.note(section, option, value, _NO_COUNTERPART[(section, option)])
            elif section in ("remote_logging", "pvoutput"):
                out.note(
                    section,
                    option,
                    value,
                    f"no counterpart: [{section}] is not part of this system "
                    "(subscribe to renogy/device/+/state on MQTT to forward values)",
                )
            elif section == "home_assistant_proxy" and option in _HTTP_PROXY:
                out.note(
                    section,
                    option,
                    value,
                    "the old HTTP proxy mode; Home Assistant's ESPHome "
                    "integration talks to the gateway directly",
                )
            else:
                out.note(section, option, value, "not known to this converter; no counterpart")
    # Whatever was read but shows up nowhere yet: say so, so that every old option is accounted for.
    mentioned = " ".join([*out.origin.values(), *out.notes])
    for section, option in sorted(handled):
        if f"[{section}] {option}" not in mentioned:
            value = parser.get(section, option).strip()
            why = "empty: nothing to carry over" if not value else "taken into account above"
            if (section, option) == ("device", "type"):
                why = "smart batteries: what this system reads"
            out.note(section, option, value, why)
    return _render(out, source)


Getter = Callable[[str, str], "str | None"]


def _device(out: _Converted, get: Getter) -> None:
    kind = get("device", "type")
    if kind is not None and kind.upper() != "RNG_BATT":
        raise MigrateError(
            f"[device] type = {kind}: this system reads Renogy smart batteries (RNG_BATT) only"
        )
    mac = get("device", "mac_addr")
    if mac is not None:
        if not _MAC.match(mac):
            raise MigrateError(f"[device] mac_addr = {mac} is not a MAC address")
        out.set("reader.bt2_address", mac.upper(), "[device] mac_addr")
    adapter = get("device", "adapter")
    if adapter is not None:
        out.set("reader.adapter", adapter, "[device] adapter")
    ids = get("device", "device_id")
    if ids is not None:
        try:
            slaves = [int(part) for part in ids.split(",") if part.strip()]
        except ValueError:
            raise MigrateError(f"[device] device_id = {ids} is not a list of slave ids") from None
        out.set("reader.batteries", slaves, "[device] device_id")
    out.set(
        "gateway.entity_naming", "legacy", "legacy naming: Home Assistant keeps the old entities and history"
    )
    alias = get("device", "alias")
    if alias is not None:
        out.set("gateway.legacy_device_name", alias, "[device] alias")


def _data_and_schedule(out: _Converted, get: Getter) -> None:
    interval = get("data", "poll_interval")
    mode = (get("home_assistant_proxy", "renogy_poll_mode") or "continuous").lower()
    read_interval = get("home_assistant_proxy", "renogy_read_interval")
    origin = "[data] poll_interval"
    if mode == "scheduled" and read_interval is not None:
        interval, origin = read_interval, "[home_assistant_proxy] renogy_read_interval (scheduled mode)"
    elif read_interval is not None:
        out.note(
            "home_assistant_proxy",
            "renogy_read_interval",
            read_interval,
            "used by the old scheduled mode only; [data] poll_interval applies",
        )
    if mode not in ("continuous", "scheduled"):
        out.note("home_assistant_proxy", "renogy_poll_mode", mode, "unknown mode; ignored")
    elif get("home_assistant_proxy", "renogy_poll_mode") is not None:
        out.note(
            "home_assistant_proxy",
            "renogy_poll_mode",
            mode,
            _NO_COUNTERPART[("home_assistant_proxy", "renogy_poll_mode")],
        )
    if interval is not None:
        try:
            seconds = float(interval)
        except ValueError:
            raise MigrateError(f"{origin} = {interval} is not a number of seconds") from None
        out.set("reader.poll_interval", seconds, origin)


def _mqtt(out: _Converted, get: Getter, parser: configparser.ConfigParser) -> None:
    if not parser.has_section("mqtt"):
        return
    enabled = (get("mqtt", "enabled") or "false").lower() in ("1", "true", "yes", "on")
    server, port = get("mqtt", "server"), get("mqtt", "port")
    user, password = get("mqtt", "user"), get("mqtt", "password")
    if not enabled:
        out.notes.append(
            "[mqtt] enabled = false (server, port, user, password unused): our services need a "
            "broker; the default (mqtt://127.0.0.1:1883: `make run` or docker compose) is used"
        )
        return
    if server:
        url = f"mqtt://{server}:{port or 1883}"
        out.set("mqtt.url", url, "[mqtt] server + port: the broker the old system published to")
    if user:
        out.set("mqtt.username", user, "[mqtt] user")
    if password:
        out.set("mqtt.password", password, "[mqtt] password")


def _proxy(out: _Converted, get: Getter) -> None:
    section = "home_assistant_proxy"
    adapter = get(section, "adapter")
    if adapter is not None and "adapter" not in out.values.get("reader", {}):
        out.set("reader.adapter", adapter, f"[{section}] adapter")
    name = get(section, "device_name")
    if name is not None:
        if _NODE_NAME.match(name):
            out.set("gateway.name", name, f"[{section}] device_name (Home Assistant's device name)")
        else:
            out.note(
                section,
                "device_name",
                name,
                "not a valid gateway.name ([a-z0-9-], at most 31 "
                "characters); Home Assistant follows the name change, entity ids stay",
            )
    port = get(section, "native_api_port")
    if port is not None:
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise MigrateError(f"[{section}] native_api_port = {port} is not a port number")
        out.set("gateway.api_port", int(port), f"[{section}] native_api_port")
    for option in ("mac", "native_api_mac"):
        mac = get(section, option)
        if mac is not None:
            if not _MAC.match(mac):
                raise MigrateError(f"[{section}] {option} = {mac} is not a MAC address")
            out.set("gateway.mac", mac.upper(), f"[{section}] {option}: Home Assistant knows the node by it")
    _airtime(out, get)
    ip = get(section, "mdns_ip")
    if ip is not None:
        out.set("gateway.mdns_addresses", [ip], f"[{section}] mdns_ip")
    for option in _KEY_OPTIONS:
        key = get(section, option)
        if key is None:
            continue
        try:
            decode_key(key)
        except InvalidKeyError as exc:
            out.note(section, option, "***", f"not a usable Noise key ({exc}); Home Assistant provisions one")
            continue
        out.set("gateway.api_key", key, f"[{section}] {option}")


def _airtime(out: _Converted, get: Getter) -> None:
    """scan_active_seconds / scan_idle_seconds -> reader.scan_duty; pause_during_renogy -> pause_during_reads."""
    section = "home_assistant_proxy"
    active, idle = get(section, "scan_active_seconds"), get(section, "scan_idle_seconds")
    if active is not None or idle is not None:
        try:
            phases = [float(active or 0), float(idle or 0)]
        except ValueError:
            phases = []
        low, high = SCAN_DUTY_RANGE
        origin = f"[{section}] scan_active_seconds + [{section}] scan_idle_seconds: [active, idle] seconds"
        if phases and all(low <= phase <= high for phase in phases):
            out.set("reader.scan_duty", phases, f"{origin} (scan duty cycle)")
        else:
            # The old system ran its duty cycle only with both numbers above 0, and fell back to 0 on a typo.
            why = (
                f"no duty cycle: reader.scan_duty needs both phases between {low:g} and {high:g} s "
                "(the old system cycled only with both above 0); the scanner runs all the time"
            )
            for option, value in (("scan_active_seconds", active), ("scan_idle_seconds", idle)):
                if value is not None:
                    out.note(section, option, value, why)
    pause = get(section, "pause_during_renogy")
    if pause is not None:
        value = pause.lower()
        if value in ("1", "true", "yes", "on"):
            out.set("reader.pause_during_reads", True, f"[{section}] pause_during_renogy")
        elif value in ("0", "false", "no", "off"):
            out.note(section, "pause_during_renogy", pause, "off here too (reader.pause_during_reads, default false)")
        else:
            out.note(section, "pause_during_renogy", pause, "not a boolean; reader.pause_during_reads stays false")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    return orjson.dumps(str(value)).decode()  # a JSON string is a valid TOML basic string


def _render(out: _Converted, source: str) -> str:
    lines = [
        f"# Converted from {source} (jorik41/renogy-bt) by `renogy-proxy migrate`.",
        "# Check it: renogy-proxy config check --config <this file>; the switch: docs/migrating.md",
    ]
    for section in ("mqtt", "reader", "gateway"):
        values = out.values.get(section)
        if not values:
            continue
        lines += ["", f"[{section}]"]
        for key, value in values.items():
            origin = out.origin[(section, key)]
            lines.append(f"# from {origin}" if origin.startswith("[") else f"# {origin}")
            lines.append(f"{key} = {_toml_value(value)}")
    if out.notes:
        lines += ["", "# Old options without a counterpart here:"]
        lines += [f"#   {note}" for note in out.notes]
    return "\n".join(lines) + "\n"


# --- energy_totals.json -> the aggregator's state file --------------------------------------------


@dataclass(frozen=True)
class EnergyImport:
    state_file: Path
    lines: tuple[str, ...]
    written: bool


def _kwh(entry: Any, key: str, where: str) -> float:
    value = entry.get(key, 0) if isinstance(entry, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise MigrateError(f"{where}: {key} must be a non-negative number of kWh, got {value!r}")
    if value * 1000 > MAX_COUNTER_WH:
        raise MigrateError(f"{where}: {key} = {value} kWh is more than a counter can hold")
    return float(value)


def read_totals(path: Path, alias: str | None = None) -> tuple[dict[int, tuple[float, float]], list[str]]:
    """slave id -> (kWh in, kWh out) of the old totals file, and what was skipped (and why)."""
    try:
        raw = orjson.loads(path.read_bytes())
    except OSError as exc:
        raise MigrateError(f"cannot read {path}: {exc.strerror or exc}") from None
    except orjson.JSONDecodeError as exc:
        raise MigrateError(f"{path} is not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise MigrateError(f"{path}: expected an object of '<alias>_<slave id>' entries")
    by_alias: dict[str, dict[int, tuple[float, float]]] = {}
    skipped: list[str] = []
    for name, entry in raw.items():
        found = _ALIAS_KEY.match(str(name))
        if found is None:
            skipped.append(f"{name}: not '<alias>_<slave id>' (no battery to give it to)")
            continue
        where = f"{path.name}: {name}"
        totals = (_kwh(entry, "energy_in_kwh", where), _kwh(entry, "energy_out_kwh", where))
        by_alias.setdefault(found["alias"], {})[int(found["slave"])] = totals
    if alias is not None:
        if alias not in by_alias:
            raise MigrateError(
                f"{path}: no entries for alias {alias!r} (found: {', '.join(sorted(by_alias))})"
            )
        skipped += [f"{other}_*: another alias than {alias!r}" for other in sorted(set(by_alias) - {alias})]
        return by_alias[alias], skipped
    if len(by_alias) > 1:
        raise MigrateError(
            f"{path} holds totals of several devices ({', '.join(sorted(by_alias))}); choose one with --alias"
        )
    if not by_alias:
        raise MigrateError(f"{path}: no battery totals ('<alias>_<slave id>' entries) in it")
    return next(iter(by_alias.values())), skipped


def import_energy(
    old_file: Path,
    config: Config,
    *,
    bt2: str | None = None,
    alias: str | None = None,
    now: float | None = None,
) -> EnergyImport:
    """Raise the aggregator's counters to the old totals; MigrateError (nothing written) when one is higher."""
    totals, skipped = read_totals(old_file, alias)
    address = bt2 or config.reader.bt2_address
    bt2_key = bt2_id(address) if address else None
    layout = layout_from_config(config.aggregator)
    store = StateStore(config.state_dir / f"aggregator-{config.aggregator.instance}.json")
    existed = store.path.exists()
    document = store.load(lambda obj: obj)
    if store.problem is not None:
        raise MigrateError(f"cannot read the aggregator's state file {store.path}: {store.problem}")
    lines: list[str] = []
    if existed and document is None:
        lines.append(f"{store.path} was corrupt and has been moved aside; importing into a new one")
    document = dict(document or {"batteries": {}, "banks": {}})
    document.pop("schema", None)
    batteries = document.setdefault("batteries", {})
    higher: list[str] = []
    updates: dict[str, dict[str, Any]] = {}
    bank_sums: dict[str, list[float]] = {}
    for slave, (kwh_in, kwh_out) in sorted(totals.items()):
        device_id = layout.device_id(bt2_key or "", slave)
        entry = batteries.get(device_id)
        counter = (
            dict(entry["counter"])
            if isinstance(entry, dict) and isinstance(entry.get("counter"), dict)
            else {}
        )
        ours_in, ours_out = float(counter.get("in_wh") or 0.0), float(counter.get("out_wh") or 0.0)
        old_in, old_out = kwh_in * 1000, kwh_out * 1000
        for what, ours, old in (("energy in", ours_in, old_in), ("energy out", ours_out, old_out)):
            if ours > old + 1e-6:
                higher.append(f"{device_id}: our {what} {ours / 1000:.3f} kWh > the old {old / 1000:.3f} kWh")
        counter.update(in_wh=max(ours_in, old_in), out_wh=max(ours_out, old_out))
        for key in ("last_ts", "last_power", "last_boot", "last_mono"):
            counter.setdefault(key, None)
        new_entry = dict(entry) if isinstance(entry, dict) else {"bt2": bt2_key, "slave_id": slave}
        if new_entry.get("bt2") is None and bt2_key is not None:
            new_entry.update(bt2=bt2_key, slave_id=slave)
        new_entry["counter"] = counter
        updates[device_id] = new_entry
        lines.append(
            f"{device_id} (old slave {slave}): energy in {ours_in / 1000:.3f} -> {counter['in_wh'] / 1000:.3f} kWh, "
            f"energy out {ours_out / 1000:.3f} -> {counter['out_wh'] / 1000:.3f} kWh"
        )
        bank = layout.bank_of(bt2_key or "", slave)
        if bank is not None:
            sums = bank_sums.setdefault(bank, [0.0, 0.0])
            sums[0] += counter["in_wh"] / 1000
            sums[1] += counter["out_wh"] / 1000
    if higher:
        raise MigrateError(
            "nothing imported: counters only go up, and these of ours are already higher than the old "
            "totals (was the import done before, or did this system count for longer?):\n  "
            + "\n  ".join(higher)
        )
    changed = any(batteries.get(device_id) != entry for device_id, entry in updates.items())
    for bank, (bank_in, bank_out) in sorted(bank_sums.items()):
        lines.append(
            f"{bank}: energy in {bank_in:.3f} kWh, energy out {bank_out:.3f} kWh (sum of its batteries)"
        )
    lines += [f"skipped {item}" for item in skipped]
    if not changed:
        lines.append(f"{store.path} already holds these totals; nothing written")
        return EnergyImport(store.path, tuple(lines), False)
    batteries.update(updates)
    document["saved"] = time.time() if now is None else now
    try:
        store.save(document)
    except OSError as exc:
        raise MigrateError(f"cannot write {store.path}: {exc.strerror or exc}") from None
    if bt2_key is None:
        lines.append(
            "no BT-2 address known (reader.bt2_address or --bt2-address): the totals wait under their "
            "device ids and go to the first battery with that id"
        )
    lines.append(f"wrote {store.path}")
    return EnergyImport(store.path, tuple(lines), True)
