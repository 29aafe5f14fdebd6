"""Operator tools read the configuration and explain themselves: `config check`, `scan`, `healthcheck gateway`,
every `--help` (issue 11)."""

from __future__ import annotations

import argparse
import asyncio
import re
from pathlib import Path
from typing import Any

import pytest

from services.cli import COMMANDS, build_parser, main, overrides_from, setting_help, shown_default
from services.config_check import COMPOSE_VARIABLES, TEST_VARIABLES, setting_variables
from services.gateway import messages
from services.gateway.service import Gateway
from services.ops import MSG_HELLO_REQUEST, MSG_HELLO_RESPONSE, hello_name, hello_request, probe_api
from shared.config import load_config, settings
from tests.deploy.support import ROOT, cli
from tests.support.brokers import free_port


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_subcommand_help_has_a_description_defaults_and_an_example(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [command, "check", "--help"] if command == "config" else [command, "--help"]
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 0
    text = capsys.readouterr().out
    usage_end = text.index("\n\n")
    description = text[usage_end:].strip().split("\n\n")[0]
    assert len(description) > 40 and not description.startswith(("options:", "positional")), text
    assert "examples:\n  renogy-proxy" in text or "examples:\n  RENOGY_" in text, text
    if command != "keygen":  # keygen has no options
        assert "default" in text, text


def test_setting_options_show_their_default_and_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["reader", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default 48,49,50,51; env RENOGY_BATTERIES)" in text
    assert "(default 30.0; env RENOGY_POLL_INTERVAL)" in text


def _subcommand_parsers() -> dict[str, argparse.ArgumentParser]:
    """Subcommand -> its parser (`config` -> `config check`, whose options the table names "config")."""
    found: dict[str, argparse.ArgumentParser] = {}
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, parser in action.choices.items():
                found[name] = parser
                for inner in parser._actions:
                    if isinstance(inner, argparse._SubParsersAction):
                        found[name] = inner.choices["check"]
    return found


def test_every_setting_backed_flag_comes_from_the_settings_table(capsys: pytest.CaptureFixture[str]) -> None:
    table = {info.path: info for info in settings()}
    flags = {flag for info in table.values() for flag in info.cli}
    parsers = _subcommand_parsers()
    assert set(parsers) == set(COMMANDS)
    for info in table.values():
        unknown = set(info.commands) - set(COMMANDS)
        assert not unknown, f"{info.path}: no such subcommand {unknown}"
    for command, parser in parsers.items():
        argv = [command, "check", "--help"] if command == "config" else [command, "--help"]
        with pytest.raises(SystemExit):
            main(argv)
        text = " ".join(capsys.readouterr().out.split())
        seen = set()
        for action in parser._actions:
            info = table.get(action.dest)
            if info is None:
                # healthcheck --instance picks the service to check; broker --log-level has no config
                own = (command, action.dest) in (("healthcheck", "instance"), ("broker", "broker_log_level"))
                assert own or not flags & set(action.option_strings), (
                    f"{command} {action.option_strings}: a setting's flag not generated from the table"
                )
                continue
            seen.add(info.path)
            where = f"{command} {'/'.join(action.option_strings)}"
            assert command in info.commands, f"{where}: hand-written option for setting {info.path}"
            assert tuple(action.option_strings) == info.cli, where
            assert action.help == setting_help(info, command).replace("%", "%%"), where
            assert info.help[1:] in action.help, where  # "do not announce" for "Announce" under --no-mdns
            tail = f"(default {shown_default(info)}; env {info.env})"
            assert action.help.endswith(tail), where
            assert f"{'/'.join(info.cli)}" in text and " ".join(tail.split()) in text, where
            if info.choices:
                assert tuple(action.choices or ()) == info.choices, where
        expected = {info.path for info in table.values() if command in info.commands}
        assert seen == expected, f"{command}: missing generated options for {sorted(expected - seen)}"


def test_generated_flags_keep_their_types_and_behaviour() -> None:
    argv = "run --batteries 48,49 --poll-interval 5 --no-mdns --simulate --api-port 6054 --profile extended"
    args = build_parser().parse_args([*argv.split(), "--state-dir", "/tmp/x", "--log-level", "debug"])
    overrides = overrides_from(args)
    assert overrides == {
        "reader.batteries": [48, 49],
        "reader.poll_interval": 5.0,
        "gateway.mdns": False,
        "simulator.enabled": True,
        "gateway.api_port": 6054,
        "aggregator.profile": "extended",
        "state_dir": Path("/tmp/x"),
        "log_level": "debug",
    }
    assert overrides_from(build_parser().parse_args(["broker", "--log-level", "debug"])) == {}
    with pytest.raises(SystemExit):
        build_parser().parse_args(["gateway", "--entity-naming", "other"])


def test_docs_list_the_flags_of_the_settings_table() -> None:
    from services import docgen

    assert docgen._cli_options() == {info.path: sorted(info.cli) for info in settings() if info.cli}
    assert not any("_actions" in line for line in (ROOT / "services" / "docgen.py").read_text().splitlines())


def test_supervisor_does_not_import_the_cli() -> None:
    source = (ROOT / "services" / "supervisor.py").read_text()
    assert "services.cli import" not in source and "import services.cli" not in source


def test_config_check_accepts_a_good_configuration(tmp_path: Path) -> None:
    path = tmp_path / "renogy.toml"
    path.write_text(
        '[reader]\nbatteries = [48, 49]\n[aggregator]\nbanks = [{id = "house", batteries = [48, 49]}]\n'
    )
    done = cli("config", "check", "--config", str(path), env={"RENOGY_POLL_INTERVAL": "10"})
    assert done.code == 0, done.err
    assert "configuration ok" in done.out and str(path) in done.out and "RENOGY_POLL_INTERVAL" in done.out


def test_config_check_finds_typos_with_a_did_you_mean_and_names_every_key(tmp_path: Path) -> None:
    done = cli(
        "config", "check", env={"RENOGY_BATERIES": "48", "RENOGY_POLL_INTERVALL": "5", "RENOGY_ZZZ": "1"}
    )
    assert done.code == 2, done.out
    assert (
        "unknown environment variable RENOGY_BATERIES: no setting reads it (did you mean RENOGY_BATTERIES?)"
        in (done.err)
    )
    assert "(did you mean RENOGY_POLL_INTERVAL?)" in done.err and "RENOGY_ZZZ" in done.err
    bad_json = cli("config", "check", env={"RENOGY_BANKS": "[{id"})
    assert bad_json.code == 2 and "aggregator.banks (environment RENOGY_BANKS): not JSON" in bad_json.err
    layout = cli(
        "config", "check", env={"RENOGY_BANKS": '[{"id": "a", "batteries": [48]}, {"batteries": [49]}]'}
    )
    assert layout.code == 2 and "aggregator.banks[1].id: required" in layout.err, layout.err
    out_of_range = cli("config", "check", env={"RENOGY_BATTERIES": "48,250"})
    assert out_of_range.code == 2 and "reader.batteries" in out_of_range.err and "1..247" in out_of_range.err
    sim = cli("config", "check", env={"RENOGY_SIMULATE": "true", "RENOGY_SIM_BATTERIES": "48"})
    assert sim.code == 2 and "reader.batteries [49, 50, 51] are not simulated" in sim.err, sim.err


def test_services_warn_about_unknown_variables() -> None:
    done = cli("scan", "--timeout", "1", env={"RENOGY_SIMULATE": "true", "RENOGY_BATERIES": "48"})
    assert done.code == 0, done.err
    assert "unknown environment variable RENOGY_BATERIES" in done.err and "RENOGY_BATTERIES?" in done.err


def test_every_renogy_variable_of_the_deploy_files_is_known() -> None:
    known = setting_variables() | COMPOSE_VARIABLES | TEST_VARIABLES
    files = [ROOT / "docker-compose.yml", *(p for p in (ROOT / "deploy").rglob("*") if p.is_file())]
    found = {
        name for path in files for name in re.findall(r"\bRENOGY_[A-Z0-9_]*[A-Z0-9]\b", path.read_text())
    }
    unknown = sorted(name for name in found if name not in known and not name.startswith("RENOGY_DOCKER_"))
    assert not unknown, f"add these to services/config_check.py COMPOSE_VARIABLES or the settings: {unknown}"


def test_scan_reads_the_environment() -> None:
    done = cli(
        "scan",
        "--timeout",
        "2",
        env={
            "RENOGY_SIMULATE": "true",
            "RENOGY_SIM_ADDRESS": "C4:64:E3:00:00:02",
            "RENOGY_SIM_NAME": "BT-TH-OTHER",
        },
    )
    assert done.code == 0, done.err
    assert "C4:64:E3:00:00:02" in done.out and "BT-TH-OTHER" in done.out
    assert "scanning 2 s on the simulator" in done.err


def test_hello_frames_match_the_protobuf_table() -> None:
    assert MSG_HELLO_REQUEST == messages.HELLO_REQUEST and MSG_HELLO_RESPONSE == messages.HELLO_RESPONSE
    from aioesphomeapi.api_pb2 import HelloRequest, HelloResponse  # type: ignore[attr-defined]

    frame = hello_request()
    parsed = HelloRequest()
    parsed.ParseFromString(frame[3:])
    assert parsed.client_info == "renogy-proxy healthcheck" and parsed.api_version_major == 1
    body = HelloResponse(api_version_major=1, api_version_minor=10, server_info="x", name="node-a")
    payload = body.SerializeToString()
    assert hello_name(b"\x00" + bytes((len(payload), MSG_HELLO_RESPONSE)) + payload) == "node-a"


async def test_healthcheck_gateway_does_not_take_another_gateway_for_ours(
    mosquitto: Any, tmp_path: Path
) -> None:
    port = free_port()
    environ = {
        "RENOGY_MQTT_URL": mosquitto.url,
        "RENOGY_STATE_DIR": str(tmp_path),
        "RENOGY_API_BIND": "127.0.0.1",
        "RENOGY_MDNS": "false",
    }
    other = load_config(environ={**environ, "RENOGY_API_PORT": str(port), "RENOGY_NAME": "someone-else"})
    async with Gateway(other):
        verdict = await asyncio.to_thread(
            probe_api, "127.0.0.1", port, encrypted=False, expect_name="renogy-bt-proxy"
        )
        assert not verdict.healthy and "answers as node 'someone-else'" in verdict.text
        ours = await asyncio.to_thread(
            probe_api, "127.0.0.1", port, encrypted=False, expect_name="someone-else"
        )
        assert ours.healthy and "plaintext, node someone-else" in ours.text
        await asyncio.sleep(0.5)
        check = await asyncio.to_thread(cli, "healthcheck", "gateway", "--api-port", str(port), env=environ)
        assert check.code == 1, check.out
        assert "not this gateway's 'renogy-bt-proxy'" in check.out
        named = await asyncio.to_thread(
            cli,
            "healthcheck",
            "gateway",
            "--api-port",
            str(port),
            env={**environ, "RENOGY_NAME": "someone-else"},
        )
        assert named.code == 0, named.out
