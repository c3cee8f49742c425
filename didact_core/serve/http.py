"""``/metrics`` over HTTP, built so that scrapers never slow scoring down (issue 15, fault 5).

The old server (wsgiref with a thread per connection, listen backlog 5) rendered the
exposition for every request: 20 concurrent scrapers of a 1,000-node exposition
overflowed the listen queue, took the GIL from the scoring thread (an interval of 4 s took
60 s), 300 idle connections held 300 threads, and a bare ``GET /metrics`` (no HTTP
version) waited for headers that never came.  Here:

* the body is bytes rendered once per scoring interval (and its gzip), see
  :meth:`didact_core.serve.metrics.ServingMetrics.refresh`; a request renders nothing;
* one selector thread accepts connections (a real listen backlog) and reads request
  heads without blocking: an idle or half-open connection costs a file descriptor, not a
  thread, and is closed when no complete head arrived within ``read_timeout_s``;
* a fixed pool of ``workers`` threads answers complete heads — parsing a few header lines
  under the GIL, then ``sendall`` of the cached bytes, which releases it (bounded by
  ``send_timeout_s``, so a client that does not read cannot hold a worker);
* HTTP/1.1 keep-alive is honoured (the connection goes back to the selector); a bare
  HTTP/0.9 request line is answered at once with the body, then closed;
* at most ``max_connections`` are open; beyond that a new connection is closed at once.
"""

from __future__ import annotations

import logging
import queue
import selectors
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from prometheus_client import CONTENT_TYPE_LATEST

log = logging.getLogger(__name__)

#: a request head larger than this is refused (``/metrics`` needs a few hundred bytes)
MAX_HEAD_BYTES = 16 * 1024
NOT_FOUND = b"didact serving: see /metrics\n"
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           431: "Request Header Fields Too Large", 505: "HTTP Version Not Supported"}  # fmt: skip


@dataclass(eq=False)  # hashed by identity: kept in sets
class _Conn:
    sock: socket.socket
    #: bytes received and not answered yet
    buf: bytearray = field(default_factory=bytearray)
    #: monotonic time by which a complete request head must have arrived
    deadline: float = 0.0


def head_end(buf: bytes) -> int | None:
    """Where the first complete request head in ``buf`` ends (None: not complete yet).
    A request line without an HTTP version (HTTP/0.9) is complete at its newline."""
    line_end = buf.find(b"\n")
    if line_end < 0:
        return None
    if len(buf[:line_end].split()) not in (0, 3):  # HTTP/0.9, or garbage: answered at once
        return line_end + 1
    for sep in (b"\r\n\r\n", b"\n\n"):
        i = buf.find(sep)
        if i >= 0:
            return i + len(sep)
    return None


def respond(head: bytes, body: Callable[[], tuple[bytes, bytes]]) -> tuple[bytes, bool]:
    """(the response bytes, keep the connection open) for one request head; ``body()`` gives
    the cached (text, gzip) exposition."""
    lines = head.decode("latin-1").replace("\r\n", "\n").split("\n")
    words = lines[0].split()
    if len(words) == 2:  # HTTP/0.9: no headers in either direction, the body only
        return (body()[0] if words[0] == "GET" and _path(words[1]) in ("/metrics", "/") else b""), False
    if len(words) != 3:
        return _response(400, b"bad request line\n", keep=False), False
    method, target, version = words
    if not version.startswith("HTTP/1."):
        return _response(505, b"HTTP/1.x only\n", keep=False), False
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    conn = headers.get("connection", "").lower()
    keep = conn != "close" if version == "HTTP/1.1" else conn == "keep-alive"
    if headers.get("content-length", "0") != "0" or "transfer-encoding" in headers:
        keep = False  # a request body is never read: do not take it for the next request
    if method not in ("GET", "HEAD"):
        return _response(405, b"GET or HEAD\n", keep=False, extra=[("Allow", "GET, HEAD")]), False
    if _path(target) not in ("/metrics", "/"):
        return _response(404, NOT_FOUND, keep, head_only=method == "HEAD"), keep
    text, gz = body()
    head_only = method == "HEAD"
    if "gzip" in headers.get("accept-encoding", ""):
        return _response(200, gz, keep, CONTENT_TYPE_LATEST, [("Content-Encoding", "gzip")], head_only), keep
    return _response(200, text, keep, CONTENT_TYPE_LATEST, head_only=head_only), keep


def _path(target: str) -> str:
    return target.split("?", 1)[0]


def _response(
    status: int,
    payload: bytes,
    keep: bool,
    ctype: str = "text/plain; charset=utf-8",
    extra: list | None = None,
    head_only: bool = False,
) -> bytes:
    lines = [
        f"HTTP/1.1 {status} {REASONS[status]}",
        f"Content-Type: {ctype}",
        f"Content-Length: {len(payload)}",
        *(f"{k}: {v}" for k, v in extra or []),
        f"Connection: {'keep-alive' if keep else 'close'}",
    ]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + payload


class MetricsServer:
    """Serves ``body()`` — the cached (text, gzip) exposition — on ``/metrics`` (see the module doc).

    ``start()`` binds (port 0: any free one, see :attr:`port`) and starts the threads;
    ``stop()`` closes every connection and joins them.
    """

    def __init__(
        self,
        host: str,
        port: int,
        body: Callable[[], tuple[bytes, bytes]],
        *,
        workers: int = 8,
        backlog: int = 128,
        read_timeout_s: float = 5.0,
        send_timeout_s: float = 30.0,
        max_connections: int = 512,
    ):
        self.host, self.body = host, body
        self.read_timeout_s, self.send_timeout_s = read_timeout_s, send_timeout_s
        self.max_connections = max_connections
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # raises OSError when the address cannot be bound (the caller names the fix)
        self._listener = socket.create_server((host, port), family=family, backlog=backlog)
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._workers = workers
        self._pool: ThreadPoolExecutor | None = None
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._back: queue.SimpleQueue[_Conn] = queue.SimpleQueue()  # kept-alive connections from workers
        self._conns: set[_Conn] = set()  # all open connections (under _lock)
        self._waiting: set[_Conn] = set()  # those in the selector, waiting for a head (selector thread only)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # -- life --
    def start(self) -> None:
        self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="didact-metrics-worker")
        self._sel.register(self._listener, selectors.EVENT_READ, "listen")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._thread = threading.Thread(target=self._loop, name="didact-metrics-http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            conns = list(self._conns)
        for c in conns:  # shutdown wakes a worker blocked in sendall on it
            self._close(c, shutdown=True)
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        while not self._back.empty():
            self._close(self._back.get_nowait())
        self._sel.close()
        for s in (self._listener, self._wake_r, self._wake_w):
            s.close()

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._conns)

    # -- the selector thread --
    def _loop(self) -> None:
        while not self._stopping.is_set():
            for key, _ in self._sel.select(timeout=0.25):
                if key.data == "listen":
                    self._accept()
                elif key.data == "wake":
                    self._drain_wake()
                else:
                    self._read(key.data)
            self._take_back()
            self._drop_expired(time.monotonic())

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # e.g. out of file descriptors: keep serving the open ones
                log.warning("metrics http: accept failed: %s", e)
                return
            if self.open_connections >= self.max_connections:
                sock.close()
                continue
            sock.setblocking(False)
            c = _Conn(sock, deadline=time.monotonic() + self.read_timeout_s)
            with self._lock:
                self._conns.add(c)
            self._sel.register(sock, selectors.EVENT_READ, c)
            self._waiting.add(c)

    def _read(self, c: _Conn) -> None:
        try:
            data = c.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the client closed (or reset) the connection
            self._unregister(c)
            self._close(c)
            return
        c.buf += data
        self._dispatch_if_complete(c, registered=True)

    def _dispatch_if_complete(self, c: _Conn, registered: bool) -> None:
        end = head_end(c.buf)
        if end is None and len(c.buf) <= MAX_HEAD_BYTES:
            if not registered:
                self._sel.register(c.sock, selectors.EVENT_READ, c)
                self._waiting.add(c)
            return
        if registered:
            self._unregister(c)
        self._pool.submit(self._answer, c, end)

    def _unregister(self, c: _Conn) -> None:
        self._sel.unregister(c.sock)
        self._waiting.discard(c)

    def _take_back(self) -> None:
        while not self._back.empty():
            c = self._back.get_nowait()
            if self._stopping.is_set():
                self._close(c)
            else:
                self._dispatch_if_complete(c, registered=False)  # a pipelined request may be waiting

    def _drop_expired(self, now: float) -> None:
        """Close the connections whose head did not arrive in time (idle, half-open, slow)."""
        for c in [c for c in self._waiting if c.deadline < now]:
            self._unregister(c)
            self._close(c)

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass  # the pipe is full (a wake-up is pending anyway) or closed (stopping)

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError, OSError):
            pass

    # -- the workers --
    def _answer(self, c: _Conn, end: int | None) -> None:
        if end is None:  # the head outgrew MAX_HEAD_BYTES
            reply, keep = _response(431, b"request head too large\n", keep=False), False
        else:
            head, rest = bytes(c.buf[:end]), c.buf[end:]
            reply, keep = respond(head, self.body)
            c.buf = bytearray(rest)
        try:
            c.sock.settimeout(self.send_timeout_s)  # the whole sendall (Python >= 3.5), not each send
            if reply:
                c.sock.sendall(reply)
        except OSError:
            keep = False
        if not keep or self._stopping.is_set():
            self._close(c)
            return
        c.sock.setblocking(False)
        c.deadline = time.monotonic() + self.read_timeout_s
        self._back.put(c)
        self._wake()

    def _close(self, c: _Conn, shutdown: bool = False) -> None:
        with self._lock:
            self._conns.discard(c)
        try:
            if shutdown:
                c.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # not connected any more
        c.sock.close()
