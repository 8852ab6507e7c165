"""Connection I/O: reads against absolute deadlines, writes with a timeout, lingering close.

Knows bytes and time, nothing about HTTP. Deadlines are ``loop.time()`` values so a peer
that trickles one byte at a time cannot push them back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl

log = logging.getLogger("gpufleet.http")

# Large reads keep Python-level work per request small (a 400 KB body is a handful of reads).
READ_CHUNK_BYTES = 256 * 1024


class PeerGone(Exception):
    """The peer reset the connection or stopped reading past the write timeout."""


class StreamConnection:
    """One accepted client connection over asyncio streams (TCP or TLS)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 *, write_timeout_s: float) -> None:
        self._reader = reader
        self._writer = writer
        self._transport = writer.transport
        self._write_timeout_s = write_timeout_s
        self._loop = asyncio.get_running_loop()
        peer = writer.get_extra_info("peername")
        self.peer: tuple[str, int] | None = (peer[0], peer[1]) if peer else None
        self.is_tls = writer.get_extra_info("sslcontext") is not None

    def now(self) -> float:
        return self._loop.time()

    async def read(self, deadline: float) -> bytes:
        """Up to READ_CHUNK_BYTES, b"" at EOF; TimeoutError once ``deadline`` passes."""
        try:
            async with asyncio.timeout_at(deadline):
                return await self._reader.read(READ_CHUNK_BYTES)
        except (ConnectionError, ssl.SSLError):
            return b""

    async def write(self, data: bytes) -> None:
        """Send ``data``; wait for the buffer to drain only when the kernel did not take it all."""
        if self._transport.is_closing():
            raise PeerGone("connection closed")
        self._writer.write(data)
        if self._transport.get_write_buffer_size():
            try:
                async with asyncio.timeout(self._write_timeout_s):
                    await self._writer.drain()
            except TimeoutError:
                self.abort()
                raise PeerGone("client did not read its response in time") from None
            except (ConnectionError, ssl.SSLError) as exc:
                raise PeerGone(str(exc)) from None

    def close_soon(self) -> None:
        """Close the transport; a pending read then sees EOF (used to drop idle connections)."""
        self._transport.close()

    def abort(self) -> None:
        self._transport.abort()

    async def close(self) -> None:
        """Flush what is buffered (within the write timeout) and close."""
        self._writer.close()
        try:
            async with asyncio.timeout(self._write_timeout_s):
                await self._writer.wait_closed()
        except TimeoutError:
            self.abort()
        except (ConnectionError, ssl.SSLError):
            pass

    async def linger_close(self, linger_s: float) -> None:
        """Close after an error response without the client losing it to a TCP reset.

        Closing with unread input makes the kernel send RST, which can discard the
        response the client has not read yet; so half-close, drain its input briefly,
        then close.
        """
        if self._transport.is_closing():
            return
        if linger_s > 0 and self._transport.can_write_eof():
            with contextlib.suppress(OSError, RuntimeError):
                self._writer.write_eof()
            deadline = self.now() + linger_s  # bounded by time only: discarding bytes is cheap
            with contextlib.suppress(TimeoutError):
                while await self.read(deadline):
                    pass
        await self.close()
