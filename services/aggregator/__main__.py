"""`python -m services.aggregator`: the aggregator alone (config file from RENOGY_CONFIG, env settings)."""

from __future__ import annotations

import asyncio
import os
import sys

from services.aggregator.service import EXIT_CONFIG, run
from shared.config import ConfigError, load_config
from shared.service import setup_logging


def main() -> int:
    try:
        config = load_config(os.environ.get("RENOGY_CONFIG") or None)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(config.log_level, "aggregator")
    return asyncio.run(run(config))


if __name__ == "__main__":
    sys.exit(main())
