"""A small asyncio + h11 HTTP/1.1 server: connection I/O, the h11 loop, routing."""
