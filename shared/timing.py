"""Timing model of one Modbus read through a BT-2, calibrated against a real Renogy app trace.

A read of n registers answered in k notifications cannot complete faster than

    T + 80/baud + turnaround + (5 + 2n) * 10/baud + silence + ceil(k / 4) * T

(wait for the connection event that carries the write, 8 request bytes on the 9600 baud UART, the
battery's turnaround, the reply on the UART, the BT-2's idle-line wait, then up to four
notifications per connection interval). With T = 45 ms that is 146 ms for 5042 x 6 and 204 ms for
5000 x 34; the trace's minima were 157 and 203 ms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

ATT_HEADER = 3
REQUEST_BYTES = 8


@dataclass(frozen=True, slots=True)
class TimingModel:
    connection_interval: float = 0.045
    baud: int = 9600
    bits_per_byte: int = 10  # 8N1: start + 8 data + stop
    turnaround: float = 0.020
    line_silence: float = 0.010
    notifications_per_interval: int = 4
    connect_time: float = 1.3

    def uart_time(self, nbytes: int) -> float:
        return nbytes * self.bits_per_byte / self.baud

    def read_floor(self, words: int, notifications: int = 1) -> float:
        """Lower bound in seconds from write to the last notification of the reply."""
        return self.reply_start(words) + self.delivery_time(notifications)

    def reply_start(self, words: int) -> float:
        """Time from the write until the BT-2 starts forwarding the reply."""
        return (
            self.connection_interval
            + self.uart_time(REQUEST_BYTES)
            + self.turnaround
            + self.uart_time(5 + 2 * words)
            + self.line_silence
        )

    def delivery_time(self, notifications: int) -> float:
        return math.ceil(notifications / self.notifications_per_interval) * self.connection_interval


def notification_count(frame_length: int, mtu: int) -> int:
    """How many notifications a reply of frame_length bytes needs at this ATT MTU."""
    return max(1, math.ceil(frame_length / (mtu - ATT_HEADER)))


DEFAULT_TIMING = TimingModel()
