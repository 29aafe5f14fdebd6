"""Bank membership and per-battery overrides from the configuration."""

from __future__ import annotations

import pytest

from services.aggregator.banks import Layout, Selector, layout_from_config, parse_selector
from shared.config import AggregatorConfig, ConfigError, load_config
from tests.aggregator.support import BT2, OTHER_BT2


def test_default_layout_puts_every_battery_in_bank() -> None:
    layout = layout_from_config(AggregatorConfig())
    assert layout == Layout()
    assert layout.device_id(BT2, 48) == "battery_48" and layout.name(BT2, 48) == "Battery 48"
    assert layout.bank_of(OTHER_BT2, 200) == "bank"
    assert layout.bank("bank") is not None and layout.bank("battery_48") is None


def test_selectors() -> None:
    assert parse_selector("x", 48) == Selector(48)
    assert parse_selector("x", "49") == Selector(49)
    assert parse_selector("x", "C4:64:E3:38:3D:0E:50") == Selector(50, BT2)
    assert parse_selector("x", f"{BT2}:51") == Selector(51, BT2)
    for bad in (0, 256, "abc", "zz:48", True, 4.5, f"{BT2}:"):
        with pytest.raises(ConfigError, match="x"):
            parse_selector("x", bad)


def test_configured_banks_and_overrides() -> None:
    config = AggregatorConfig(
        banks=[
            {"id": "house", "name": "House", "batteries": [48, 49]},
            {"id": "shed", "batteries": [f"{OTHER_BT2}:48"]},
        ],
        batteries=[
            {"bt2": OTHER_BT2, "slave_id": 48, "id": "shed_48", "name": "Shed 48"},
            {"slave_id": 49, "name": "Left"},
        ],
    )
    layout = layout_from_config(config)
    assert layout.bank_of(BT2, 48) == "house"
    assert layout.bank_of(OTHER_BT2, 48) == "shed"  # the BT-2-specific entry wins
    assert layout.bank_of(BT2, 50) is None
    assert layout.device_id(OTHER_BT2, 48) == "shed_48" and layout.name(OTHER_BT2, 48) == "Shed 48"
    assert layout.device_id(BT2, 49) == "battery_49" and layout.name(BT2, 49) == "Left"
    assert layout.bank("shed") is not None and layout.bank("shed").name == "shed"


@pytest.mark.parametrize(
    ("banks", "batteries", "key"),
    [
        ([{"id": "a", "batteries": [48]}, {"batteries": [49]}], [], r"aggregator.banks\[1\].id"),
        ([{"id": "Bad Id", "batteries": [48]}], [], r"aggregator.banks\[0\].id"),
        ([{"id": "a", "batteries": []}], [], r"aggregator.banks\[0\].batteries"),
        (
            [{"id": "a", "batteries": [48], "colour": "red"}],
            [],
            r"aggregator.banks\[0\]: unknown key 'colour'",
        ),
        ([{"id": "a", "batteries": [48]}, {"id": "a", "batteries": [49]}], [], "duplicate bank id"),
        ([{"id": "a", "batteries": [48]}, {"id": "b", "batteries": [48]}], [], "48 is in bank 'a' and 'b'"),
        ([], [{"slave_id": "48", "id": "x"}], r"aggregator.batteries\[0\].slave_id"),
        ([], [{"slave_id": 48}], r"aggregator.batteries\[0\]: give an 'id'"),
        ([], [{"slave_id": 48, "id": "x"}, {"slave_id": 49, "id": "x"}], "device id 'x' is used twice"),
        ([], [{"slave_id": 48, "id": "bank"}], "device id 'bank' is used twice"),
        ([], [{"slave_id": 48, "bt2": "nope", "id": "x"}], r"aggregator.batteries\[0\]"),
    ],
)
def test_invalid_config_names_the_key(banks: list, batteries: list, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        layout_from_config(AggregatorConfig(banks=banks, batteries=batteries))


def test_override_from_environment() -> None:
    config = load_config(
        None,
        environ={
            "RENOGY_AGGREGATOR_BATTERIES": f'[{{"bt2": "{OTHER_BT2}", "slave_id": 48, "id": "battery_48_b"}}]',
            "RENOGY_BANKS": '[{"id": "bank", "batteries": [48, "' + OTHER_BT2 + ':48"]}]',
        },
    )
    layout = layout_from_config(config.aggregator)
    assert layout.device_id(OTHER_BT2, 48) == "battery_48_b"
    assert layout.bank_of(OTHER_BT2, 48) == "bank" and layout.bank_of(BT2, 48) == "bank"
