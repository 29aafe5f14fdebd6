"""``python -m services.gateway``: load the configuration (file from RENOGY_CONFIG) and run the gateway."""

from __future__ import annotations

import asyncio
import os
import sys

from services.gateway.service import run
from shared.config import ConfigError, load_config
from shared.service import setup_logging


def main() -> int:
    try:
        config = load_config(os.environ.get("RENOGY_CONFIG") or None)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log_level, "gateway")
    return asyncio.run(run(config))


if __name__ == "__main__":
    sys.exit(main())
