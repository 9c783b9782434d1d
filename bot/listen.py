"""The listening socket: at most MAX_CONNECTIONS accepted connections open; past it, the oldest is shut."""

from __future__ import annotations

import contextlib
import logging
import socket
import weakref
from collections import deque

log = logging.getLogger(__name__)


class CappedListener(socket.socket):
    """A listening socket for aiohttp (run_app's `sock`) that keeps at most `cap` of the connections it
    accepted open. Past the cap it shuts the oldest: half-sent requests held open by a slow or hostile client
    are the oldest, while a webhook delivery is the newest, so acks keep flowing and descriptors never run out.
    The header timeout closes the rest."""

    def __init__(self, family: int, cap: int) -> None:
        super().__init__(family, socket.SOCK_STREAM)
        self.cap = cap
        self._accepted: deque[weakref.ref[socket.socket]] = deque()
        self._shut = 0

    def accept(self) -> tuple[socket.socket, object]:
        conn, address = super().accept()
        self._accepted.append(weakref.ref(conn))
        if len(self._accepted) > self.cap:
            self._enforce()
        return conn, address

    def _enforce(self) -> None:
        live = deque(ref for ref in self._accepted if _is_open(ref()))
        while len(live) > self.cap:
            oldest = live.popleft()()
            if oldest is not None:
                with contextlib.suppress(OSError):  # the transport sees the end and aiohttp closes it
                    oldest.shutdown(socket.SHUT_RDWR)
                self._shut += 1
                if self._shut in (1, 10, 100) or self._shut % 1000 == 0:
                    log.warning(
                        "more than %d connections open (MAX_CONNECTIONS): closed the oldest, %d so far",
                        self.cap,
                        self._shut,
                    )
        self._accepted = live


def _is_open(conn: socket.socket | None) -> bool:
    return conn is not None and conn.fileno() != -1


def listen(host: str, port: int, cap: int) -> CappedListener:
    family, _, _, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = CappedListener(family, cap)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    return sock
