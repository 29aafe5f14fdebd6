"""The real Home Assistant test (`make test-ha`): HA venv builder, launcher, REST/websocket driver, tests."""

GATE = "RENOGY_HA_TEST"  # set to 1 by `make test-ha`; without it the tests skip (plain `make test`)
