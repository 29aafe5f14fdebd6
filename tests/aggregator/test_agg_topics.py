"""The reading topic contract: <root>/bt2/<bt2>/<kind>/<slave>/reading, the battery topic unchanged."""

from __future__ import annotations

import pytest

from shared.devices import KINDS
from shared.topics import READING_KINDS, Topics

BT2 = "c464e3383d0e"
TOPICS = Topics()


def test_the_battery_topic_is_unchanged() -> None:
    assert TOPICS.reading(BT2, 48) == f"renogy/bt2/{BT2}/battery/48/reading"
    assert TOPICS.parse_reading(f"renogy/bt2/{BT2}/battery/48/reading") == (BT2, 48)
    assert Topics("site/a").parse_reading(f"site/a/bt2/{BT2}/battery/255/reading") == (BT2, 255)


def test_other_kinds_have_their_own_level() -> None:
    assert TOPICS.reading(BT2, 96, "dcc") == f"renogy/bt2/{BT2}/dcc/96/reading"
    assert TOPICS.parse_device_reading(f"renogy/bt2/{BT2}/dcc/96/reading") == (BT2, "dcc", 96)
    assert TOPICS.parse_device_reading(f"renogy/bt2/{BT2}/shunt/0/reading") == (BT2, "shunt", 0)
    assert TOPICS.parse_reading(f"renogy/bt2/{BT2}/dcc/96/reading") is None  # not a battery


def test_filters_cover_every_kind_battery_first() -> None:
    assert READING_KINDS == KINDS  # shared.topics cannot import shared.devices (it imports topics)
    assert TOPICS.reading_filter == "renogy/bt2/+/+/+/reading"
    assert TOPICS.reading_filters[0] == "renogy/bt2/+/battery/+/reading"
    assert TOPICS.reading_filters[1:] == tuple(f"renogy/bt2/+/{k}/+/reading" for k in KINDS[1:])


@pytest.mark.parametrize(
    "topic",
    [
        f"renogy/bt2/{BT2}/battery/0/reading",  # slave 0 is the shunt's only
        f"renogy/bt2/{BT2}/battery/256/reading",
        f"renogy/bt2/{BT2}/battery/99999999999999999999/reading",
        f"renogy/bt2/{BT2}/battery/\u00b9/reading",  # '¹'.isdigit() is True, int('¹') raises
        f"renogy/bt2/{BT2}/battery/\u0664\u0668/reading",  # Arabic-Indic 48: int() takes it, topics must not
        f"renogy/bt2/{BT2.upper()}/battery/48/reading",
        f"renogy/bt2/{BT2}/battery/48/reading/x",
        f"renogy/bt2/{BT2}/Battery/48/reading",
        f"renogy/bt2/{BT2}/battery/-1/reading",
        "renogy/device/battery_48/state",
    ],
)
def test_bad_reading_topics_are_refused_without_raising(topic: str) -> None:
    assert TOPICS.parse_reading(topic) is None
    assert TOPICS.parse_device_reading(topic) is None
