"""A breakable TCP proxy, run as its own process by the reliability tests (see faults.TcpProxy).

    python tcp_proxy.py LISTEN_PORT TARGET_PORT        (both on 127.0.0.1)

PgBouncer's server connections go through it to PostgreSQL, so a test can damage the link between the
two while clients keep using PgBouncer. Commands, one per line on stdin; each is answered by one line
"ok <command> ..." on stdout once it has taken effect:

    pass          forward everything at once (the default)
    delay MS      hold every chunk MS milliseconds before forwarding it (added latency, both ways)
    stall         forward nothing, keep every connection open: the peers see a silent link, as with
                  100% packet loss; held bytes are delivered after `pass` (as TCP retransmits would)
    cut           reset (RST) every proxied connection now
    refuse        reset new connections as soon as they arrive (link down); `pass` accepts again
    stats         "ok stats open=N total=M"
    quit          close everything and exit

Loopback only; exits when stdin closes, so it never outlives the test that started it.
"""
from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import sys

HOST = "127.0.0.1"
CHUNK = 65536


class Proxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.delay = 0.0
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.refusing = False
        self.links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self.total = 0

    @staticmethod
    def _reset(writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async def handle(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            self._reset(c_writer)
            return
        try:
            s_reader, s_writer = await asyncio.wait_for(asyncio.open_connection(HOST, self.target_port), 10)
        except (TimeoutError, OSError):
            self._reset(c_writer)
            return
        self.total += 1
        link = (c_writer, s_writer)
        self.links.add(link)
        try:
            await asyncio.gather(self.pump(c_reader, s_writer), self.pump(s_reader, c_writer))
        finally:
            self.links.discard(link)
            for w in link:
                w.transport.abort()

    async def pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await self.flowing.wait()
                data = await reader.read(CHUNK)
                if not data:
                    break
                if self.delay:
                    await asyncio.sleep(self.delay)
                await self.flowing.wait()
                writer.write(data)
                await writer.drain()
        except (OSError, ConnectionError):
            pass
        finally:
            with contextlib.suppress(OSError, RuntimeError):
                writer.write_eof()

    def command(self, line: str) -> str:
        word, _, arg = line.strip().partition(" ")
        if word == "pass":
            self.delay, self.refusing = 0.0, False
            self.flowing.set()
        elif word == "delay":
            self.delay = float(arg) / 1000.0
        elif word == "stall":
            self.flowing.clear()
        elif word == "cut":
            for c_writer, s_writer in list(self.links):
                self._reset(c_writer)
                self._reset(s_writer)
            self.links.clear()
        elif word == "refuse":
            self.refusing = True
        elif word == "stats":
            return f"ok stats open={len(self.links)} total={self.total}"
        elif word != "quit":
            return f"error unknown command {word!r}"
        return f"ok {line.strip()}"


async def main(listen_port: int, target_port: int) -> None:
    proxy = Proxy(target_port)
    server = await asyncio.start_server(proxy.handle, HOST, listen_port, backlog=1024, reuse_address=True)
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    print(f"ok listening {listen_port} -> {target_port}", flush=True)
    async with server:
        while True:
            line = (await stdin.readline()).decode()
            if not line or line.strip() == "quit":
                break
            print(proxy.command(line), flush=True)
        server.close()
        proxy.command("cut")
    print("ok quit", flush=True)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
