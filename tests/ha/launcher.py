"""Run Home Assistant's ``hass`` with only its start-up interpreter version check skipped.

Test-only workaround, used by ``make test-ha`` (tests/ha/hass.py starts HA as
``<ha venv>/bin/python tests/ha/launcher.py -c <config dir> --skip-pip ...``):

The machines this project is tested on have pyenv's Python 3.13.0, while Home Assistant 2026.2
declares ``Requires-Python >= 3.13.2``. The test venv therefore installs it with
``pip install --ignore-requires-python`` (tests/ha/venv.py), and ``hass`` would still exit at once
in ``homeassistant.__main__.validate_python``. This file replaces that one function with a no-op and
then calls Home Assistant's own ``main()`` with the same arguments. Nothing in Home Assistant is
changed, patched or copied beyond skipping that check; on a 3.13.2+ interpreter running this is the
same as running ``hass``.

It runs under the HA venv's interpreter, not the project's, and imports nothing from the project.
"""

from __future__ import annotations

import sys


def main() -> int:
    import homeassistant.__main__ as hass_main

    def skip_interpreter_check() -> None:
        """HA 2026.2 wants 3.13.2; the 3.13.0 here runs everything this test needs."""

    hass_main.validate_python = skip_interpreter_check
    sys.argv[0] = "hass"
    return int(hass_main.main())


if __name__ == "__main__":
    sys.exit(main())
