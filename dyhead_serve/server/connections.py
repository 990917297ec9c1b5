"""Connection limits uvicorn lacks: a deadline to receive each request, a cap on open connections,
and, on shutdown, an immediate answer to requests still being received.

uvicorn reads a request for as long as its client keeps sending: a client that trickles its
headers or its body one byte every few seconds (or connects and sends nothing) holds its connection
forever, and on SIGTERM holds the drain until its deadline. :class:`LimitedH11Protocol` (uvicorn's
h11 protocol, which ``dyhead-serve serve`` always runs) gives each request ``read_timeout_s`` from
its first byte (from the opening of the connection for the first request), and its line and
headers ``header_timeout_s`` (10 s by default), so that connections that send nothing cannot hold
the slots of ``max_connections`` for long:

- headers not complete in time: 408 and the connection is closed; the app never saw a request;
- body not complete: the app, which reads it through :class:`ReadDeadlineMiddleware` under the
  same deadline, answers 408 (counted in the request metrics) and the connection is closed;
- body still arriving after the app answered (an early 401 or 413, say): the answer says
  ``Connection: close`` and the connection is closed without reading the rest;
- a request whose bytes are mostly line breaks (chunks of a few bytes: the parser pays about
  10 us per chunk, so a client streaming one-byte chunks kept the event loop busy for seconds per
  megabyte): 400 and the connection is closed, checked before the parser sees the bytes, so no
  request costs the loop more than about :data:`MAX_LINE_BREAKS` parser steps;
- a request with both Content-Length and Transfer-Encoding (RFC 9112 6.1): answered, then the
  connection is closed.

Connections beyond ``max_connections`` get 503 and are closed at once. On shutdown, a request
whose body is still arriving is answered 503 at once instead of holding the drain.

uvicorn is given the protocol by name and the protocol reads its limits from the app's lifespan
state (:data:`CONNECTION_LIMITS`): with ``--workers``, each worker process then imports it only
once it runs (unpickling a class bound to its arguments would import the whole app before the
worker answers uvicorn's health check).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import h11
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from dyhead_serve.server.errors import ApiError
from dyhead_serve.server.settings import ServerSettings

__all__ = [
    "CONNECTION_EVENTS",
    "CONNECTION_LIMITS",
    "READ_WINDOW",
    "ConnectionLimits",
    "LimitedH11Protocol",
    "ReadDeadlineMiddleware",
    "ReadWindow",
    "uvicorn_options",
]

logger = logging.getLogger(__name__)

# scope["extensions"] key under which the protocol hands a request's ReadWindow to the app.
READ_WINDOW = "dyhead.read_window"
# Lifespan state key of a callable(reason) counting connections the protocol closed itself.
CONNECTION_EVENTS = "dyhead.connection_events"
# Lifespan state key of the ConnectionLimits the protocol applies.
CONNECTION_LIMITS = "dyhead.connection_limits"
# When a request's deadline passes while the app is reading its body, the app answers 408 itself;
# the protocol closes the connection only if it has not within this time.
_APP_GRACE_S = 1.0
_REASONS = {400: "Bad Request", 408: "Request Timeout", 503: "Service Unavailable"}
# A request may bring this many CRLFs (header lines, chunk-size lines and chunk ends) at any
# density; beyond it, at least MIN_BYTES_PER_LINE_BREAK bytes per CRLF on average (chunks of about
# 60 bytes or more). One-byte chunks are 3 bytes per CRLF; a photo sent in 4 KiB chunks, 2 KiB.
MAX_LINE_BREAKS = 2048
MIN_BYTES_PER_LINE_BREAK = 32
_CLOSE = (b"connection", b"close")


@dataclass(frozen=True)
class ConnectionLimits:
    """read_timeout_s: time to receive a whole request (line, headers, body); header_timeout_s:
    time to receive its line and headers (at most read_timeout_s: an idle or silent connection
    cannot hold a slot of max_connections for long); max_connections: open connections of this
    process (more are answered 503 and closed)."""

    read_timeout_s: float
    max_connections: int
    header_timeout_s: float = 10.0


@dataclass
class ReadWindow:
    """When the request being received must be complete (event loop time), and whether the server
    is shutting down."""

    deadline: float
    closing: asyncio.Event = field(default_factory=asyncio.Event)


class LimitedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a receive deadline per request and a connection cap, both from
    the :class:`ConnectionLimits` in the app's lifespan state (arguments as uvicorn's)."""

    def __init__(
        self,
        config: Any,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        limits = app_state.get(CONNECTION_LIMITS)
        if not isinstance(limits, ConnectionLimits):
            raise RuntimeError("LimitedH11Protocol serves apps of dyhead_serve.server.create_app only")
        self.read_timeout_s = limits.read_timeout_s
        self.header_timeout_s = min(limits.header_timeout_s, limits.read_timeout_s)
        self.max_connections = limits.max_connections
        self._window: ReadWindow | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._grace_given = False
        self._bytes_in_window = 0
        self._line_breaks_in_window = 0

    # -- uvicorn's protocol, extended -------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            self._count("too_many_connections")
            self._answer_and_close(
                503, "too_many_connections",
                f"the server has {self.max_connections} connections open (max_connections); retry later",
                {"Retry-After": "1"},
            )  # fmt: skip
            return
        self._open_window()

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return  # refused or answered: what is still in flight is not parsed
        if self._window is None and self.conn.their_state is h11.IDLE:
            self._open_window()  # the first bytes of the next request on a kept-alive connection
        if self._window is not None and not self._within_parse_budget(data):
            return
        super().data_received(data)
        self._close_window_if_received()

    def _within_parse_budget(self, data: bytes) -> bool:
        """Count the request's bytes and CRLFs before the parser sees them (``bytes.count`` costs
        nanoseconds per byte, the parser microseconds per chunk); refuse a request made of tiny
        pieces with 400 and close."""
        self._bytes_in_window += len(data)
        self._line_breaks_in_window += data.count(b"\r\n")
        if (
            self._line_breaks_in_window <= MAX_LINE_BREAKS
            or self._bytes_in_window >= MIN_BYTES_PER_LINE_BREAK * self._line_breaks_in_window
        ):
            return True
        self._count("tiny_chunks")
        self._cancel_timer()
        self._window = None
        if self.cycle is not None and self.cycle.response_started:
            self.transport.close()
        else:
            self._answer_and_close(
                400, "chunks_too_small",
                f"the request arrived in pieces averaging under {MIN_BYTES_PER_LINE_BREAK} bytes per line "
                f"break (over {MAX_LINE_BREAKS} of them); send the body in larger chunks",
            )  # fmt: skip
        return False

    def handle_events(self) -> None:
        previous = self.cycle
        super().handle_events()
        if self.cycle is not previous and self.cycle is not None:  # a request's headers arrived
            if self._window is None:  # a pipelined request, read from the buffer
                self._open_window()
            scope: dict[str, Any] = self.cycle.scope  # type: ignore[assignment]
            scope.setdefault("extensions", {})[READ_WINDOW] = self._window
            names = {name for name, _ in scope["headers"]}
            if (
                b"content-length" in names
                and b"transfer-encoding" in names
                and _CLOSE not in scope["headers"]
            ):
                # RFC 9112 6.1: such a request may be a smuggling attempt; answer it as if it had
                # said Connection: close (uvicorn then sends the header and closes after answering).
                scope["headers"].append(_CLOSE)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.conn.their_state is h11.SEND_BODY and not self.transport.is_closing():
            # answered before the body was read (ReadDeadlineMiddleware said Connection: close)
            self._count("unread_body")
            self._cancel_timer()
            self._window = None
            self.transport.close()
            return
        self._close_window_if_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        super().connection_lost(exc)

    def shutdown(self) -> None:
        if self._window is not None:
            self._window.closing.set()  # a body still arriving is answered 503 by the app at once
        super().shutdown()

    # -- the receive deadline ---------------------------------------------------------------

    def _open_window(self) -> None:
        self._cancel_timer()
        self._window = ReadWindow(self.loop.time() + self.read_timeout_s)
        self._grace_given = False
        self._bytes_in_window = 0
        self._line_breaks_in_window = 0
        # First the headers' deadline; once they are in, the rest of the request's.
        self._timer = self.loop.call_later(self.header_timeout_s, self._on_deadline)

    def _close_window_if_received(self) -> None:
        if self._window is not None and self.conn.their_state not in (h11.IDLE, h11.SEND_BODY):
            self._cancel_timer()
            self._window = None

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_deadline(self) -> None:
        self._timer = None
        if self._window is None or self.transport.is_closing():
            return
        cycle = self.cycle
        if self.conn.their_state is h11.IDLE and (cycle is None or cycle.response_complete):
            self._count("headers_timeout")
            self._answer_and_close(
                408, "request_timeout",
                f"the request line and headers did not arrive within {self.header_timeout_s:g} s "
                "(header_timeout_s)",
            )  # fmt: skip
            return
        remaining = self._window.deadline - self.loop.time()
        if remaining > 0:  # the headers are in: the body has until the request's deadline
            self._timer = self.loop.call_later(remaining, self._on_deadline)
        elif cycle is not None and not cycle.response_started and not self._grace_given:
            self._grace_given = True  # the app reads the body under the same deadline: let it answer
            self._timer = self.loop.call_later(_APP_GRACE_S, self._on_deadline)
        else:
            self._count("body_timeout")
            self.transport.close()

    def _answer_and_close(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        """A JSON error written straight to the socket (no request reached the app), then close."""
        body = json.dumps({"error": {"code": code, "message": message}}).encode()
        lines = [
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}",
            "content-type: application/json",
            f"content-length: {len(body)}",
            "connection: close",
            *(f"{name}: {value}" for name, value in (headers or {}).items()),
        ]
        self.transport.write("\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + body)
        self.transport.close()

    def _count(self, reason: str) -> None:
        logger.info("closing connection from %s: %s", self.client, reason.replace("_", " "))
        count = self.app_state.get(CONNECTION_EVENTS)
        if callable(count):
            count(reason)


class ReadDeadlineMiddleware:
    """Reads the request body under its deadline: past it, 408 (``request_timeout``); when the
    server shuts down meanwhile, 503 (``shutting_down``); both close the connection. An answer
    sent before the request's body was read whole (an early 401 or 413) says ``Connection: close``,
    so the rest of the body is never read.

    Under :class:`LimitedH11Protocol` the deadline is the request's (counted from its first
    byte); under another server, ``read_timeout_s`` from the start of the app's call.
    """

    def __init__(self, app: ASGIApp, read_timeout_s: float) -> None:
        self.app = app
        self.read_timeout_s = read_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        window = scope.get("extensions", {}).get(READ_WINDOW)
        if not isinstance(window, ReadWindow):
            window = ReadWindow(loop.time() + self.read_timeout_s)
        received_all = False

        async def timed_receive() -> Message:
            nonlocal received_all
            if received_all:  # later calls wait for a disconnect: no deadline
                return await receive()
            message = await _receive_within(receive, window, loop)
            if message is None:
                if window.closing.is_set():
                    raise ApiError(
                        503, "shutting_down", "the server is shutting down; retry the request",
                        {"Retry-After": "1", "Connection": "close"},
                    )  # fmt: skip
                raise ApiError(
                    408, "request_timeout",
                    f"the request body did not arrive within {self.read_timeout_s:g} s (read_timeout_s)",
                    {"Connection": "close"},
                )  # fmt: skip
            if message["type"] != "http.request" or not message.get("more_body", False):
                received_all = True
            return message

        headers = dict(scope.get("headers", []))
        has_body = b"transfer-encoding" in headers or headers.get(b"content-length", b"0") not in (b"0", b"")

        async def closing_send(message: Message) -> None:
            if message["type"] == "http.response.start" and has_body and not received_all:
                response_headers = list(message.get("headers", []))
                if not any(name.lower() == b"connection" for name, _ in response_headers):
                    message = {**message, "headers": [*response_headers, _CLOSE]}
            await send(message)

        await self.app(scope, timed_receive, closing_send)


async def _receive_within(
    receive: Receive, window: ReadWindow, loop: asyncio.AbstractEventLoop
) -> Message | None:
    """The next message, or None when the deadline passes or the server starts closing first."""
    if window.closing.is_set():
        return None
    receiving = asyncio.ensure_future(receive())
    closing = asyncio.ensure_future(window.closing.wait())
    try:
        done, _ = await asyncio.wait(
            {receiving, closing},
            timeout=max(window.deadline - loop.time(), 0.0),
            return_when=asyncio.FIRST_COMPLETED,
        )
    finally:
        for task in (receiving, closing):
            if not task.done():
                task.cancel()
    return receiving.result() if receiving in done else None


def uvicorn_options(settings: ServerSettings) -> dict[str, Any]:
    """What ``uvicorn.Config`` needs to serve an app of these settings with its connection limits."""
    return {
        "host": settings.host,
        "port": settings.port,
        "http": f"{__name__}:{LimitedH11Protocol.__name__}",
        "log_config": None,  # keep the CLI's logging setup
        "timeout_graceful_shutdown": int(settings.request_timeout_s) + 5,
    }
