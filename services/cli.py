"""`renogy-proxy`: one console script, a subcommand per service and tool."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import orjson

from shared.config import Config, ConfigError, load_config
from shared.service import VERSION, setup_logging

CONFIG_ENV = "RENOGY_CONFIG"


def _ids(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated slave ids, got {text!r}") from None


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help=f"TOML configuration file (env {CONFIG_ENV}); every key also has an env variable",
    )
    parser.add_argument(
        "--mqtt", dest="mqtt.url", metavar="URL", help="broker URL, e.g. mqtt://127.0.0.1:1883"
    )
    parser.add_argument("--root-topic", dest="mqtt.root_topic", metavar="TOPIC", help="first topic level")
    parser.add_argument("--state-dir", dest="state_dir", type=Path, help="directory for persistent state")
    parser.add_argument("--log-level", dest="log_level", choices=("debug", "info", "warning", "error"))


def _add_reader(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("reader")
    group.add_argument("--bt2-address", dest="reader.bt2_address", metavar="MAC", help="BT-2 MAC address")
    group.add_argument(
        "--bt2-name", dest="reader.bt2_name", metavar="NAME", help="BT-2 name, e.g. BT-TH-E3383D0E"
    )
    group.add_argument(
        "--batteries",
        dest="reader.batteries",
        type=_ids,
        metavar="IDS",
        help="Modbus slave ids, e.g. 48,49,50,51",
    )
    group.add_argument(
        "--poll-interval",
        dest="reader.poll_interval",
        type=float,
        metavar="S",
        help="seconds between cycle starts (0 = back to back)",
    )
    group.add_argument("--adapter", dest="reader.adapter", help="Bluetooth adapter, e.g. hci0")
    group.add_argument(
        "--ble-backend", dest="reader.backend", metavar="MODULE:CLASS", help="custom bleak client backend"
    )
    group.add_argument(
        "--capture",
        dest="reader.capture_file",
        type=Path,
        metavar="FILE",
        help="append every request/response with timing as JSON lines",
    )
    sim = parser.add_argument_group("simulator")
    sim.add_argument(
        "--simulate",
        dest="simulator.enabled",
        action="store_const",
        const=True,
        help="use the built-in BT-2 + battery-bank simulator",
    )
    sim.add_argument("--sim-batteries", dest="simulator.batteries", type=_ids, metavar="IDS")
    sim.add_argument(
        "--sim-speed",
        dest="simulator.speed",
        type=float,
        metavar="X",
        help="simulated-time acceleration of the battery physics",
    )
    sim.add_argument("--sim-seed", dest="simulator.seed", type=int)
    sim.add_argument(
        "--sim-fault-rate",
        dest="simulator.fault_rate",
        type=float,
        metavar="P",
        help="share of requests hit by an injected fault (0..1)",
    )
    sim.add_argument("--sim-mtu", dest="simulator.mtu", type=int, help="251 (default) or 23")
    sim.add_argument(
        "--sim-latency-scale",
        dest="simulator.latency_scale",
        type=float,
        metavar="X",
        help="multiplier of the modelled BLE latencies (0 = instant)",
    )
    sim.add_argument("--sim-truth-log", dest="simulator.truth_log", type=Path, metavar="FILE")


def _add_aggregator(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("aggregator")
    group.add_argument(
        "--profile",
        dest="aggregator.profile",
        choices=("default", "extended"),
        help="entity set (default: 55 entities for 4 batteries)",
    )


def _add_gateway(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("gateway")
    group.add_argument(
        "--api-port",
        dest="gateway.api_port",
        type=int,
        metavar="PORT",
        help="ESPHome native API port (default 6053)",
    )
    group.add_argument(
        "--api-key",
        dest="gateway.api_key",
        metavar="KEY",
        help="Noise encryption key, base64 (env RENOGY_API_KEY is safer: not in `ps`)",
    )
    group.add_argument("--name", dest="gateway.name", help="node name, [a-z0-9-], <= 31 characters")
    group.add_argument(
        "--no-mdns", dest="gateway.mdns", action="store_const", const=False, help="do not announce on mDNS"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="renogy-proxy",
        description="Renogy smart batteries behind a BT-2 -> MQTT -> Home Assistant (ESPHome native API).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {VERSION}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="broker (if needed) + reader + aggregator + gateway under a supervisor")
    _add_common(run)
    _add_reader(run)
    _add_aggregator(run)
    _add_gateway(run)
    run.add_argument(
        "--broker-port", type=int, default=1883, help="port of the embedded broker (default 1883)"
    )

    reader = sub.add_parser("reader", help="BLE reader: BT-2 -> raw readings and advertisements on MQTT")
    _add_common(reader)
    _add_reader(reader)
    reader.add_argument("--instance", dest="reader.instance", help="instance name in bridge topics")

    aggregator = sub.add_parser("aggregator", help="readings -> Home Assistant device documents")
    _add_common(aggregator)
    _add_aggregator(aggregator)
    aggregator.add_argument("--instance", dest="aggregator.instance")

    gateway = sub.add_parser("gateway", help="ESPHome native API server and Bluetooth proxy")
    _add_common(gateway)
    _add_gateway(gateway)
    gateway.add_argument("--instance", dest="gateway.instance")

    broker = sub.add_parser("broker", help="the embedded MQTT broker (amqtt)")
    broker.add_argument("--host", default="127.0.0.1")
    broker.add_argument("--port", type=int, default=1883)
    broker.add_argument("--log-level", default="info")

    decode = sub.add_parser("decode", help="decode a captured response frame: decode REGISTER HEX")
    decode.add_argument("register", type=int, help="start register of the request, e.g. 5042")
    decode.add_argument("frame", help="hex of the whole response frame, CRC included")
    decode.add_argument("--slave", type=int, default=None, help="expected slave id (default: any)")
    decode.add_argument(
        "--family",
        choices=("bt2", "pro"),
        default="bt2",
        help="current scale: bt2 = 0.01 A (default), pro = 0.1 A",
    )

    scan = sub.add_parser("scan", help="list nearby BT-2 modules")
    scan.add_argument("--timeout", type=float, default=10.0)
    scan.add_argument("--adapter", default="hci0")
    scan.add_argument("--simulate", action="store_true", help="scan the simulator instead")

    sub.add_parser("keygen", help="print a new Noise encryption key for gateway.api_key")

    for name, text in (
        ("status", "one-table health of services and batteries (exit 0 healthy, 1 unhealthy, 2 no broker)"),
        ("diagnose", "versions, effective config (secrets masked), adapter and broker checks"),
    ):
        tool = sub.add_parser(name, help=text)
        _add_common(tool)
        tool.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for retained state")
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
                help="keep waiting up to S seconds until everything is healthy, showing progress (first start)",
            )
    health = sub.add_parser(
        "healthcheck",
        help="is this service online and heard from recently? (docker healthcheck; exit 0/1/2)",
    )
    _add_common(health)
    health.add_argument("service", choices=("reader", "aggregator", "gateway"))
    health.add_argument("--instance", default=None, help="instance name (default: from the configuration)")
    health.add_argument("--timeout", type=float, default=5.0, help="seconds for the whole check")
    return parser


def overrides_from(args: argparse.Namespace) -> dict[str, Any]:
    """Dotted setting paths given on the command line (argparse dests are the setting paths)."""
    return {
        key: value
        for key, value in vars(args).items()
        if "." in key or key in ("state_dir", "log_level")
        if value is not None
    }


def config_from(args: argparse.Namespace) -> Config:
    path = args.config or (Path(os.environ[CONFIG_ENV]) if os.environ.get(CONFIG_ENV) else None)
    return load_config(path, overrides=overrides_from(args))


def _run_service(
    args: argparse.Namespace, service: str, entry: Callable[[Config], Coroutine[Any, Any, int]]
) -> int:
    config = config_from(args)
    setup_logging(config.log_level, service)
    return asyncio.run(entry(config))


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
    from services.broker import serve  # noqa: PLC0415

    setup_logging(args.log_level, "broker")
    asyncio.run(serve(args.host, args.port))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from services.supervisor import run_stack  # noqa: PLC0415

    config = config_from(args)
    setup_logging(config.log_level, "run")
    return asyncio.run(run_stack(args, config))


def cmd_decode(args: argparse.Namespace) -> int:
    from services.tools import decode_frame  # noqa: PLC0415

    try:
        result = decode_frame(args.register, args.frame, slave=args.slave, family=args.family)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


def cmd_scan(args: argparse.Namespace) -> int:
    from services.tools import scan  # noqa: PLC0415

    return asyncio.run(scan(args.timeout, args.adapter, simulate=args.simulate))


def cmd_keygen(_args: argparse.Namespace) -> int:
    from shared.noise_key import generate_key  # noqa: PLC0415

    print(generate_key())
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from services.ops import status  # noqa: PLC0415

    return status(args, config_from(args))


def cmd_diagnose(args: argparse.Namespace) -> int:
    from services.ops import diagnose  # noqa: PLC0415

    return diagnose(args, config_from(args))


def cmd_healthcheck(args: argparse.Namespace) -> int:
    from services.ops import healthcheck  # noqa: PLC0415

    return healthcheck(args, config_from(args))


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run,
    "reader": cmd_reader,
    "aggregator": cmd_aggregator,
    "gateway": cmd_gateway,
    "broker": cmd_broker,
    "decode": cmd_decode,
    "scan": cmd_scan,
    "keygen": cmd_keygen,
    "status": cmd_status,
    "diagnose": cmd_diagnose,
    "healthcheck": cmd_healthcheck,
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
