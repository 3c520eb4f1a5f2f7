"""Reserving the shared port: the supervisor holds it so workers (and only they) can join it."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator


@contextlib.contextmanager
def reserved_port(host: str, port: int) -> Iterator[int]:
    """Hold `host:port` (0: a free one) for SO_REUSEPORT listeners; yields the port.

    First a plain bind, which fails on a busy port as a lone server would (a SO_REUSEPORT bind would
    quietly share a port another group of workers listens on). Then, for as long as the server runs, a
    SO_REUSEPORT socket bound but not listening: it takes no connections, and keeps the port for the
    workers, replacements included.
    """
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    with socket.socket(family, kind, proto) as probe:
        try:
            probe.bind(address)
        except OSError as exc:
            raise OSError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
        chosen = int(probe.getsockname()[1])
    with socket.socket(family, kind, proto) as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind((address[0], chosen, *address[2:]))
        yield chosen
