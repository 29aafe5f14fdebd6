"""A D-Bus object tree served by hand: ObjectManager, Properties and method dispatch of ``org.bluez``.

dbus-fast's ServiceInterface cannot leave out a property (BlueZ omits ``Name``, ``RSSI``,
``TxPower``... when it has no value), cannot send one InterfacesAdded for several interfaces, and
always answers a method. So the stand-in keeps its objects as plain dictionaries and answers
``org.freedesktop.DBus.ObjectManager`` and ``org.freedesktop.DBus.Properties`` itself, exactly as
bluetoothd (through GDBus) does: the object manager at ``/``, signals from the object's path.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, Final

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.errors import DBusError

_LOGGER = logging.getLogger(__name__)

OBJECT_MANAGER: Final = "org.freedesktop.DBus.ObjectManager"
PROPERTIES: Final = "org.freedesktop.DBus.Properties"
INTROSPECTABLE: Final = "org.freedesktop.DBus.Introspectable"
UNKNOWN_OBJECT: Final = "org.freedesktop.DBus.Error.UnknownObject"
UNKNOWN_METHOD: Final = "org.freedesktop.DBus.Error.UnknownMethod"
INVALID_ARGS: Final = "org.freedesktop.DBus.Error.InvalidArgs"
PROPERTY_READ_ONLY: Final = "org.freedesktop.DBus.Error.PropertyReadOnly"

# BlueZ's error names and texts (src/error.c)
FAILED: Final = "org.bluez.Error.Failed"
IN_PROGRESS: Final = "org.bluez.Error.InProgress"
NOT_READY: Final = "org.bluez.Error.NotReady"
NOT_CONNECTED: Final = "org.bluez.Error.NotConnected"
DOES_NOT_EXIST: Final = "org.bluez.Error.DoesNotExist"
NOT_SUPPORTED: Final = "org.bluez.Error.NotSupported"
ALREADY_EXISTS: Final = "org.bluez.Error.AlreadyExists"
TEXT_IN_PROGRESS: Final = "Operation already in progress"
TEXT_NOT_READY: Final = "Resource Not Ready"
TEXT_NOT_CONNECTED: Final = "Not Connected"
TEXT_DOES_NOT_EXIST: Final = "Does Not Exist"

Props = dict[str, Variant]
Handler = Callable[[Message], Awaitable[Message | None]]
Setter = Callable[[str, Variant], None]


def bluez_error(name: str, text: str) -> DBusError:
    return DBusError(name, text)


class ObjectTree:
    """Objects (path -> interface -> property -> Variant), methods and signals on one bus connection."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Props]] = {}
        self.methods: dict[tuple[str, str], Handler] = {}
        self.setters: dict[tuple[str, str], Setter] = {}
        self.bus: MessageBus | None = None
        self.calls: Counter[str] = Counter()
        self.hang: Counter[str] = Counter()  # member -> number of next calls that never get a reply
        self.on_signal: Callable[[Message], None] | None = None
        self._pending: set[asyncio.Future[Any]] = set()

    # -- objects ------------------------------------------------------------------------------------

    def add(self, path: str, interfaces: dict[str, Props]) -> None:
        """Add interfaces at ``path`` and announce them (one InterfacesAdded, as GDBus sends)."""
        self.objects.setdefault(path, {}).update(interfaces)
        self._signal(
            "/",
            OBJECT_MANAGER,
            "InterfacesAdded",
            "oa{sa{sv}}",
            [path, {k: dict(v) for k, v in interfaces.items()}],
        )

    def remove(self, path: str) -> None:
        """Remove ``path`` and every object below it, deepest first, announcing each."""
        doomed = sorted(
            (p for p in self.objects if p == path or p.startswith(path + "/")), key=len, reverse=True
        )
        for victim in doomed:
            interfaces = self.objects.pop(victim)
            self._signal("/", OBJECT_MANAGER, "InterfacesRemoved", "oas", [victim, list(interfaces)])

    def has(self, path: str, interface: str | None = None) -> bool:
        found = self.objects.get(path)
        return found is not None and (interface is None or interface in found)

    def get(self, path: str, interface: str, name: str, default: Any = None) -> Any:
        variant = self.objects.get(path, {}).get(interface, {}).get(name)
        return default if variant is None else variant.value

    def update(self, path: str, interface: str, changes: Props, invalidated: list[str] | None = None) -> None:
        """Change properties and emit PropertiesChanged with the changed ones (nothing when none changed)."""
        props = self.objects.get(path, {}).get(interface)
        if props is None:
            return
        changed = {k: v for k, v in changes.items() if k not in props or props[k] != v}
        props.update(changed)
        gone = [k for k in invalidated or () if props.pop(k, None) is not None]
        if changed or gone:
            self._signal(path, PROPERTIES, "PropertiesChanged", "sa{sv}as", [interface, changed, gone])

    def touch(self, path: str, interface: str, changes: Props) -> None:
        """Emit PropertiesChanged for ``changes`` even when equal (a notification repeats its value)."""
        props = self.objects.get(path, {}).get(interface)
        if props is None:
            return
        props.update(changes)
        self._signal(path, PROPERTIES, "PropertiesChanged", "sa{sv}as", [interface, changes, []])

    def clear(self) -> None:
        self.objects.clear()

    # -- bus ----------------------------------------------------------------------------------------

    def attach(self, bus: MessageBus) -> None:
        self.bus = bus
        bus.add_message_handler(self._handle)

    def detach(self) -> None:
        for future in list(self._pending):
            future.cancel()
        self._pending.clear()
        self.bus = None

    def _signal(self, path: str, interface: str, member: str, signature: str, body: list[Any]) -> None:
        if self.bus is None or not self.bus.connected:
            return
        self.bus.send(Message.new_signal(path, interface, member, signature, body))

    def send(self, message: Message) -> None:
        if self.bus is not None and self.bus.connected:
            self.bus.send(message)

    def _handle(self, msg: Message) -> bool:
        if msg.message_type is MessageType.SIGNAL:
            if self.on_signal is not None:
                self.on_signal(msg)
            return False
        if msg.message_type is not MessageType.METHOD_CALL:
            return False
        member = msg.member or ""
        self.calls[member] += 1
        if self.hang[member] > 0:
            self.hang[member] -= 1
            _LOGGER.debug("stand-in: %s on %s will never be answered", member, msg.path)
            return True  # no reply, ever: the caller's deadline (or the bus's reply_timeout) ends it
        task = asyncio.ensure_future(self._dispatch(msg))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return True

    async def _dispatch(self, msg: Message) -> None:
        try:
            reply = await self._answer(msg)
        except DBusError as exc:
            reply = Message.new_error(msg, exc.type, exc.text)
        except asyncio.CancelledError:
            return  # the stand-in stopped (bluetoothd died): the daemon answers NoReply
        except Exception as exc:
            _LOGGER.exception("stand-in BlueZ failed on %s.%s", msg.interface, msg.member)
            reply = Message.new_error(msg, FAILED, f"stand-in error: {exc!r}")
        if reply is not None:
            self.send(reply)

    async def _answer(self, msg: Message) -> Message | None:
        path, interface, member = msg.path or "/", msg.interface or "", msg.member or ""
        if interface == OBJECT_MANAGER and member == "GetManagedObjects" and path == "/":
            body = {p: {i: dict(v) for i, v in ifaces.items()} for p, ifaces in self.objects.items()}
            return Message.new_method_return(msg, "a{oa{sa{sv}}}", [body])
        if interface == PROPERTIES:
            return self._properties(msg)
        if interface == INTROSPECTABLE and member == "Introspect":
            return Message.new_method_return(msg, "s", [self._introspect(path)])
        if path not in self.objects and path != "/":
            raise bluez_error(
                UNKNOWN_OBJECT,
                f'Method "{member}" with signature "{msg.signature}" on '
                f'interface "{interface}" doesn\'t exist',
            )
        handler = self.methods.get((interface, member))
        if handler is None or (path != "/" and interface not in self.objects.get(path, {})):
            raise bluez_error(
                UNKNOWN_METHOD,
                f'Method "{member}" with signature "{msg.signature}" on '
                f'interface "{interface}" doesn\'t exist',
            )
        return await handler(msg)

    def _properties(self, msg: Message) -> Message:
        path, member, body = msg.path or "/", msg.member, msg.body
        ifaces = self.objects.get(path)
        if ifaces is None:
            raise bluez_error(UNKNOWN_OBJECT, f"No such object {path}")
        interface = body[0] if body else ""
        props = ifaces.get(interface)
        if props is None:
            raise bluez_error(INVALID_ARGS, f"No such interface '{interface}'")
        if member == "GetAll":
            return Message.new_method_return(msg, "a{sv}", [dict(props)])
        name = body[1]
        if member == "Get":
            if name not in props:
                raise bluez_error(INVALID_ARGS, f"No such property '{name}'")
            return Message.new_method_return(msg, "v", [props[name]])
        if member == "Set":
            setter = self.setters.get((interface, name))
            if setter is None:
                raise bluez_error(PROPERTY_READ_ONLY if name in props else INVALID_ARGS, f"Property '{name}'")
            setter(path, body[2])
            return Message.new_method_return(msg)
        raise bluez_error(UNKNOWN_METHOD, f"Unknown method {member}")

    def _introspect(self, path: str) -> str:
        prefix = path.rstrip("/") + "/"
        children = sorted({p[len(prefix) :].split("/")[0] for p in self.objects if p.startswith(prefix)})
        nodes = "".join(f'<node name="{child}"/>' for child in children)
        interfaces = "".join(f'<interface name="{name}"/>' for name in self.objects.get(path, {}))
        return f"<node>{interfaces}{nodes}</node>"
