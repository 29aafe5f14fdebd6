"""A TCP relay in front of a real broker whose link can be cut and restored: the network between one
client and the broker fails while every other client (a test's probe) stays connected."""

from __future__ import annotations

import asyncio
import contextlib

from tests.support.brokers import free_port


class TcpRelay:
    def __init__(self, target_port: int, host: str = "127.0.0.1") -> None:
        self.host = host
        self.target_port = target_port
        self.port = free_port()
        self.up = True
        self._downstream_open = asyncio.Event()  # broker -> client bytes flow only while set
        self._downstream_open.set()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, self.port)

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def cut(self) -> None:
        """Drop every relayed connection; new ones are closed at once until restore()."""
        self.up = False
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()

    def restore(self) -> None:
        self.up = True

    def hold_downstream(self) -> None:
        """Keep what the broker sends (e.g. a SUBACK) in the relay until release_downstream()."""
        self._downstream_open.clear()

    def release_downstream(self) -> None:
        self._downstream_open.set()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.up:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.target_port)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        for source, sink, gate in ((reader, up_writer, None), (up_reader, writer, self._downstream_open)):
            task = asyncio.create_task(self._pipe(source, sink, (writer, up_writer), gate))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
        gate: asyncio.Event | None,
    ) -> None:
        try:
            while data := await source.read(65536):
                if gate is not None:
                    await gate.wait()
                sink.write(data)
                await sink.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            for writer in pair:  # one side gone: the other goes too, as a real broken link would
                self._writers.discard(writer)
                with contextlib.suppress(Exception):
                    writer.close()
