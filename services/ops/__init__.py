"""Operator tools, all read from MQTT: `status`, `healthcheck` and `diagnose`.

One module per job: ``session`` (the synchronous MQTT session that collects retained state),
``status`` (evaluation and the table), ``healthcheck`` (one service, and the gateway's API) and
``diagnose`` (the bug-report dump). The commands themselves are ``services.ops.status.status``,
``services.ops.healthcheck.healthcheck`` and ``services.ops.diagnose.diagnose``; the names below
stay importable from ``services.ops``. Exit codes: 0 healthy, 1 unhealthy, 2 broker unreachable
(or refused the connection).
"""

from __future__ import annotations

from services.ops.diagnose import (
    DBUS_SOCKET,
    PACKAGES,
    _bluez_check,
    build_diagnosis,
    in_container,
    render_diagnosis,
)
from services.ops.healthcheck import (
    HELLO_TIMEOUT,
    MSG_HELLO_REQUEST,
    MSG_HELLO_RESPONSE,
    MSG_PING_REQUEST,
    MSG_PING_RESPONSE,
    NOISE_CLIENT_HELLO,
    Verdict,
    _api_target,
    check_service,
    hello_name,
    hello_request,
    probe_api,
)
from services.ops.session import (
    EXIT_HEALTHY,
    EXIT_UNHEALTHY,
    EXIT_UNREACHABLE,
    QUIET_AFTER_SUBSCRIBE,
    BrokerUnreachable,
    Retained,
    _redact_url,
    _Session,
)
from services.ops.status import (
    MIN_POLL_HORIZON,
    MISSED_BEATS,
    SERVICE_HEALTH_INTERVAL,
    SERVICES,
    BatteryRow,
    MissingBattery,
    Report,
    ServiceRow,
    evaluate,
    expected_batteries,
    read_status,
    reader_problems,
    render_table,
    service_max_age,
    status_filters,
)

__all__ = [
    "DBUS_SOCKET",
    "EXIT_HEALTHY",
    "EXIT_UNHEALTHY",
    "EXIT_UNREACHABLE",
    "HELLO_TIMEOUT",
    "MIN_POLL_HORIZON",
    "MISSED_BEATS",
    "MSG_HELLO_REQUEST",
    "MSG_HELLO_RESPONSE",
    "MSG_PING_REQUEST",
    "MSG_PING_RESPONSE",
    "NOISE_CLIENT_HELLO",
    "PACKAGES",
    "QUIET_AFTER_SUBSCRIBE",
    "SERVICES",
    "SERVICE_HEALTH_INTERVAL",
    "BatteryRow",
    "BrokerUnreachable",
    "MissingBattery",
    "Report",
    "Retained",
    "ServiceRow",
    "Verdict",
    "_Session",
    "_api_target",
    "_bluez_check",
    "_redact_url",
    "build_diagnosis",
    "check_service",
    "evaluate",
    "expected_batteries",
    "hello_name",
    "hello_request",
    "in_container",
    "probe_api",
    "read_status",
    "reader_problems",
    "render_diagnosis",
    "render_table",
    "service_max_age",
    "status_filters",
]
