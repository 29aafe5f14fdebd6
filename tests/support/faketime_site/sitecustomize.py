"""Loaded (through PYTHONPATH) by the processes a clock-step test runs under libfaketime.

libfaketime 0.9.10 with FAKETIME_DONT_FAKE_MONOTONIC=1 (a real NTP step moves the wall clock only)
makes clock_nanosleep fail with EINVAL, which is what time.sleep uses: sleep with select() instead.
"""

import select
import time


def _sleep(seconds: float) -> None:
    select.select([], [], [], max(0.0, seconds))


time.sleep = _sleep
