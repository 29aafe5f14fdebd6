"""Pure parts of the reader: recovery policy, backoff, advertisement encoding, error diagnosis."""

from __future__ import annotations

import pytest
from bleak.backends.scanner import AdvertisementData
from bleak.exc import BleakDBusError, BleakDeviceNotFoundError, BleakError

from services.reader.advertisements import AdvertisementBatcher, RawAdvertisement, encode_ad
from services.reader.bluez_errors import diagnose
from services.reader.readings import BatteryCycle, Identity
from services.reader.recovery import Action, Backoff, Watchdog
from services.simulator import parse_ad


def test_watchdog_escalates_reconnect_reset_exit() -> None:
    dog = Watchdog(cycles=2)
    actions = [dog.cycle_done(0) for _ in range(6)]
    assert actions == [
        Action.NONE,
        Action.RECONNECT,
        Action.NONE,
        Action.RESET_ADAPTER,
        Action.NONE,
        Action.EXIT,
    ]
    assert dog.cycle_done(1) is Action.NONE and dog.bad_cycles == 0


def test_watchdog_without_adapter_reset_reconnects_instead() -> None:
    dog = Watchdog(cycles=1, adapter_reset=False)
    assert [dog.cycle_done(0) for _ in range(3)] == [Action.RECONNECT, Action.RECONNECT, Action.EXIT]


def test_backoff_is_capped_and_resets() -> None:
    backoff = Backoff(initial=1, maximum=8)
    assert [backoff.next_delay() for _ in range(6)] == [0, 1, 2, 4, 8, 8]
    backoff.reset()
    assert backoff.next_delay() == 0


def test_ad_encoding_of_a_bt2() -> None:
    adv = AdvertisementData(
        local_name="BT-TH-E3383D0E",
        manufacturer_data={0x64C4: bytes.fromhex("e3383d0e")},
        service_data={},
        service_uuids=["0000ffd0-0000-1000-8000-00805f9b34fb"],
        tx_power=None,
        rssi=-60,
        platform_data=(),
    )
    data = encode_ad(adv)
    parsed = parse_ad(data)
    assert parsed.local_name == "BT-TH-E3383D0E"
    assert parsed.manufacturer_data == {0x64C4: bytes.fromhex("e3383d0e")}
    assert "0000ffd0-0000-1000-8000-00805f9b34fb" in parsed.service_uuids


def test_ad_encoding_stays_within_62_bytes() -> None:
    adv = AdvertisementData(
        "x" * 40, {0x004C: bytes(30)}, {"0000fe95-0000-1000-8000-00805f9b34fb": bytes(20)}, [], 4, -70, ()
    )
    assert len(encode_ad(adv)) <= 62


def test_batcher_keeps_latest_per_address_and_flushes_at_16() -> None:
    batcher = AdvertisementBatcher()
    full = [batcher.add(RawAdvertisement(f"AA:00:00:00:00:{i:02X}", 0, -50, b"")) for i in range(16)]
    assert full[-1] and not any(full[:-1])
    assert batcher.add(RawAdvertisement("AA:00:00:00:00:00", 0, -40, b"\x01")) is True
    batch = batcher.take()
    assert len(batch) == 16 and next(a for a in batch if a.address.endswith("00")).rssi == -40


@pytest.mark.parametrize(
    ("exc", "kind", "fatal", "text"),
    [
        (FileNotFoundError(2, "No such file or directory"), "adapter_error", False, "D-Bus"),
        (
            BleakDBusError(
                "org.freedesktop.DBus.Error.ServiceUnknown", ["The name org.bluez was not provided"]
            ),
            "adapter_error",
            False,  # bleak finds bluetoothd again once it is back: retried, not fatal
            "systemctl start bluetooth'; retrying with back-off",
        ),
        (
            BleakDBusError("org.freedesktop.DBus.Error.AccessDenied", ["denied"]),
            "adapter_error",
            False,
            "policy",
        ),
        (BleakError("le-connection-abort-by-local"), "connect_failed", False, "interference"),
        (BleakDeviceNotFoundError("C4:64:E3:38:3D:0E"), "connect_failed", False, "Renogy app"),
    ],
)
def test_errors_come_with_a_remedy(exc: BaseException, kind: str, fatal: bool, text: str) -> None:
    diagnosis = diagnose(exc, "hci0")
    assert (diagnosis.kind, diagnosis.fatal) == (kind, fatal) and text in diagnosis.message


def test_failed_block_fields_are_absent_not_stale() -> None:
    cycle = BatteryCycle("c464e3383d0e", 48)
    cycle.add_block(5042, {"voltage": 52.4, "current": 1.0}, b"\x30\x03", 100.0)
    cycle.fail_block(5000)
    body = cycle.payload(Identity(model="RBT50LFP48S"), "boot")
    assert body["complete"] is False and "cell_voltages" not in body and body["voltage"] == 52.4
    assert body["model"] == "RBT50LFP48S" and body["ts"] == 100.0 and body["raw"] == {"5042": "3003"}
