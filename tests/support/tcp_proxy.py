"""A TCP proxy on 127.0.0.1 that the fault tests put between the service and its real database.

Three modes, switched while traffic flows:

- ``pass``: bytes are forwarded both ways;
- ``down``: every open connection is closed and new ones are closed as soon as they arrive (the database
  server is down, or restarting);
- ``partition``: connections stay open but nothing moves either way, and new connections are accepted but
  never reach the server (a network partition: the kernel keeps the bytes, nobody answers). When the mode
  goes back to ``pass`` the held bytes flow again, as after a real partition heals.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

Mode = Literal["pass", "down", "partition"]


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.mode: Mode = "pass"
        self.accepted = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket | None]] = []
        self._stopped = threading.Event()

    def set(self, mode: Mode) -> None:
        self.mode = mode
        if mode == "down":
            with self._lock:
                pairs, self._pairs = self._pairs, []
            for client, server in pairs:
                _close(client)
                if server is not None:
                    _close(server)

    @contextmanager
    def running(self) -> Iterator[TcpProxy]:
        thread = threading.Thread(target=self._accept, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stopped.set()
            _close(self._listener)
            self.set("down")
            thread.join(timeout=5)

    def _accept(self) -> None:
        self._listener.settimeout(0.1)
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            if self.mode == "down":
                _close(client)
                continue
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        while self.mode == "partition" and not self._stopped.is_set():
            time.sleep(0.05)  # accepted, but the server is out of reach
        if self.mode == "down" or self._stopped.is_set():
            _close(client)
            return
        try:
            server = socket.create_connection(self.target, timeout=5)
        except OSError:
            _close(client)
            return
        with self._lock:
            self._pairs.append((client, server))
        self._pump(client, server)

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        peer = {client: server, server: client}
        with selectors.DefaultSelector() as selector:
            for sock in peer:
                sock.setblocking(False)
                selector.register(sock, selectors.EVENT_READ)
            while not self._stopped.is_set():
                if self.mode == "partition":
                    time.sleep(0.05)
                    continue
                try:
                    events = selector.select(timeout=0.1)
                    for key, _ in events:
                        source: socket.socket = key.fileobj  # type: ignore[assignment]
                        data = source.recv(65536)
                        if not data:
                            raise ConnectionError("closed")
                        peer[source].setblocking(True)
                        peer[source].sendall(data)
                        peer[source].setblocking(False)
                except (OSError, ValueError):  # closed by a peer, or by set("down")
                    break
        _close(client)
        _close(server)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
