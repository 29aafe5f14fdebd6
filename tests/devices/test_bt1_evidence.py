"""A BT-1 (RS232, charge controllers) is read like a BT-2: the evidence is a real BT-1 session log.

cyrils/renogy-bt README (output of its example against a BT-1 on a Rover, "Found bt1 device
BT-TH-B00FXXXX"): the module advertises ``BT-TH-*`` as a BT-2 does, the client subscribes to
``0000fff1-…`` and writes to ``0000ffd1-…`` (our link's characteristics), and its controller request is
``create_read_request 256 => [255, 3, 1, 0, 0, 34, 209, 241]``: slave 0xFF, function 3, 0x0100 x 34, the
every-cycle block our controller family reads. Its decoded values (no raw reply is published) are
plausible against our field ranges. No BT-1 reply frame is published, so replies are tested on the
BT-2 captures (tests/data/devices/controller.json)."""

from __future__ import annotations

from services.reader.link import NOTIFY_CHAR, WRITE_CHAR
from shared.devices import family
from shared.devices.base import read_plan
from shared.modbus import ReadRequest
from shared.registers import Family, family_for_advertisement

BT1_REQUEST = bytes([255, 3, 1, 0, 0, 34, 209, 241])  # cyrils/renogy-bt README, BT-1 + Rover


def test_the_controller_request_is_byte_for_byte_what_a_bt1_was_sent() -> None:
    every_cycle = read_plan(family("controller"), info_due=False)
    first = every_cycle[0]
    assert ReadRequest(0xFF, first.start, first.words).encode() == BT1_REQUEST


def test_a_bt1_uses_the_bt2_characteristics_and_name() -> None:
    assert WRITE_CHAR.startswith("0000ffd1-") and NOTIFY_CHAR.startswith("0000fff1-")
    assert family_for_advertisement("BT-TH-B00F1234", {}) is Family.BT2  # found as a BT-2 is
