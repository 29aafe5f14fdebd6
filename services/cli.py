"""`renogy-proxy`: one console script, a subcommand per service and tool."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from functools import cache
from pathlib import Path
from typing import Any, get_args, get_origin

import orjson

from services.options import CONFIG_ENV, config_from, overrides_from
from shared.config import Config, ConfigError, SettingInfo, settings
from shared.logsetup import setup_logging, version

__all__ = ["COMMANDS", "CONFIG_ENV", "build_parser", "config_from", "main", "overrides_from"]

def _id_ranges(text: str) -> list[int]:
    from services.reader.bus_probe import parse_ids  # noqa: PLC0415

    try:
        return parse_ids(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--ids: ")) from None


def _ids(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated slave ids, got {text!r}") from None


# A setting-backed flag that means something particular in one command: a note after its help.
NOTES: dict[tuple[str, str], str] = {
    ("scan", "simulator.enabled"): "scan: list the simulated BT-2 instead",
    ("probe-bus", "simulator.enabled"): "probe-bus: probe the simulated bus instead",
    ("healthcheck", "gateway.api_port"): "healthcheck gateway: the API port to probe",
    ("migrate", "reader.bt2_address"): "migrate --energy: the BT-2 the imported totals belong to",
}
# Sections whose flags appear under their own heading in --help (the others under "options").
_GROUPED = ("reader", "simulator", "aggregator", "gateway")


def shown_default(info: SettingInfo) -> str:
    """A setting's default as --help shows it."""
    default = info.default
    if isinstance(default, bool):
        return "true" if default else "false"
    if isinstance(default, list):
        return ",".join(map(str, default)) or "none"
    return "unset" if default is None else str(default)


def setting_help(info: SettingInfo, command: str) -> str:
    """The --help text of a setting's flag in one command: the table's help, default and variable."""
    text = info.help
    if info.base is bool and info.cli[0].startswith("--no-"):
        text = f"do not {text[:1].lower()}{text[1:]}"  # boolean helps are imperatives: "Announce ..."
    note = NOTES.get((command, info.path))
    if note:
        text += f"; {note}"
    if info.secret:
        text += f"; {info.env} is safer: the command line shows in `ps`"
    return f"{text} (default {shown_default(info)}; env {info.env})"


def _arg_type(info: SettingInfo) -> Callable[[str], Any] | None:
    if info.base in (int, float, Path):
        converter: Callable[[str], Any] = info.base
        return converter
    if info.base is str:
        return None
    if get_origin(info.base) is list and get_args(info.base) == (int,):
        return _ids
    if get_origin(info.base) is list and get_args(info.base) == (str,):
        return _comma_list
    raise TypeError(f"{info.path}: no command-line form for {info.base!r}")  # pragma: no cover


def _comma_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def command_settings(command: str) -> list[SettingInfo]:
    """The settings whose flags `command` takes, in table order."""
    return [info for info in _settings_table() if command in info.commands]


@cache
def _settings_table() -> tuple[SettingInfo, ...]:
    return tuple(settings())  # walked once, not once per subcommand: ~0.1 s of every start


def _add_settings(parser: argparse.ArgumentParser, command: str) -> None:
    """--config, then every setting-backed option of `command`, generated from the settings table."""
    table = command_settings(command)
    if not table:
        return
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help=f"TOML configuration file (env {CONFIG_ENV}); every key also has an env variable",
    )
    groups: dict[str, Any] = {}
    for info in table:
        section = info.path.rpartition(".")[0]
        target: Any = parser
        if section in _GROUPED:
            target = groups.get(section) or groups.setdefault(section, parser.add_argument_group(section))
        text = setting_help(info, command).replace("%", "%%")
        if info.base is bool:
            const = not info.cli[0].startswith("--no-")
            target.add_argument(*info.cli, dest=info.path, action="store_const", const=const, help=text)
            continue
        target.add_argument(
            *info.cli,
            dest=info.path,
            type=_arg_type(info),
            choices=info.choices,
            metavar=None if info.choices else info.metavar,
            help=text,
        )


# What each subcommand's --help shows above and below its options: a description and examples.
DESCRIPTIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "run": (
        "Start the whole stack as separate processes under a small supervisor: the embedded MQTT broker "
        "(unless --mqtt is given or a broker already answers on --broker-port), the reader (on the BT-2 "
        "simulator unless a BT-2 is configured), the aggregator and the gateway. Exits 2 when the stack "
        "cannot start (a broker that refuses our login, a port held by another program).",
        (
            "renogy-proxy run",
            "renogy-proxy run --bt2-address C4:64:E3:38:3D:0E",
            "renogy-proxy run --mqtt mqtt://user:password@127.0.0.1:1883",
        ),
    ),
    "reader": (
        "The BLE reader: the only process that uses the Bluetooth adapter. Keeps one connection to the "
        "BT-2, reads every battery each poll interval and publishes raw readings and advertisements.",
        ("renogy-proxy reader --bt2-address C4:64:E3:38:3D:0E", "renogy-proxy reader --simulate"),
    ),
    "aggregator": (
        "Turn the reader's readings into Home Assistant devices and entities, with persistent energy "
        "counters.",
        ("renogy-proxy aggregator", "RENOGY_PROFILE=extended renogy-proxy aggregator"),
    ),
    "gateway": (
        "The ESPHome native API server (port 6053) that Home Assistant adds, and the Bluetooth proxy.",
        ("renogy-proxy gateway", "renogy-proxy gateway --api-port 6054 --no-mdns"),
    ),
    "broker": (
        "The embedded MQTT broker (amqtt, MQTT 3.1.1, anonymous, retained messages in memory) that "
        "`run` starts; production setups use Mosquitto.",
        ("renogy-proxy broker --port 1884",),
    ),
    "decode": (
        "Decode a captured Modbus response frame as the reader would (CRC, length, plausibility).",
        (
            "renogy-proxy decode 5042 30030c0000020c0000c2b20000c350ee9a",
            "renogy-proxy decode --kind dcc 256 ff030e0064008500001010007a000000003168",
        ),
    ),
    "scan": (
        "List the BT-2 modules (BT-TH-*) that advertise nearby, on the configured adapter "
        "(reader.adapter) or the simulator (simulator.enabled / RENOGY_SIMULATE).",
        (
            "renogy-proxy scan --timeout 15",
            "renogy-proxy scan --adapter hci1",
            "RENOGY_SIMULATE=true renogy-proxy scan",
        ),
    ),
    "probe-bus": (
        "Connect to the BT-2 as the reader does and tell which kind (battery, controller, dcc, inverter) "
        "answers at which slave id, by reading each family's model register; prints the reader.devices "
        "line to paste. Reads only, one request at a time; a silent id costs one --timeout. Stop the "
        "reader first (the BT-2 takes one connection). Exit 0 when a device was identified, 1 when none.",
        (
            "renogy-proxy probe-bus --bt2-address C4:64:E3:38:3D:0E",
            "renogy-proxy probe-bus --ids 1-16,48-55 --timeout 1.5",
            "renogy-proxy probe-bus --simulate --sim-devices battery:48,controller:1",
        ),
    ),
    "simulate-bluez": (
        "A private D-Bus system bus with a stand-in BlueZ (org.bluez) serving the BT-2 simulator, for "
        "running the reader on bleak's real BlueZ backend without hardware. Prints "
        "DBUS_SYSTEM_BUS_ADDRESS=... as its first line; runs until Ctrl-C.",
        (
            "renogy-proxy simulate-bluez --sim-mtu 23",
            "export $(renogy-proxy simulate-bluez | head -1) && renogy-proxy reader  # in another shell",
        ),
    ),
    "keygen": (
        "Print a new random Noise encryption key (base64 of 32 bytes) for gateway.api_key / RENOGY_API_KEY.",
        ("renogy-proxy keygen",),
    ),
    "status": (
        "One table of every service and battery, read from the retained state on the broker. Every "
        "configured battery (reader.batteries, aggregator.banks) must report. Exit 0 healthy, 1 unhealthy, "
        "2 broker unreachable or refused us.",
        ("renogy-proxy status", "renogy-proxy status --wait 180", "renogy-proxy status --json"),
    ),
    "diagnose": (
        "Everything a bug report needs: versions, platform, effective configuration (secrets masked), "
        "broker and Bluetooth adapter checks.",
        ("renogy-proxy diagnose", "renogy-proxy diagnose --json > diagnose.json"),
    ),
    "healthcheck": (
        "One line and an exit code for docker and monitors: is this service online and heard from "
        "recently? reader: it can use its adapter and had a good reading within reader.watchdog_cycles "
        "polls; gateway: its ESPHome API answers with this gateway's node name. Exit 0 healthy, 1 "
        "unhealthy, 2 broker unreachable.",
        ("renogy-proxy healthcheck reader", "renogy-proxy healthcheck gateway --api-port 6054"),
    ),
    "migrate": (
        "From the old system (jorik41/renogy-bt, renogy_bt_proxy.py): print the TOML equivalent of its "
        "config.ini (a comment for every old option without a counterpart), and/or import its "
        "energy_totals.json into the aggregator's state file (stop the aggregator first; counters only go "
        "up). Step by step: docs/migrating.md.",
        (
            "renogy-proxy migrate config.ini > /etc/renogy-proxy/config.toml",
            "renogy-proxy migrate --energy energy_totals.json --config /etc/renogy-proxy/config.toml",
        ),
    ),
    "config": (
        "Check a configuration without a broker: the TOML file, the environment (unknown RENOGY_* "
        "variables, with the closest known name) and the command line; bank layout and slave ids.",
        ("renogy-proxy config check", "renogy-proxy config check --config /etc/renogy-proxy/config.toml"),
    ),
}


def _command(sub: Any, name: str, help: str) -> argparse.ArgumentParser:
    description, examples = DESCRIPTIONS[name]
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help,
        description=description,
        epilog="examples:\n" + "\n".join(f"  {example}" for example in examples),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_settings(parser, name)
    return parser


class _VersionAction(argparse.Action):
    """--version, looked up only when asked (importlib.metadata is ~3 MB for every other command)."""

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        parser.exit(message=f"{parser.prog} {version()}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="renogy-proxy",
        description="Renogy smart batteries behind a BT-2 -> MQTT -> Home Assistant (ESPHome native API).",
        epilog="`renogy-proxy COMMAND --help` describes each command, its defaults and examples.",
    )
    parser.add_argument("--version", action=_VersionAction, nargs=0, help="show the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = _command(sub, "run", "broker (if needed) + reader + aggregator + gateway under a supervisor")
    run.add_argument(
        "--broker-port", type=int, default=1883, help="port of the embedded broker (default 1883)"
    )
    run.add_argument(
        "--simulate-bluez",
        action="store_true",
        help="read the simulator through bleak's real BlueZ backend: a private system bus with a stand-in "
        "BlueZ (as `simulate-bluez`) instead of the simulator backend",
    )

    _command(sub, "reader", "BLE reader: BT-2 -> raw readings and advertisements on MQTT")

    _command(sub, "aggregator", "readings -> Home Assistant device documents")

    _command(sub, "gateway", "ESPHome native API server and Bluetooth proxy")

    broker = _command(sub, "broker", "the embedded MQTT broker (amqtt)")
    broker.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    broker.add_argument("--port", type=int, default=1883, help="port to listen on (default %(default)s)")
    broker.add_argument(
        "--log-level",
        dest="broker_log_level",
        default="info",
        choices=("debug", "info", "warning", "error"),
        help="(default %(default)s)",
    )

    decode = _command(sub, "decode", "decode a captured response frame: decode REGISTER HEX")
    decode.add_argument("register", type=int, help="start register of the request, e.g. 5042")
    decode.add_argument("frame", help="hex of the whole response frame, CRC included")
    decode.add_argument("--slave", type=int, default=None, help="expected slave id (default: any)")
    decode.add_argument(
        "--kind",
        choices=("battery", "controller", "dcc", "inverter", "shunt"),
        default="battery",
        help="device kind (default %(default)s); a shunt's HEX is one notification payload, REGISTER 0",
    )
    decode.add_argument(
        "--family",
        choices=("bt2", "pro", "rngpro"),
        default="bt2",
        help="battery family: bt2 = 0.01 A (default), pro (RNGRBP*/RNGC*) = 0.1 A, "
        "rngpro (RNGPRO*) = 0.01 A without the alarm words",
    )

    scan = _command(sub, "scan", "list nearby BT-2 modules")
    scan.add_argument(
        "--timeout", type=float, default=10.0, metavar="S", help="seconds to scan (default %(default)s)"
    )

    probe = _command(sub, "probe-bus", "which device kind answers at which slave id of the BT-2's bus")
    probe.add_argument(
        "--ids",
        type=_id_ranges,
        default=None,
        metavar="IDS",
        help="slave ids to probe, e.g. 1-16,32,48-63 (default 255,1-16,32,48-63,96,247)",
    )
    probe.add_argument(
        "--timeout",
        type=float,
        default=0.5,
        metavar="S",
        help="deadline of one read in seconds: what a silent id costs (default %(default)s)",
    )

    _command(sub, "simulate-bluez", "a private system bus with a stand-in BlueZ serving the simulator")

    _command(sub, "keygen", "print a new Noise encryption key for gateway.api_key")

    for name, text in (
        ("status", "one-table health of services and batteries (exit 0 healthy, 1 unhealthy, 2 no broker)"),
        ("diagnose", "versions, effective config (secrets masked), adapter and broker checks"),
    ):
        tool = _command(sub, name, text)
        tool.add_argument(
            "--timeout",
            type=float,
            default=5.0,
            help="seconds to wait for retained state (default %(default)s)",
        )
        tool.add_argument("--json", action="store_true", help="machine-readable output")
        if name == "status":
            tool.add_argument(
                "--max-age",
                type=float,
                default=None,
                help="seconds after which a reading counts as stale (default 3 x poll interval, at least 30)",
            )
            tool.add_argument(
                "--wait",
                type=float,
                default=0.0,
                metavar="S",
                help="keep waiting up to S seconds until every service and every configured battery "
                "is healthy, showing progress (first start; default 0: no waiting)",
            )
    health = _command(
        sub, "healthcheck", "is this service online and heard from recently? (docker healthcheck; exit 0/1/2)"
    )
    health.add_argument("service", choices=("reader", "aggregator", "gateway"), help="the service to check")
    health.add_argument("--instance", default=None, help="instance name (default: from the configuration)")
    health.add_argument(
        "--timeout", type=float, default=5.0, help="seconds for the whole check (default %(default)s)"
    )

    migrate = _command(sub, "migrate", "from jorik41/renogy-bt: config.ini -> TOML, energy_totals.json -> counters")
    migrate.add_argument("ini", nargs="?", type=Path, metavar="CONFIG_INI", help="the old config.ini to convert")
    migrate.add_argument(
        "--energy", type=Path, metavar="FILE", help="the old energy_totals.json to import into our counters"
    )
    migrate.add_argument(
        "--alias", default=None, help="the old [device] alias whose totals to import (when the file has several)"
    )

    config = _command(sub, "config", "check a configuration file and the environment (no broker needed)")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    check = config_sub.add_parser(
        "check",
        help="validate file + environment + options; exit 0 ok, 2 problems",
        description=DESCRIPTIONS["config"][0],
        epilog="examples:\n" + "\n".join(f"  {e}" for e in DESCRIPTIONS["config"][1]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_settings(check, "config")
    return parser


def _run_service(
    args: argparse.Namespace, service: str, entry: Callable[[Config], Coroutine[Any, Any, int]]
) -> int:
    config = config_from(args)
    setup_logging(config.log_level, service)
    _warn_unknown_variables()
    return asyncio.run(entry(config))


def _warn_unknown_variables() -> None:
    import logging  # noqa: PLC0415

    from services.config_check import unknown_names  # noqa: PLC0415

    for name, hint in unknown_names(os.environ):
        logging.getLogger("config").warning(
            "unknown environment variable %s: no setting reads it%s; ignored", name, hint
        )


def cmd_reader(args: argparse.Namespace) -> int:
    from services.reader.service import run  # noqa: PLC0415 - import what the command needs only

    return _run_service(args, "reader", run)


def cmd_aggregator(args: argparse.Namespace) -> int:
    from services.aggregator.service import run  # noqa: PLC0415

    return _run_service(args, "aggregator", run)


def cmd_gateway(args: argparse.Namespace) -> int:
    from services.gateway.service import run  # noqa: PLC0415

    return _run_service(args, "gateway", run)


def cmd_broker(args: argparse.Namespace) -> int:
    from services.broker import BrokerUnavailable, serve  # noqa: PLC0415

    setup_logging(args.broker_log_level, "broker")
    try:
        asyncio.run(serve(args.host, args.port))
    except BrokerUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2  # a restart cannot fix a missing package: `run` stops instead of retrying
    except Exception as exc:  # amqtt wraps a failed bind in its BrokerError
        print(
            f"error: the embedded MQTT broker cannot run on {args.host}:{args.port}: {exc}", file=sys.stderr
        )
        return 1
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from services.supervisor import run_stack  # noqa: PLC0415

    config = config_from(args)
    setup_logging(config.log_level, "run")
    _warn_unknown_variables()
    if getattr(args, "simulate_bluez", False):
        from services.simulator.bluez.cli import run_stack_on_standin  # noqa: PLC0415

        return asyncio.run(run_stack_on_standin(args, config, config_from))
    return asyncio.run(run_stack(args, config))


def cmd_simulate_bluez(args: argparse.Namespace) -> int:
    from services.simulator.bluez.cli import serve  # noqa: PLC0415

    config = config_from(args)
    setup_logging(config.log_level, "simulate-bluez")
    return asyncio.run(serve(config))


def cmd_decode(args: argparse.Namespace) -> int:
    from services.tools import decode_frame  # noqa: PLC0415

    try:
        result = decode_frame(
            args.register, args.frame, slave=args.slave, family=args.family, kind=args.kind
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


def cmd_scan(args: argparse.Namespace) -> int:
    from services.tools import scan  # noqa: PLC0415

    config = config_from(args)
    setup_logging(config.log_level, "scan")
    _warn_unknown_variables()
    return asyncio.run(
        scan(args.timeout, config.reader.adapter, simulate=config.simulator.enabled, config=config)
    )


def cmd_probe_bus(args: argparse.Namespace) -> int:
    from services.tools import probe_bus  # noqa: PLC0415

    if not 0.05 <= args.timeout <= 30:
        print(f"error: --timeout {args.timeout:g} is outside 0.05..30 s", file=sys.stderr)
        return 2
    config = config_from(args)
    setup_logging(config.log_level, "probe-bus")
    _warn_unknown_variables()
    return asyncio.run(probe_bus(config, ids=args.ids, timeout=args.timeout))


def cmd_config(args: argparse.Namespace) -> int:
    from services.config_check import check  # noqa: PLC0415

    path = args.config or os.environ.get(CONFIG_ENV)
    code, lines = check(lambda: config_from(args), source=str(path) if path else None)
    for line in lines:
        print(line, file=sys.stderr if code else sys.stdout)
    return code


def cmd_migrate(args: argparse.Namespace) -> int:
    from services.migrate import MigrateError, convert_config, import_energy  # noqa: PLC0415

    if args.ini is None and args.energy is None:
        print("error: give the old config.ini to convert and/or --energy energy_totals.json", file=sys.stderr)
        return 2
    try:
        if args.ini is not None:
            try:
                text = args.ini.read_text(encoding="utf-8")
            except OSError as exc:
                raise MigrateError(f"cannot read {args.ini}: {exc.strerror or exc}") from None
            sys.stdout.write(convert_config(text, str(args.ini)))
        if args.energy is not None:
            result = import_energy(args.energy, config_from(args), alias=args.alias)
            for line in result.lines:
                print(line, file=sys.stderr if args.ini is not None else sys.stdout)
    except MigrateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_keygen(_args: argparse.Namespace) -> int:
    from shared.noise_key import generate_key  # noqa: PLC0415

    print(generate_key())
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from services.ops.status import status  # noqa: PLC0415

    return status(args, config_from(args))


def cmd_diagnose(args: argparse.Namespace) -> int:
    from services.ops.diagnose import diagnose  # noqa: PLC0415

    return diagnose(args, config_from(args))


def cmd_healthcheck(args: argparse.Namespace) -> int:
    from services.ops.healthcheck import healthcheck  # noqa: PLC0415

    return healthcheck(args, config_from(args))


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run,
    "reader": cmd_reader,
    "aggregator": cmd_aggregator,
    "gateway": cmd_gateway,
    "broker": cmd_broker,
    "decode": cmd_decode,
    "scan": cmd_scan,
    "probe-bus": cmd_probe_bus,
    "keygen": cmd_keygen,
    "simulate-bluez": cmd_simulate_bluez,
    "status": cmd_status,
    "diagnose": cmd_diagnose,
    "healthcheck": cmd_healthcheck,
    "config": cmd_config,
    "migrate": cmd_migrate,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
