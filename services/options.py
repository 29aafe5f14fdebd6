"""Command-line options -> configuration: shared by the CLI and the supervisor (no import cycle).

The argparse dests of setting-backed options are the settings' key paths (services/cli.py generates
those options from the settings table in shared/config.py).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from shared.config import Config, load_config, settings

CONFIG_ENV = "RENOGY_CONFIG"


def overrides_from(args: argparse.Namespace) -> dict[str, Any]:
    """Setting key paths given on the command line (argparse dests are the setting paths)."""
    paths = {info.path for info in settings()}
    return {key: value for key, value in vars(args).items() if key in paths and value is not None}


def config_from(args: argparse.Namespace) -> Config:
    path = args.config or (Path(os.environ[CONFIG_ENV]) if os.environ.get(CONFIG_ENV) else None)
    return load_config(path, overrides=overrides_from(args))
