"""Log set-up and the package version, without shared.service's MQTT runtime (paho, psutil): for the
supervisor and the CLI tools. shared.service re-exports both."""

from __future__ import annotations

import logging
import sys

_HANDLER: list[logging.Handler] = []  # the handler setup_logging installed in this process


def setup_logging(level: str, service: str) -> None:
    """Plain line logs on stderr (journald and docker add their own timestamps, but tests read ours)."""
    numeric = getattr(logging, level.upper(), logging.INFO)
    line = f"%(asctime)s %(levelname)-7s {service} %(name)s: %(message)s"
    root = logging.getLogger()
    if _HANDLER and root.handlers == _HANDLER and getattr(_HANDLER[0], "stream", None) is sys.stderr:
        # Again in this process (a service forked from the supervisor): only the line format changes.
        # basicConfig(force=True) would replace the handler, and every setLevel clears the cache of
        # every logger: in a fork, touching each logger copies its page (~0.4 MB per service).
        _HANDLER[0].setFormatter(logging.Formatter(line))
    else:
        logging.basicConfig(level=numeric, format=line, stream=sys.stderr, force=True)
        _HANDLER[:] = root.handlers
    _set_level(root, numeric)
    _set_level(logging.getLogger("paho"), logging.WARNING)
    for noisy in ("amqtt", "transitions", "bleak"):
        _set_level(logging.getLogger(noisy), max(logging.WARNING, root.level))


def _set_level(logger: logging.Logger, level: int) -> None:
    if logger.level != level:  # setLevel clears every logger's cache even when nothing changes
        logger.setLevel(level)


def version() -> str:
    """This package's version (shared/version.py, which pyproject.toml reads too)."""
    from shared.version import __version__  # noqa: PLC0415

    return __version__
