"""Log set-up and the package version, without shared.service's MQTT runtime (paho, psutil): for the
supervisor and the CLI tools. shared.service re-exports both."""

from __future__ import annotations

import logging
import sys
from functools import cache


def setup_logging(level: str, service: str) -> None:
    """Plain line logs on stderr (journald and docker add their own timestamps, but tests read ours)."""
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format=f"%(asctime)s %(levelname)-7s {service} %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    logging.getLogger("paho").setLevel(logging.WARNING)
    for noisy in ("amqtt", "transitions", "bleak"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


@cache
def version() -> str:
    """This package's version (importlib.metadata, ~3 MB, is imported on the first call only)."""
    from importlib import metadata  # noqa: PLC0415

    try:
        return metadata.version("renogy-bt-esphome-proxy")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from an unpacked tree
        return "0.0.0"
