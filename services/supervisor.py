"""`renogy-proxy run`: the whole stack as separate processes under a small supervisor.

Starts the embedded broker (unless an MQTT URL was given or a broker already answers on the port),
then the reader (on the simulator unless a BT-2 is configured), the aggregator and the gateway.
A child that dies is restarted with a capped backoff; Ctrl-C or SIGTERM stops them all cleanly.

The services are forked from the supervisor after it has imported the modules they share and frozen
them out of the garbage collector (gc.freeze), so their pages stay shared copy-on-write: each service is
still its own process (own pid, restart, log prefix, MQTT client), it just does not load and hold its
own copy of paho, orjson, protobuf and our code. RENOGY_RUN_FORK=false (or a platform without
os.fork/pidfd) starts each as `python -m services.cli SERVICE` instead. The embedded broker is always
started that way: it shares little with the services (amqtt is its own).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import functools
import gc
import importlib
import logging
import os
import random
import signal
import sys
import time
import tomllib
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn, Protocol

from services.mqtt_probe import Answer, port_free, probe
from services.options import CONFIG_ENV, overrides_from
from shared.config import Config, ConfigError, env_for, load_config
from shared.mqtt_url import parse_url

_LOGGER = logging.getLogger("supervisor")

STOP_TIMEOUT = 10.0
HEALTHY_AFTER = 60.0  # a child that ran this long restarts without backoff
MAX_BACKOFF = 30.0
PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
FORK_ENV = "RENOGY_RUN_FORK"  # "false": start the services as subprocesses, not forks
# The services' entry points (`run(config) -> exit code`), imported by the supervisor before it forks.
SERVICE_MODULES = {
    "reader": "services.reader.service",
    "aggregator": "services.aggregator.service",
    "gateway": "services.gateway.service",
}
# Preloaded with them. Measured on the run tree (4 processes, external broker): preloading every
# service's modules gave PSS 55 MB, only the ones all three use (shared.service: paho, psutil, orjson)
# 59 MB, fresh interpreters 84 MB. A module only one service uses costs the same PSS either way.
# concurrent.futures.thread: asyncio's default executor, imported at its first use (the gateway's start,
# every service's MQTT stop) in each child otherwise.
SHARED_MODULES = ("shared.service", "shared.registers", "concurrent.futures.thread")
EXIT_CANNOT_START = 2  # the stack cannot start as configured (the message says why and what to do)
EXIT_BROKER_FAILED = 1  # the embedded broker did not come up


class StackError(Exception):
    """The stack cannot start as configured; the message names the cause and the remedy."""


def mqtt_answers(host: str, port: int, timeout: float = 1.0) -> bool:
    return probe(host, port, timeout=timeout).answer is Answer.ACCEPTED


def _credentials_hint(host: str, port: int) -> str:
    return (
        f"give the stack its credentials: --mqtt mqtt://USER:PASSWORD@{host}:{port}, or "
        "RENOGY_MQTT_USERNAME and RENOGY_MQTT_PASSWORD (mqtt.username / mqtt.password)"
    )


def check_broker(config: Config, host: str, port: int, *, embedded_port: bool) -> bool:
    """Raise StackError for a broker that refuses us or a port held by something else.

    Returns True when a broker accepted us, False when nothing listens (and, for the embedded
    broker's port, the port is free to bind)."""
    found = probe(host, port, username=config.mqtt.username, password=config.mqtt.password)
    where = f"{host}:{port}"
    other_port = f"--broker-port {port + 1}" if embedded_port else "another --mqtt URL"
    if found.answer is Answer.ACCEPTED:
        return True
    if found.answer is Answer.REFUSED:
        who = f"as {config.mqtt.username!r}" if config.mqtt.username else "without credentials"
        raise StackError(
            f"an MQTT broker answers on {where} but refused our login {who} ({found.detail}); "
            f"{_credentials_hint(host, port)}"
            + (f"; or run the embedded broker on a free port ({other_port})" if embedded_port else "")
        )
    if found.answer is Answer.NOT_MQTT:
        raise StackError(
            f"port {where} is taken by a program that is not an MQTT broker ({found.detail}); "
            f"use {other_port}, or stop that program"
        )
    if embedded_port and not port_free(host, port):
        raise StackError(
            f"port {where} is taken by another program (it does not accept connections), so the embedded "
            f"broker cannot listen there; use {other_port}, or stop that program"
        )
    return False


class Process(Protocol):
    """What the supervisor needs of a child process: asyncio's subprocess or a ForkedProcess."""

    @property
    def pid(self) -> int: ...
    @property
    def returncode(self) -> int | None: ...
    async def wait(self) -> int: ...
    def send_signal(self, sig: int) -> None: ...
    def kill(self) -> None: ...


class ForkedProcess:
    """A forked child, reaped through its pidfd on the running loop (no SIGCHLD handler, no thread)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._loop = asyncio.get_running_loop()
        self._done: asyncio.Future[int] = self._loop.create_future()
        self._pidfd = os.pidfd_open(pid)  # works on a child that already exited (a zombie until reaped)
        self._loop.add_reader(self._pidfd, self._reap)

    def _reap(self) -> None:
        self._loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        _, status = os.waitpid(self.pid, 0)  # readable pidfd: it exited, so this does not block
        self.returncode = os.waitstatus_to_exitcode(status)
        self._done.set_result(self.returncode)

    async def wait(self) -> int:
        return await asyncio.shield(self._done)

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:  # never signal a pid that was reaped (and may be reused)
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    config_path: Path | None = None
    fork: bool = False  # fork from the supervisor (SERVICE_MODULES) instead of a new interpreter
    prepared: Config | ConfigError | None = None  # the first fork's configuration, loaded before preload
    process: Process | None = None
    started_at: float = 0.0
    restarts: int = 0
    failures: int = 0
    fatal: bool = False  # exited with a start-up error a restart cannot fix
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    async def start(self) -> None:
        # Own session: a Ctrl-C in the terminal reaches only the supervisor, which then stops the
        # services before the broker so they can publish their offline state.
        if self.fork:
            self.process = _fork(self)
        else:
            self.process = await asyncio.create_subprocess_exec(
                *self.argv, env=self.env, start_new_session=True, preexec_fn=_die_with_parent
            )
        self.started_at = time.monotonic()
        _LOGGER.info("started %s (pid %d)", self.name, self.process.pid)

    async def stop(self) -> None:
        process = self.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
        except TimeoutError:
            _LOGGER.warning("%s did not stop within %.0f s; killing it", self.name, STOP_TIMEOUT)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()


def fork_available() -> bool:
    """Fork the services unless RENOGY_RUN_FORK=false or the platform lacks os.fork or pidfds."""
    if os.environ.get(FORK_ENV, "true").strip().lower() in ("0", "false", "no", "off"):
        return False
    if not hasattr(os, "fork") or not hasattr(os, "pidfd_open"):
        return False
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:  # a kernel before 5.3, or a seccomp profile without pidfd_open
        return False
    return True


def preload(simulator: bool) -> None:
    """Import what the forked services use, then freeze it so no child's GC touches (copies) it.

    No collection in between (gc.freeze's documented recipe): the holes it leaves in shared pages
    would take the children's first allocations, and each one copies a page."""
    gc.disable()
    for name in (*SHARED_MODULES, *SERVICE_MODULES.values()):
        importlib.import_module(name)
    if simulator:  # the reader's BT-2 backend when no BT-2 is configured (and its glue, else imported
        importlib.import_module("services.simulator")  # by the reader after the fork)
        importlib.import_module("services.reader.simulate")
    _prctl()
    grow_interned_strings()
    gc.freeze()
    gc.enable()


def grow_interned_strings(limit: int = 1 << 20) -> int:
    """Resize CPython's table of interned strings here, before the fork, so no child has to.

    The preloaded modules leave that table (one dict of every identifier) nearly full, and a child that
    interns a few hundred new names (a module it imports, attribute names it sets) grows it: a new
    ~1 MB table in that child alone (the gateway did, measured). Interning and dropping throw-away
    strings uses up the free slots until the table grows, which the traced memory shows at once; the
    new table is sized for the live strings only (the throw-aways are gone), with room for as many
    again, and the children share it. Returns the strings it took (0 if the resize was not seen)."""
    import _tracemalloc  # noqa: PLC0415 - the C module: no pickle, linecache, ... in every process

    if _tracemalloc.is_tracing():  # someone is measuring this process: leave it alone
        return 0
    _tracemalloc.start(1)
    try:
        base = _tracemalloc.get_traced_memory()[0]
        for taken in range(1, limit + 1):
            sys.intern(f"\x00renogy-grow-{taken}")  # dropped at once: only a free slot is used up
            if _tracemalloc.get_traced_memory()[0] - base > 64 * 1024:  # the new table (>= 200 KB)
                return taken
        return 0
    finally:
        _tracemalloc.stop()


def _fork(child: Child) -> ForkedProcess:
    loop = asyncio.get_running_loop()
    config, child.prepared = child.prepared or service_config(child), None
    gc.freeze()  # what the supervisor allocated since: shared too, and one collection less per child
    pid = os.fork()
    if pid == 0:
        _forked_child(child, config, loop)
    return ForkedProcess(pid)


def service_config(child: Child) -> Config | ConfigError:
    """The configuration `renogy-proxy SERVICE` would load in the child's environment.

    Loaded by the supervisor, not by the forked child: load_config evaluates every setting's type hints
    and validates every key, and in a child each object it touches or allocates copies a shared page
    (USS traced through a child's start: ~0.5 MB less in each child and in the supervisor). A restart
    loads it again, so an edited file applies as it would to a new process."""
    path = child.config_path or (Path(p) if (p := child.env.get(CONFIG_ENV)) else None)
    try:
        return load_config(path, environ=child.env)
    except ConfigError as exc:
        return exc


def _forked_child(
    child: Child, config: Config | ConfigError, parent_loop: asyncio.AbstractEventLoop
) -> NoReturn:
    """The child side of a fork: leave the supervisor's loop, signals and fds behind, run the service."""
    code = 1
    try:
        _leave_supervisor(parent_loop)
        _set_process_name(process_name(child.name))
        _set_environ(child.env)
        code = _run_service(child.name, config)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except KeyboardInterrupt:
        code = 130
    except BaseException:
        traceback.print_exc()
    finally:
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)  # never unwind into the supervisor's frames (its loop, its children)


def _set_environ(env: dict[str, str]) -> None:
    """os.environ becomes ``env``, changing only what differs: clear() and update() would free and
    remake every variable, copying the supervisor's pages they lie on (~0.6 MB per child)."""
    for key in [key for key in os.environ if key not in env]:
        del os.environ[key]
    for key, value in env.items():
        if os.environ.get(key) != value:
            os.environ[key] = value


def _leave_supervisor(parent_loop: asyncio.AbstractEventLoop) -> None:
    os.setsid()
    _die_with_parent()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.set_wakeup_fd(-1)
    asyncio.events._set_running_loop(None)  # Python 3.11 has no at-fork hook for this (3.12 does)
    asyncio.set_event_loop(None)
    # Close the supervisor's epoll and self-pipe without unregistering anything: the epoll instance is
    # shared with the supervisor, so an unregister here would deafen the supervisor's own loop.
    for name in ("_ssock", "_csock", "_selector"):
        resource = getattr(parent_loop, name, None)
        if resource is not None:
            resource.close()
    # Then every other inherited fd (the siblings' pidfds, a stand-in BlueZ's bus), as close_fds does;
    # the objects that held them are the supervisor's and are never used (or freed: os._exit) here.
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    random.seed()  # not the supervisor's sequence in every child


def process_name(service: str) -> str:
    """The comm name of a forked service (the kernel keeps 15 bytes)."""
    return f"renogy-{service}"[:15]


def _set_process_name(name: str) -> None:
    """The comm name (ps -o comm, top, psutil name()): the forks share the supervisor's command line."""
    if (prctl := _prctl()) is not None:
        prctl(PR_SET_NAME, name.encode(), 0, 0, 0)


@functools.cache
def _prctl() -> Callable[..., int] | None:
    """libc's prctl (None off Linux), loaded once: preload builds it so a fork does not (a CDLL makes a
    class of its own: ~0.3 MB of the supervisor's pages copied in each child that did)."""
    with contextlib.suppress(OSError, AttributeError):
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
        return prctl
    return None


def _run_service(name: str, config: Config | ConfigError) -> int:
    """What `renogy-proxy SERVICE` does, in the forked child (the supervisor already warned about
    unknown variables in the same environment)."""
    from shared.logsetup import setup_logging  # noqa: PLC0415 - loaded by the supervisor already

    if isinstance(config, ConfigError):
        print(f"configuration error: {config}", file=sys.stderr)
        return EXIT_CANNOT_START
    setup_logging(config.log_level, name)
    entry = importlib.import_module(SERVICE_MODULES[name]).run
    code: int = asyncio.run(entry(config))
    return code


def _die_with_parent() -> None:
    """Linux: SIGTERM the child if the supervisor itself dies (even by SIGKILL)."""
    if (prctl := _prctl()) is not None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _explicit_mqtt_url(args: argparse.Namespace) -> bool:
    if getattr(args, "mqtt.url", None) or os.environ.get("RENOGY_MQTT_URL"):
        return True
    path = args.config or (Path(os.environ[CONFIG_ENV]) if os.environ.get(CONFIG_ENV) else None)
    if path is None:
        return False
    with path.open("rb") as handle:
        return "url" in tomllib.load(handle).get("mqtt", {})


def _bt2_configured(config: Config) -> bool:
    reader = config.reader
    return bool(reader.bt2_address or reader.bt2_name or reader.backend)


def plan(args: argparse.Namespace, config: Config) -> tuple[list[Child], str | None]:
    """The children to run and the broker URL the services use (None = embedded broker to start)."""
    overrides = overrides_from(args)
    children: list[Child] = []
    broker_url = config.mqtt.url
    if _explicit_mqtt_url(args):
        address = parse_url(config.mqtt.url)
        if not address.tls and not check_broker(config, address.host, address.port, embedded_port=False):
            _LOGGER.warning(
                "nothing answers at %s yet; the services keep trying to connect", parse_url(config.mqtt.url)
            )
    else:
        broker_url = f"mqtt://127.0.0.1:{args.broker_port}"
        if check_broker(config, "127.0.0.1", args.broker_port, embedded_port=True):
            _LOGGER.info("an MQTT broker already answers on 127.0.0.1:%d; using it", args.broker_port)
        else:
            children.append(
                _child(
                    "broker", ["broker", "--port", str(args.broker_port), "--log-level", config.log_level], {}
                )
            )
        overrides["mqtt.url"] = broker_url
    if not _bt2_configured(config) and not config.simulator.enabled:
        _LOGGER.info("no BT-2 configured (reader.bt2_address / RENOGY_BT2_ADDRESS); reading the simulator")
        overrides["simulator.enabled"] = True
    env = {**os.environ, **env_for(overrides)}
    config_args = ["--config", str(args.config)] if args.config else []
    fork = fork_available()
    for service in SERVICE_MODULES:
        child = _child(service, [service, *config_args], env)
        child.config_path, child.fork = args.config, fork
        children.append(child)
    return children, broker_url


def _child(name: str, argv: list[str], env: dict[str, str]) -> Child:
    return Child(name, [sys.executable, "-m", "services.cli", *argv], dict(env or os.environ))


async def _supervise(child: Child, stop: asyncio.Event) -> None:
    """Keep one child running until stop is set."""
    while not stop.is_set():
        await child.start()
        assert child.process is not None
        waiter = asyncio.ensure_future(child.process.wait())
        stopper = asyncio.ensure_future(stop.wait())
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if stop.is_set():
            waiter.cancel()
            return
        code = waiter.result()
        ran = time.monotonic() - child.started_at
        if code == EXIT_CANNOT_START:
            # Every service exits 2 for what a restart cannot fix (a bad setting, a port another
            # program holds): restarting would only repeat the same message every few seconds.
            _LOGGER.error(
                "%s exited with code 2: it cannot start as configured (its message above says why); "
                "stopping the stack",
                child.name,
            )
            child.fatal = True
            stop.set()
            return
        child.failures = 0 if ran >= HEALTHY_AFTER else child.failures + 1
        delay = min(MAX_BACKOFF, 2.0 ** (child.failures - 1)) if child.failures else 0.5
        child.restarts += 1
        _LOGGER.warning(
            "%s exited with code %s after %.1f s; restarting in %.1f s", child.name, code, ran, delay
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)


async def run_stack(args: argparse.Namespace, config: Config) -> int:
    try:
        children, broker_url = plan(args, config)
    except StackError as exc:
        _LOGGER.error("cannot start the stack: %s", exc)
        return EXIT_CANNOT_START
    exit_code = 0
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    broker = next((c for c in children if c.name == "broker"), None)
    services = [c for c in children if c is not broker]
    if broker is not None:
        broker.task = asyncio.create_task(_supervise(broker, stop))
        address = parse_url(broker_url or config.mqtt.url)
        deadline = time.monotonic() + 15
        while not mqtt_answers(address.host, address.port, timeout=0.5):
            if time.monotonic() > deadline or stop.is_set():
                if not stop.is_set():
                    _LOGGER.error(
                        "the embedded broker did not come up on %s; see its log lines above", address
                    )
                    exit_code = EXIT_BROKER_FAILED
                stop.set()
                break
            await asyncio.sleep(0.1)
    if not stop.is_set():
        for child in services:
            if child.fork:  # before preload: its garbage is collected, not frozen into the shared pages
                child.prepared = service_config(child)
        if any(child.fork for child in services):
            preload(simulator=config.simulator.enabled or not _bt2_configured(config))
        for child in services:
            child.task = asyncio.create_task(_supervise(child, stop))
        port = getattr(args, "gateway.api_port", None) or config.gateway.api_port
        _LOGGER.info(
            "stack starting: broker %s; ESPHome API on port %d. Watch it with: mosquitto_sub -h %s -p %d -v -t "
            "'%s/#'. In Home Assistant: Settings > Devices & services > Add integration > ESPHome, host = this "
            "machine, port %d.",
            broker_url,
            port,
            parse_url(broker_url or config.mqtt.url).host,
            parse_url(broker_url or config.mqtt.url).port,
            config.mqtt.root_topic,
            port,
        )
    await stop.wait()
    _LOGGER.info("stopping")
    for child in reversed(services):
        await child.stop()
    if broker is not None:
        await broker.stop()
    for child in children:
        if child.task is not None:
            await child.task
    if any(child.fatal for child in children):
        return EXIT_CANNOT_START
    return exit_code
