"""A real HTTP server on 127.0.0.1 for tests that load URLs.

Example:
    with serve({"/cat.png": png_bytes, "/gone": Reply(status=404)}) as server:
        fetch(server.url("/cat.png"))
        assert server.hits["/cat.png"] == 1

A route is one of:
    bytes: answered 200 with that body;
    Reply: a full answer (status, body, headers, delay, whether to send Content-Length, and how the body is
        sent: all at once, dripped piece by piece, or repeated without end);
    a list of those: answered in turn, one per request, the last repeating (e.g. [Reply(500), png] fails once);
    a callable taking the request's hit number (1 for the first) and returning one of the above.
Unknown paths answer 404. Routes may be added or changed while the server runs (`server.routes[path] = ...`).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterator, Union
from urllib.parse import urlsplit


@dataclass
class Reply:
    """One HTTP answer.

    Attributes:
        status: the status code.
        body: the body bytes.
        headers: extra headers, e.g. {"Location": "/elsewhere"}.
        delay: seconds to wait before answering, to make a client time out.
        content_length: whether to send Content-Length; without it the body ends when the connection closes.
        drip: seconds to wait between pieces of `piece_bytes` bytes, like a server on a very slow link.
        piece_bytes: the size of each dripped or repeated piece.
        endless: send the body again and again until the client hangs up (no Content-Length).
    """

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    content_length: bool = True
    drip: float = 0.0
    piece_bytes: int = 1
    endless: bool = False


Route = Union[bytes, Reply, list, Callable[[int], Union[bytes, Reply]]]


def redirect(location: str, status: int = 302) -> Reply:
    """A redirect to `location` (a path on this server or a full URL)."""
    return Reply(status=status, headers={"Location": location})


class TestServer:
    """The running server: `url(path)` to address it, `hits[path]` to count requests per path."""

    __test__ = False  # not a test class, whatever pytest thinks of its name

    def __init__(self, routes: dict[str, Route]):
        self.routes: dict[str, Route] = dict(routes)
        self.hits: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._httpd.daemon_threads = True
        self._httpd.handle_error = lambda request, address: None  # clients that gave up are expected here
        # A short poll interval keeps stop() quick; every test starts and stops its own server.
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.02,), daemon=True)

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    def url(self, path: str) -> str:
        """The full URL of `path` on this server, e.g. url("/cat.png") -> "http://127.0.0.1:PORT/cat.png"."""
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> "TestServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _reply_for(self, path: str) -> Reply:
        with self._lock:
            self.hits[path] += 1
            hit = self.hits[path]
        route = self.routes.get(path)
        if route is None:
            return Reply(status=404, body=b"not found")
        if isinstance(route, list):
            route = route[min(hit, len(route)) - 1]
        if callable(route):
            route = route(hit)
        return route if isinstance(route, Reply) else Reply(body=bytes(route))


@contextmanager
def serve(routes: dict[str, Route] | None = None) -> Iterator[TestServer]:
    """Runs a TestServer for the duration of the block."""
    server = TestServer(routes or {}).start()
    try:
        yield server
    finally:
        server.stop()


def _handler_for(server: TestServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            reply = server._reply_for(urlsplit(self.path).path)
            if reply.delay:
                time.sleep(reply.delay)
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            if reply.content_length and not reply.endless:
                self.send_header("Content-Length", str(len(reply.body)))
            self.send_header("Connection", "close")
            self.end_headers()
            try:
                _send_body(self.wfile, reply)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up, as a client of a misbehaving server should

        def log_message(self, format: str, *args) -> None:
            pass

    return Handler


def _send_body(stream, reply: Reply) -> None:
    if not reply.body or not (reply.drip or reply.endless):
        stream.write(reply.body)
        return
    while True:
        for start in range(0, len(reply.body), reply.piece_bytes):
            stream.write(reply.body[start:start + reply.piece_bytes])
            stream.flush()
            time.sleep(reply.drip)
        if not reply.endless:
            return
