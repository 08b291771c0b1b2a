"""A small asyncio subscriber of the live results (`GET /live/polls/<poll_id>`), as EventSource or WebSocket.

Standard library only, one connection per subscriber from a chosen loopback source address (the stack's
nginx limits concurrent subscriptions per address). Used by the tests and by `pgvote bench --live`,
which opens thousands of them from one process.

    async with await LiveSubscriber.connect(host, port, poll_id, "ws") as sub:
        message = await sub.next()   # {"seq": ..., "results": {...}}
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import struct
from types import TracebackType
from typing import Any, Literal, Self

Transport = Literal["sse", "ws"]


class LiveRefused(Exception):
    """The server answered the subscription with an HTTP error instead of a stream."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"{status}: {body}")
        self.status = status
        self.body = body


class LiveSubscriber:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, transport: Transport) -> None:
        self.reader = reader
        self.writer = writer
        self.transport = transport

    @classmethod
    async def connect(cls, host: str, port: int, poll_id: str, transport: Transport = "sse",
                      source_ip: str | None = None, path: str | None = None,
                      timeout: float = 30.0) -> LiveSubscriber:
        """Open the subscription; raise LiveRefused when the answer is not a stream (404, 400, 429...),
        TimeoutError when there is no answer within timeout seconds."""
        reader, writer = await asyncio.wait_for(asyncio.open_connection(
            host, port, local_addr=(source_ip, 0) if source_ip else None, limit=1 << 20), timeout)
        try:
            return await asyncio.wait_for(cls._handshake(reader, writer, host, port, poll_id, transport, path),
                                          timeout)
        except BaseException:
            writer.close()
            raise

    @classmethod
    async def _handshake(cls, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, port: int,
                         poll_id: str, transport: Transport, path: str | None) -> LiveSubscriber:
        target = path or f"/live/polls/{poll_id}"
        headers = [f"GET {target} HTTP/1.1", f"Host: {host}:{port}"]
        if transport == "ws":
            key = base64.b64encode(os.urandom(16)).decode()
            headers += ["Upgrade: websocket", "Connection: Upgrade", f"Sec-WebSocket-Key: {key}",
                        "Sec-WebSocket-Version: 13"]
        else:
            headers += ["Accept: text/event-stream", "Cache-Control: no-cache"]
        writer.write(("\r\n".join(headers) + "\r\n\r\n").encode())
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        status = int(head.split(" ", 2)[1])
        if status not in (101, 200):
            length = next((int(line.split(":", 1)[1]) for line in head.split("\r\n")
                           if line.lower().startswith("content-length:")), 0)
            body = (await reader.readexactly(length)).decode() if length else ""
            raise LiveRefused(status, body)
        return cls(reader, writer, transport)

    async def next(self) -> dict[str, Any]:
        """The next message, parsed (pings and comments are skipped)."""
        while True:
            text = await (self._next_ws() if self.transport == "ws" else self._next_sse())
            if text:
                parsed: dict[str, Any] = json.loads(text)
                return parsed

    async def _next_sse(self) -> str:
        """One event's data (chunked transfer: chunk sizes are lines without a colon, skipped)."""
        data: list[str] = []
        while True:
            line = (await self.reader.readline()).decode()
            if not line:
                raise ConnectionError("the stream ended")
            line = line.rstrip("\r\n")
            if line.startswith("data:"):
                data.append(line[5:].lstrip(" "))
            elif line == "" and data:
                return "\n".join(data)

    async def _next_ws(self) -> str:
        while True:
            first, second = await self.reader.readexactly(2)
            opcode, length = first & 0x0F, second & 0x7F
            if length == 126:
                length = struct.unpack("!H", await self.reader.readexactly(2))[0]
            elif length == 127:
                length = struct.unpack("!Q", await self.reader.readexactly(8))[0]
            payload = await self.reader.readexactly(length)
            if opcode == 0x8:
                raise ConnectionError(f"the server closed the WebSocket: {payload[2:].decode(errors='replace')}")
            if opcode == 0x9:  # ping: answer with a (masked, as every client frame) pong
                self._send_ws(0xA, payload)
            elif opcode == 0x1:
                return payload.decode()

    def _send_ws(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.writer.write(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, et: type[BaseException] | None, ev: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()
