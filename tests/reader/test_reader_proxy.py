"""The reader's Bluetooth-proxy side: advertisement batches, scanner state and mode, capture file."""

from __future__ import annotations

import orjson

from services.simulator import advertisements, parse_ad
from tests.reader.support import reader_on_sim

ADVERTS = "renogy/bridge/reader/default/advertisements"
SCANNER = "renogy/bridge/reader/default/scanner"


def _batches(probe) -> list[dict]:
    return [orjson.loads(m.payload) for m in probe.messages if m.topic == ADVERTS]


async def test_advertisements_are_batched_with_their_ad_bytes(mosquitto) -> None:
    async with reader_on_sim(mosquitto.url) as (reader, sim, probe):
        addresses = {adv.address for adv in advertisements(sim)}
        await probe.wait_for(
            lambda: {a["address"] for b in _batches(probe) for a in b["advertisements"]} >= addresses,
            what="every simulated device",
        )
        sent: dict[str, list[tuple]] = {}
        for item in reader.scanner._scanner._backend.emitted:  # what the simulated radio sent
            parsed = parse_ad(item.raw)
            sent.setdefault(item.address, []).append(
                (parsed.local_name, parsed.manufacturer_data, parsed.service_data)
            )
        for batch in _batches(probe):
            assert 1 <= len(batch["advertisements"]) <= 16
            assert batch["adapter_address"] == reader.adapter_address
            for adv in batch["advertisements"]:
                # Same AD content as one the device sent (the order of AD structures may differ).
                ours = parse_ad(bytes.fromhex(adv["data"]))
                assert (ours.local_name, ours.manufacturer_data, ours.service_data) in sent[adv["address"]]
                assert adv["address_type"] in (0, 1) and len(bytes.fromhex(adv["data"])) <= 62


async def test_scanner_state_and_mode_request(mosquitto) -> None:
    async with reader_on_sim(mosquitto.url) as (reader, _sim, probe):
        await probe.wait_for(lambda: SCANNER in probe.latest and probe.json(SCANNER)["state"] == "running")
        assert probe.json(SCANNER)["mode"] == "active"
        probe.publish("renogy/bridge/reader/default/scanner/set", {"schema": 1, "mode": "passive"})
        await probe.wait_for(
            lambda: probe.json(SCANNER)["mode"] == "passive" and probe.json(SCANNER)["state"] == "running",
            what="passive scanner",
        )
        assert probe.json(SCANNER)["configured_mode"] == "passive"
        probe.publish("renogy/bridge/reader/default/scanner/set", b"{not json")
        probe.publish("renogy/bridge/reader/default/scanner/set", {"schema": 1, "mode": "sideways"})
        assert await reader.cycle() == 4  # bad requests are logged and dropped; the reader goes on


async def test_capture_file_records_every_exchange(mosquitto, tmp_path) -> None:
    capture = tmp_path / "capture.jsonl"
    async with reader_on_sim(mosquitto.url, capture_file=capture) as (reader, _sim, _probe):
        await reader.cycle()
        await reader.cycle()
    lines = [orjson.loads(line) for line in capture.read_text().splitlines()]
    # First cycle, 4 batteries x (5042, 5000, 5100, 5104); second, 4 x (the merged 5000x49 the default
    # simulator refuses, then 5042, 5000)
    assert len(lines) == 16 + 12
    assert lines[16]["words"] == 49 and lines[16]["result"] == "modbus_exception"
    first = lines[0]
    assert first["request"] == "300313b20007a48a" and first["result"] == "ok"
    assert first["notifications"] and first["elapsed"] >= first["notifications"][-1][0]
